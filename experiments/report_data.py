"""What the report reads from a run directory: metrics.jsonl, config.yaml and done.json, parsed
once per report build, and the constants the summary, the figures and the markdown share.

Below experiments/report.py, report_figures.py and report_markdown.py, which all import it
(so none of them imports another's caller).
"""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path

import yaml

LATE_WINDOW = 5
HAND_WRITTEN = "<!-- everything below this line is hand-written and kept when the report is rebuilt -->"
SMOOTH_STEPS = 5   # rolling mean of per-step diagnostics in the figures


def read_run(run_dir: str | Path) -> dict:
    """Evaluations [(step, rollouts, accuracy)], per-step records (step > 0) and the config."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [(r["step"], r.get("rollouts", 0), r["eval/accuracy"]) for r in records
             if isinstance(r.get("eval/accuracy"), (int, float))]
    if not evals:
        raise ValueError(f"{run_dir}: no evaluation in metrics.jsonl")
    steps = [r for r in records if r["step"] > 0]
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    done_path = run_dir / "done.json"
    done = json.loads(done_path.read_text()) if done_path.exists() else {}
    return {"evals": evals, "steps": steps, "config": config, "wall_s": done.get("wall_s")}


@functools.lru_cache(maxsize=None)
def read_run_cached(run_dir: Path) -> dict:
    """`read_run`, each run parsed once per report build (`build_report` clears it); read-only."""
    return read_run(run_dir)


def late_accuracy(evals: list, window: int = LATE_WINDOW) -> float:
    accs = [a for step, _, a in evals if step > 0] or [evals[-1][2]]
    return statistics.fmean(accs[-window:])
