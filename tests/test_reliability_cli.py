"""The command line's side of reliability: overrides anywhere, exit codes, a torn metrics
line, and the launcher on a machine without the environment (docs/reliability.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r2vpo_ascend import cli
from r2vpo_ascend.algos.errors import TrainingDivergedError
from r2vpo_ascend.trainer.run_dir import StopRequested

ROOT = Path(__file__).resolve().parent.parent


def test_overrides_may_follow_flags(capsys):
    assert cli.main(["train", "steps=3", "--print-config", "lr=0.1", "--no-plot", "seed=4"]) == 0
    out = capsys.readouterr().out
    assert "\nsteps: 3\n" in out and "\nlr: 0.1\n" in out and "\nseed: 4\n" in out
    with pytest.raises(SystemExit):
        cli.main(["train", "steps=3", "--bogus"])
    with pytest.raises(SystemExit):
        cli.main(["info", "extra=1"])


@pytest.mark.parametrize("error, code", [(TrainingDivergedError("training diverged at RL step 2"), 3),
                                         (StopRequested("stopped by SIGTERM after RL step 2", 15), 143),
                                         (KeyboardInterrupt(), 130)])
def test_exit_codes(monkeypatch, capsys, error, code):
    def train(args):
        raise error
    monkeypatch.setattr(cli, "cmd_train", train)
    assert cli.main(["train", "steps=1"]) == code
    err = capsys.readouterr().err
    assert err.startswith("r2vpo train") and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, needle", [
    (["train", "loss=foo", "steps=1"], "config field `loss`: unknown policy loss 'foo'"),
    (["train", "reward=python:no_such_mod_xyz:f", "steps=1"], "cannot import module 'no_such_mod_xyz'"),
    (["train", "lr=nan"], "`lr` expects float"),
    (["train", "lr=-1"], "`lr` must be finite and > 0"),
    (["train", "top_p=0"], "`top_p` must be in (0, 1]"),
])
def test_config_errors_are_one_line_with_exit_2(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_plot_skips_a_torn_last_metrics_line(tmp_path, capsys):
    rows = [{"step": s, "rollouts": 4 * s, "reward/mean": 0.1 * s, "r2vpo/lambda": 1.0, "r2vpo/ratio_var": 0.01,
             "replay/ess_frac": 1.0} for s in range(1, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "rew')
    assert cli.main(["plot", str(tmp_path)]) == 0
    assert "torn last line 4" in capsys.readouterr().err


def test_launcher_without_the_environment_names_the_setup_command(tmp_path):
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\")\n")
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(tmp_path / "site"), R2VPO_DEVICE="cpu")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "train_pangu7b.sh"), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "bash scripts/_install.sh" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
