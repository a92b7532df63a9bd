"""Atomic checkpoints: everything needed to resume a run exactly.

Layout: `<output_dir>/checkpoints/step_000012/state.pt` plus a `COMPLETE` marker, and a
`latest` file naming the newest complete one. A checkpoint is written into a temporary
directory, flushed to disk, then renamed into place, and only then is `latest` replaced
(itself through a temporary file and `os.replace`). A process killed at any moment
therefore leaves the previous checkpoint intact and `latest` pointing at a complete one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from r2vpo_ascend.algos.errors import CheckpointError  # noqa: F401  (re-exported)

MARKER = "COMPLETE"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(root: str | Path, step: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    root = Path(root) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a process killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    tmp.mkdir()
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    (tmp / MARKER).write_text(str(step))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    pointer_tmp = root / f".latest-{os.getpid()}"
    pointer_tmp.write_text(final.name)
    os.replace(pointer_tmp, root / "latest")
    _fsync_dir(root)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step_*") if (p / MARKER).exists())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `output_dir`, or None."""
    root = Path(output_dir) / "checkpoints"
    pointer = root / "latest"
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if (candidate / MARKER).exists():
            return candidate
    done = sorted(p for p in root.glob("step_*") if (p / MARKER).exists())
    return done[-1] if done else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir():  # an output_dir was given
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no complete checkpoint under {path}/checkpoints")
        path = found
    if not (path / MARKER).exists():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    # Our own file, holding optimizer/RNG/buffer state next to tensors: not weights-only.
    return torch.load(path / "state.pt", map_location="cpu", weights_only=False)
