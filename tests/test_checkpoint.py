"""Atomic checkpoints: a save that dies midway leaves the previous checkpoint usable."""

import pytest
import torch

from r2vpo_ascend.trainer import checkpoint as ckpt


def test_roundtrip_latest_and_pruning(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((2,), float(step))}, keep=2)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step_000003"
    assert ckpt.load_checkpoint(latest)["w"].tolist() == [3.0, 3.0]
    assert ckpt.load_checkpoint(tmp_path)["step"] == 3  # an output_dir works too
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_000002", "step_000003"]


def test_crash_during_save_keeps_previous(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 1, {"step": 1})

    def dies(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt("killed mid-save")
    monkeypatch.setattr(ckpt.torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, {"step": 2})
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000001"
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["step"] == 1
    ckpt.save_checkpoint(tmp_path, 2, {"step": 2})  # the next save cleans the partial directory
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert ckpt.load_checkpoint(tmp_path)["step"] == 2


def test_incomplete_checkpoint_is_refused(tmp_path):
    (tmp_path / "step_000001").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(tmp_path / "step_000001")


def test_pruning_follows_write_order_not_step_names(tmp_path):
    """An older run's higher step numbers never push out the current run's checkpoints."""
    for step in (29, 30):
        ckpt.save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_000002", "step_000003"]
    assert ckpt.load_checkpoint(tmp_path)["step"] == 3


def test_state_with_numpy_and_python_rng_round_trips(tmp_path):
    import random
    np = pytest.importorskip("numpy")
    state = {"numpy": np.random.RandomState(3).get_state(), "python": random.Random(1).getstate(),
             "scalar": np.float64(0.5), "t": torch.arange(3)}
    ckpt.save_checkpoint(tmp_path, 1, state)
    back = ckpt.load_checkpoint(tmp_path)
    rs = np.random.RandomState()
    rs.set_state(back["numpy"])
    assert rs.randint(1 << 30) == np.random.RandomState(3).randint(1 << 30)
    assert back["python"] == state["python"] and back["scalar"] == 0.5 and back["t"].tolist() == [0, 1, 2]


class _RunsCode:
    def __reduce__(self):
        return (print, ("UNSAFE CODE RAN",))


def test_a_crafted_state_is_refused_not_executed(tmp_path, capsys):
    path = ckpt.save_checkpoint(tmp_path, 1, {"step": 1})
    torch.save({"evil": _RunsCode()}, path / "state.pt")
    (path / ckpt.MARKER).write_text("1")  # an old-style marker: no size or checksum to catch it first
    with pytest.raises(ckpt.CheckpointError, match="cannot be loaded safely"):
        ckpt.load_checkpoint(path)
    assert "UNSAFE CODE RAN" not in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    ckpt.save_checkpoint(tmp_path, 1, {"step": 1, "w": torch.ones(1000)}, keep=3)
    newest = ckpt.save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.ones(1000)}, keep=3)
    data = bytearray((newest / "state.pt").read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    (newest / "state.pt").write_bytes(bytes(data))
    path, state = ckpt.resume_state("auto", tmp_path)
    assert (path.name, state["step"]) == ("step_000001", 1)
    assert "skipping checkpoint step_000002" in capsys.readouterr().err
    with pytest.raises(ckpt.CheckpointError, match="truncated" if damage == "truncate" else "SHA-256"):
        ckpt.load_checkpoint(newest)  # an explicit path gets no fall-back


def test_disk_full_says_so_and_leaves_no_partial_directory(tmp_path, monkeypatch):
    import builtins
    import errno
    ckpt.save_checkpoint(tmp_path, 1, {"step": 1})

    class FullFile:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > 64:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = builtins.open
    monkeypatch.setattr(ckpt, "open", lambda p, mode="r", *a, **k: FullFile(real_open(p, mode, *a, **k))
                        if "w" in mode else real_open(p, mode, *a, **k), raising=False)
    with pytest.raises(ckpt.CheckpointError, match="no space left on device .* the previous checkpoint .*step_000001"):
        ckpt.save_checkpoint(tmp_path, 2, {"step": 2, "w": torch.ones(1000)})
    monkeypatch.undo()
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert ckpt.load_checkpoint(tmp_path)["step"] == 1


def test_stale_temp_sweep_removes_only_dead_processes_dirs(tmp_path):
    import os
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    root = tmp_path / "checkpoints"
    root.mkdir()
    mine, gone = root / f".tmp-step_000005-{os.getpid()}", root / f".tmp-step_000004-{dead_pid}"
    mine.mkdir()
    gone.mkdir()
    ckpt.save_checkpoint(tmp_path, 1, {"step": 1})
    assert mine.exists() and not gone.exists()
