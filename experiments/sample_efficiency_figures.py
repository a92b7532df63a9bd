"""The figures of the sample-efficiency report (PNG, matplotlib): per stage and task, accuracy
vs rollouts (mean ± std over seeds) with the target line, and the diagnostics of issue 11 item 2
per arm over training (the top-1% tokens' share of the gradient, the variance term's share, λ,
the largest ratio), each a rolling mean over SMOOTH_STEPS steps, averaged over seeds.
"""

from __future__ import annotations

from pathlib import Path

from experiments.report_data import SMOOTH_STEPS, band, pyplot, smoothed_series

# the study's R²VPO arms (solid lines; the clipping baselines and TRL are dashed)
R2VPO_ARMS = ("spec", "huber", "tis", "winsor", "m2", "normalized", "pid", "sequence_ratio")

DIAG_PANELS = (("grad/top1pct_share", "share of |∂L/∂log π| on the top-1% |ρ − c|"),
               ("grad/var_share", "variance term's share of |∂L/∂log π|"),
               ("r2vpo/lambda", "λ"), ("r2vpo/ratio_max", "largest ρ (log scale)"))


def write_figures(summary: dict, out: Path, figures_dir: Path) -> dict:
    """{"<stage>_<task>_accuracy" | "<stage>_<task>_diagnostics": path} for every stage and task
    with finished runs (stage B, one seed per candidate, gets no figure)."""
    plt = pyplot()
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stage, block in summary.items():
        if stage == "B":
            continue
        for task, cells in block["tasks"].items():
            arms = [a for a, c in cells.items() if c["runs"]]
            if not arms:
                continue
            colors = {a: plt.cm.tab10(i % 10) for i, a in enumerate(arms)}
            fig, ax = plt.subplots(figsize=(7.5, 4.8))
            for a in arms:
                xs, ms, ss = band([r["curve"] for r in cells[a]["runs"].values()])
                ax.plot(xs, [100 * m for m in ms], label=f"{a} ({len(cells[a]['runs'])})", color=colors[a], lw=1.5,
                        ls="-" if a.split("/")[0] in R2VPO_ARMS else "--")
                ax.fill_between(xs, [100 * (m - s) for m, s in zip(ms, ss)], [100 * (m + s) for m, s in zip(ms, ss)],
                                color=colors[a], alpha=0.10)
            acc0, gain = cells[arms[0]]["acc0"]["mean"], cells[arms[0]]["target_gain"]
            if gain is not None and acc0 is not None:
                ax.axhline(100 * (acc0 + gain), color="grey", ls=":", lw=1, label="target (mean warm start + gain)")
            ax.set_title(f"stage {stage}, {task}: accuracy vs rollouts (mean ± std over seeds)")
            ax.set_xlabel("rollouts (generated responses)")
            ax.set_ylabel("held-out greedy accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            paths[f"{stage}_{task}_accuracy"] = _save(plt, fig, figures_dir / f"se_{stage}_{task}_accuracy.png")

            fig, axes = plt.subplots(1, len(DIAG_PANELS), figsize=(4.3 * len(DIAG_PANELS), 3.5), squeeze=False)
            for ax, (key, title) in zip(axes[0], DIAG_PANELS):
                for a in arms:
                    curves = [c for c in (smoothed_series(out / row, key) for row in cells[a]["run_dirs"]) if c]
                    if not curves:
                        continue
                    xs, ms, ss = band(curves)
                    ax.plot(xs, ms, label=a, color=colors[a], lw=1.2)
                    ax.fill_between(xs, [max(m - s, 1e-6) for m, s in zip(ms, ss)], [m + s for m, s in zip(ms, ss)],
                                    color=colors[a], alpha=0.10)
                if key == "r2vpo/ratio_max":
                    ax.set_yscale("log")
                ax.set_title(title, fontsize=9)
                ax.set_xlabel("rollouts")
                ax.grid(alpha=0.3)
            axes[0][0].legend(fontsize=7)
            fig.suptitle(f"stage {stage}, {task}: gradient diagnostics (rolling mean over {SMOOTH_STEPS} steps; "
                         "band: ±std over seeds)", fontsize=10)
            fig.tight_layout()
            paths[f"{stage}_{task}_diagnostics"] = _save(plt, fig, figures_dir / f"se_{stage}_{task}_diagnostics.png")
    return paths


def _save(plt, fig, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
