"""PNG curves of a finished (or running) run from its metrics.jsonl: `r2vpo plot <run_dir>`."""

from __future__ import annotations

from pathlib import Path

from r2vpo_ascend.trainer.loggers import read_metrics

PANELS = [
    ("reward/mean", "train reward (mean)"),
    ("eval/accuracy", "held-out accuracy"),
    ("r2vpo/lambda", "λ (dual variable)"),
    ("r2vpo/ratio_var", "ratio variance V̂"),
    ("replay/ess_frac", "ESS / tokens"),
    ("r2vpo/eff_adv_flip_frac", "effective-advantage sign flips"),
    ("response_length/mean", "response length (tokens)"),
    ("clip/frac", "clip fraction (baselines)"),
]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a grid of curves (x: rollouts) to `out` (default `<run_dir>/training_curves.png`)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'r2vpo-ascend[plot]'") from e
    records = read_metrics(run_dir)
    panels = [(k, title) for k, title in PANELS if any(isinstance(r.get(k), (int, float)) for r in records)]
    if not panels:
        raise ValueError(f"{run_dir}/metrics.jsonl has none of the plotted metrics {[k for k, _ in PANELS]}")
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.2 * rows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        pts = [(r.get("rollouts", r["step"]), r[key]) for r in records if isinstance(r.get(key), (int, float))]
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3)
        ax.set_title(title)
        ax.set_xlabel("rollouts (generated responses)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{Path(run_dir).name}: {len(records)} logged steps")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "training_curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
