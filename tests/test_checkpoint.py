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
