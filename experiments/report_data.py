"""What the report reads from a run directory: metrics.jsonl, config.yaml and done.json, parsed
once per report build, and the constants the summary, the figures and the markdown share.

Below experiments/report.py, report_figures.py and report_markdown.py, which all import it
(so none of them imports another's caller).
"""

from __future__ import annotations

import functools
import json
import math
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


def smoothed_series(run_dir: Path, key: str) -> list | None:
    """[[rollouts, rolling mean of `key` over SMOOTH_STEPS steps], ...] for a run's steps (a
    missing or non-finite value is left out of its windows), or None if no step has `key`."""
    pts = [(s.get("rollouts", 0), s.get(key)) for s in read_run_cached(Path(run_dir))["steps"]]
    if not any(isinstance(v, (int, float)) for _, v in pts):
        return None
    ys = [v if isinstance(v, (int, float)) and math.isfinite(v) else math.nan for _, v in pts]
    out = []
    for i, (x, _) in enumerate(pts):
        window = [y for y in ys[max(0, i - SMOOTH_STEPS + 1):i + 1] if not math.isnan(y)]
        out.append([x, statistics.fmean(window) if window else math.nan])
    return out


def band(curves: list[list]) -> tuple[list, list, list]:
    """[[x, y], ...] curves of several seeds -> x, mean, std (on the shortest curve's points)."""
    n = min(len(c) for c in curves)
    xs = [curves[0][i][0] for i in range(n)]
    cols = [[c[i][1] for c in curves] for i in range(n)]
    return xs, [statistics.fmean(c) for c in cols], [statistics.stdev(c) if len(c) > 1 else 0.0 for c in cols]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
