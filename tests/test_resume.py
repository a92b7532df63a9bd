"""Exact resume: kill -9 a training process mid-run, resume, and the following steps' metrics
equal those of an uninterrupted run (CPU, same seed)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import _mp_helpers as helpers

OVERRIDES = ["model=tiny", "dataset=arithmetic", "dataset_size=64", "eval_size=8", "eval_every=3", "steps=8",
             "prompts_per_step=4", "num_generations=4", "max_new_tokens=4", "sft_steps=3", "lr=1e-3",
             "replay_ratio=0.5", "updates_per_step=2", "save_every=2", "num_threads=1", "progress_bar=off"]


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "r2vpo_ascend.cli", "train", "--no-plot", *OVERRIDES, f"output_dir={out}"]


@pytest.mark.slow
def test_kill_minus_9_then_resume_matches_uninterrupted(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    straight = tmp_path / "straight"
    subprocess.run(_cmd(straight), check=True, env=env, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "step_000004" / "COMPLETE"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert marker.exists(), "the run never wrote its step-4 checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    resumed = subprocess.run(_cmd(killed), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "[resume]" in resumed.stdout
    a, b = helpers.metrics_by_step(straight), helpers.metrics_by_step(killed)
    assert sorted(a) == sorted(b) == list(range(0, 9))
    for step in range(5, 9):
        assert a[step] == b[step], f"step {step} differs after resume"
