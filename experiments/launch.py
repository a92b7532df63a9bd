"""Run one training config of a study as its own process (or in-process), resumably.

A run directory holds `config.yaml`, `stdout.log`, the run's outputs and `done.json` (the
config's hash, exit code, wall and CPU time); a finished run with the same config hash is not
run again, so a study command can be repeated to resume. Shared by experiments.paper_claims and
experiments.sample_efficiency.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunResult:
    status: str          # done, cached, failed
    wall_s: float
    message: str = ""    # the log's last lines when it failed


def _config_hash(cfg: dict) -> str:
    return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_command(cfg: dict, cfg_path: Path) -> list[str]:
    """The run's process: `r2vpo train`, or the TRL GRPOTrainer arm for `trainer: trl` (experiments/trl_arm.py)."""
    if cfg.get("trainer") == "trl":
        return [sys.executable, "-m", "experiments.trl_arm", "--config", str(cfg_path)]
    return [sys.executable, "-m", "r2vpo_ascend.cli", "train", "--no-plot", "--config", str(cfg_path)]


def _train_in_process(cfg: dict) -> None:
    if cfg.get("trainer") == "trl":
        from experiments import trl_arm
        trl_arm.train(cfg)
        return
    from r2vpo_ascend.api import R2VPOConfig, R2VPOTrainer
    R2VPOTrainer(config=R2VPOConfig.from_dict(cfg)).train()


def train_once(cfg: dict, run_dir: Path, *, in_process: bool, keep_models: bool) -> RunResult:
    """`r2vpo train` (or the TRL arm, `trainer: trl`) on `cfg` in `run_dir`; `keep_models=False`
    deletes `final/` and `checkpoints/` of a finished run (a study keeps only its metrics)."""
    digest = _config_hash(cfg)
    done_path = run_dir / "done.json"
    if done_path.exists():
        done = json.loads(done_path.read_text())
        if done.get("config_hash") == digest and done.get("rc") == 0:
            return RunResult("cached", done.get("wall_s", 0.0))
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cfg_path = run_dir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = run_dir / "stdout.log"
    t0 = time.perf_counter()
    rc, cpu_s = 0, None
    if in_process:
        with open(log, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            try:
                _train_in_process(cfg)
            except Exception as e:  # noqa: BLE001 - recorded, the study goes on
                print(f"{type(e).__name__}: {e}")
                rc = 1
    else:
        env = dict(os.environ, OMP_NUM_THREADS=str(cfg["num_threads"] or 1),
                   MKL_NUM_THREADS=str(cfg["num_threads"] or 1), TOKENIZERS_PARALLELISM="false",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        with open(log, "w") as fh:
            proc = subprocess.Popen(train_command(cfg, cfg_path), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    cwd=ROOT)
            _, status, usage = os.wait4(proc.pid, 0)   # the CPU time too: wall time is noisy on a shared machine
            rc = proc.returncode = os.waitstatus_to_exitcode(status)
            cpu_s = usage.ru_utime + usage.ru_stime
    wall_s = time.perf_counter() - t0
    if rc == 0 and not keep_models:
        for sub in ("final", "checkpoints"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    done_path.write_text(json.dumps({"config_hash": digest, "rc": rc, "wall_s": wall_s, "cpu_s": cpu_s,
                                     "finished": time.strftime("%Y-%m-%d %H:%M:%S")}))
    message = " | ".join(log.read_text().strip().splitlines()[-3:]) if rc else ""
    return RunResult("done" if rc == 0 else "failed", wall_s, message)


def progress_printer(plan, t_start: float):
    """A callback that prints one line per finished run of `plan`: `[k/n elapsed] status what wall`."""
    total = len(plan.all_runs())
    count = [0]

    def report(run) -> None:
        count[0] += 1
        what = f"{run.kind} {run.task}" + (f" {run.arm}" if run.arm else "") + \
            (f" cand{run.candidate}" if run.candidate is not None else "") + f" seed{run.seed}"
        extra = f" ({run.message})" if run.message else ""
        print(f"[{count[0]}/{total} {time.perf_counter() - t_start:6.0f}s] {run.status:7s} {what} "
              f"{run.wall_s:.0f}s{extra}", flush=True)
    return report
