"""Atomic, verified checkpoints: everything needed to resume a run exactly.

Layout: `<output_dir>/checkpoints/step_000012/state.pt` plus a `COMPLETE` marker, and a
`latest` file naming the newest complete one. A checkpoint is written into a temporary
directory, flushed to disk, then renamed into place, and only then is `latest` replaced
(itself through a temporary file and `os.replace`). A process killed at any moment
therefore leaves the previous checkpoint intact and `latest` pointing at a complete one.

The `COMPLETE` marker is JSON: the step, a write sequence number (pruning and the fall-back
order follow it, not the directory name, so a run restarted in the same directory never
prunes its own new checkpoints in favour of an older run's higher step numbers), the size
of `state.pt` and, when the file is at most `CHECKSUM_MAX_BYTES`, its SHA-256 (hashing an
84 GB 7B state would take minutes; above the limit the size check and the load itself
verify it). Loading never runs code: `torch.load(weights_only=True)`; `state.pt` holds only
tensors and plain containers (numpy arrays, e.g. numpy's RNG state, are stored as tagged
lists).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from r2vpo_ascend.algos.errors import CheckpointError  # noqa: F401  (re-exported)
from r2vpo_ascend.trainer.run_dir import sweep_stale_temps

MARKER = "COMPLETE"
CHECKSUM_MAX_BYTES = 1 << 30  # 1 GiB: hashed in about a second; bigger files get size + load checks
_NDARRAY = "__ndarray__"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- plain containers only (weights_only=True loads them) ---------------------------------
def _encode(obj: Any) -> Any:
    """Numpy arrays and scalars → plain values, so the file needs no unpickling of classes."""
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        encoded = [_encode(v) for v in obj]
        return encoded if isinstance(obj, list) else tuple(encoded)
    if type(obj).__module__ == "numpy":
        import numpy as np
        if isinstance(obj, np.ndarray):
            return {_NDARRAY: obj.tolist(), "dtype": obj.dtype.str}
        if isinstance(obj, np.generic):
            return obj.item()
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_NDARRAY, "dtype"}:
            import numpy as np
            return np.array(obj[_NDARRAY], dtype=np.dtype(obj["dtype"]))
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_decode(v) for v in obj)
    return obj


# ---- writing -------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the chain (torch's zip writer re-raises it as `unexpected pos ...`)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _Writer:
    """A file wrapper that remembers the OS error a write hit: torch's zip writer reports a
    failed write as a position mismatch, losing the reason."""

    def __init__(self, raw):
        self.raw, self.error = raw, None

    def write(self, data) -> int:
        try:
            return self.raw.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.raw.flush()


def _markers(root: Path) -> list[tuple[int, Path]]:
    """(write sequence, path) of every complete checkpoint, oldest first."""
    found = []
    for path in root.glob("step_*"):
        marker = _read_marker(path)
        if marker is not None:
            found.append((marker.get("seq", -1), marker.get("mtime", 0.0), path))
    return [(seq, path) for seq, _, path in sorted(found, key=lambda t: (t[0], t[1], t[2].name))]


def _read_marker(path: Path) -> dict | None:
    marker = path / MARKER
    try:
        text = marker.read_text()
        mtime = marker.stat().st_mtime
    except OSError:
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict):  # an older marker: just the step number
        info = {}
    return {**info, "mtime": mtime}


def save_checkpoint(root: str | Path, step: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    root = Path(root) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(root)  # left by a process killed mid-save (only those of dead processes)
    existing = _markers(root)
    seq = (max(s for s, _ in existing) + 1) if existing else 0
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    writer = None
    try:
        tmp.mkdir()
        with open(tmp / "state.pt", "wb") as raw:
            writer = _Writer(raw)
            torch.save(_encode(state), writer)
            raw.flush()
            os.fsync(raw.fileno())
        size = (tmp / "state.pt").stat().st_size
        marker = {"step": step, "seq": seq, "size": size}
        if size <= CHECKSUM_MAX_BYTES:
            marker["sha256"] = _sha256(tmp / "state.pt")
        (tmp / MARKER).write_text(json.dumps(marker))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # no partial directory stays behind
        if _is_disk_full(e) or (writer is not None and writer.error is not None and _is_disk_full(writer.error)):
            kept = f"; the previous checkpoint {existing[-1][1]} is kept" if existing else ""
            raise CheckpointError(f"no space left on device writing the step-{step} checkpoint to {root}{kept}; "
                                  "free space (or lower keep_checkpoints) and resume") from None
        raise
    _fsync_dir(root)
    pointer_tmp = root / f".latest-{os.getpid()}"
    pointer_tmp.write_text(final.name)
    os.replace(pointer_tmp, root / "latest")
    _fsync_dir(root)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    """Keep the `keep` most recently WRITTEN complete checkpoints (write order, not names)."""
    done = [path for _, path in _markers(root)]
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


# ---- reading -------------------------------------------------------------------------------
def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless `path` is complete and its state.pt has the recorded size
    (and SHA-256, when recorded)."""
    marker = _read_marker(path)
    if marker is None:
        raise CheckpointError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    state = path / "state.pt"
    try:
        size = state.stat().st_size
    except OSError:
        raise CheckpointError(f"{path}: state.pt is missing") from None
    if "size" in marker and size != marker["size"]:
        raise CheckpointError(f"{path}: state.pt has {size} bytes, {marker['size']} were written (truncated?)")
    if "sha256" in marker and _sha256(state) != marker["sha256"]:
        raise CheckpointError(f"{path}: state.pt does not match its recorded SHA-256 (corrupted)")


def _read_state(path: Path) -> dict[str, Any]:
    verify_checkpoint(path)
    try:
        # Never `weights_only=False`: a crafted state.pt could run code on resume.
        return _decode(torch.load(path / "state.pt", map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001  (zip errors, unpickling refusals: all mean "not usable")
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: state.pt cannot be loaded safely: {reason}") from None


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `output_dir`, newest (last written) first; `latest` first when it
    names one."""
    root = Path(output_dir) / "checkpoints"
    ordered = [path for _, path in reversed(_markers(root))] if root.is_dir() else []
    pointer = root / "latest"
    if pointer.exists():
        named = root / pointer.read_text().strip()
        if named in ordered:
            ordered.remove(named)
            ordered.insert(0, named)
    return ordered


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `output_dir`, or None (not verified: see `load_latest`)."""
    found = complete_checkpoints(output_dir)
    return found[0] if found else None


def load_latest(output_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """(path, state) of the newest checkpoint that verifies and loads; a corrupt newer one is
    skipped with a warning (the previous intact one is used). None when there is none at all."""
    candidates = complete_checkpoints(output_dir)
    if not candidates:
        return None
    errors = []
    for path in candidates:
        try:
            state = _read_state(path)
        except CheckpointError as e:
            errors.append(str(e))
            print(f"[resume] warning: skipping checkpoint {path.name}: {e}", file=sys.stderr, flush=True)
            continue
        return path, state
    raise CheckpointError(f"no usable checkpoint under {Path(output_dir) / 'checkpoints'}: " + "; ".join(errors))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state of checkpoint `path`; an output_dir gives its newest usable checkpoint."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir():  # an output_dir was given
        found = load_latest(path)
        if found is None:
            raise CheckpointError(f"no complete checkpoint under {path}/checkpoints")
        return found[1]
    return _read_state(path)


def resume_state(resume: str, output_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """What `resume` (`auto`, `never` or a path) resumes from: (checkpoint, state) or None.
    `auto` takes the newest usable checkpoint of `output_dir` (skipping corrupt ones with a
    warning); an explicit path must itself be usable."""
    if resume == "never":
        return None
    if resume == "auto":
        return load_latest(output_dir)
    path = Path(resume)
    if path.is_dir() and (path / "checkpoints").is_dir():
        found = load_latest(path)
        if found is None:
            raise CheckpointError(f"resume={resume}: no complete checkpoint under {path}/checkpoints")
        return found
    return path, _read_state(path)
