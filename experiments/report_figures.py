"""The figures of the paper-claims report (PNG, matplotlib): accuracy vs rollouts per task,
and the R²VPO diagnostics (λ, ratio variance, ESS, sign-flip share) over training.
"""

from __future__ import annotations

from pathlib import Path

from experiments.report_data import SMOOTH_STEPS, band, pyplot, smoothed_series

# ---- figures ------------------------------------------------------------------------------------------
def _step_series(out_dir: Path, plan: dict, task: str, arm: str, key: str):
    """Per-step `key` (rolling mean), averaged over seeds: x (rollouts), mean, std."""
    curves = []
    for r in plan["runs"]:
        if r["kind"] == "main" and r["task"] == task and r["arm"] == arm:
            try:
                curve = smoothed_series(out_dir / r["run_dir"], key)
            except (FileNotFoundError, ValueError):
                continue
            if curve:
                curves.append(curve)
    return band(curves) if curves else None


def write_figures(summary: dict, out_dir: Path, figures_dir: Path) -> dict:
    plt = pyplot()
    plan = summary["plan"]
    tasks, arms = plan["tasks"], plan["arms"]
    figures_dir.mkdir(parents=True, exist_ok=True)
    colors = {a: plt.cm.tab10(i) for i, a in enumerate(arms)}
    paths = {}

    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.6), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        tt = summary["tasks"][t]
        for a in arms:
            curve = tt["arms"][a]["curve"]
            if not curve:
                continue
            xs, ms, ss = zip(*curve)
            ax.plot(xs, [100 * m for m in ms], label=a, color=colors[a], lw=1.6,
                    ls="--" if plan["arms"][a]["replay"] else "-")
            ax.fill_between(xs, [100 * (m - s) for m, s in zip(ms, ss)], [100 * (m + s) for m, s in zip(ms, ss)],
                            color=colors[a], alpha=0.08)
        if tt["target"] is not None:
            ax.axhline(100 * tt["target"], color="grey", ls=":", lw=1, label="target")
        ax.set_title(f"{t}: {plan['tasks'][t]['title']}")
        ax.set_xlabel("rollouts (generated responses)")
        ax.set_ylabel("test accuracy (%), mean ± std over seeds")
        ax.grid(alpha=0.3)
    paths["accuracy"] = _save(plt, fig, axes, figures_dir / "accuracy_vs_rollouts.png")

    r2_arms = [a for a in arms if plan["arms"][a]["family"] == "r2vpo"]
    panels = [("r2vpo/lambda", "λ"), ("r2vpo/ratio_var", "ratio variance V̂"), ("replay/ess_frac", "ESS / tokens"),
              ("r2vpo/eff_adv_flip_frac", "effective-advantage sign flips")]
    for t in tasks if r2_arms else []:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
        for ax, (key, title) in zip(axes[0], panels):
            for a in r2_arms:
                s = _step_series(out_dir, plan, t, a, key)
                if s is None:
                    continue
                xs, m, sd = s
                ax.plot(xs, m, label=a, color=colors[a], lw=1.4)
                low = [max(x - y, 0.0) for x, y in zip(m, sd)]  # all four are >= 0
                if key == "r2vpo/ratio_var":  # spans decades (outlier steps): log scale, band from the mean down
                    low = [x / 10 if x - y <= 0 else x - y for x, y in zip(m, sd)]
                ax.fill_between(xs, low, [x + y for x, y in zip(m, sd)], color=colors[a], alpha=0.15)
            if key == "r2vpo/ratio_var":
                ax.set_yscale("log")
            ax.set_title(title)
            ax.set_xlabel("rollouts")
            ax.grid(alpha=0.3)
        fig.suptitle(f"R²VPO arms, {t} (rolling mean over {SMOOTH_STEPS} steps; band: ±std over seeds)")
        paths[f"r2vpo_{t}"] = _save(plt, fig, axes, figures_dir / f"r2vpo_internals_{t}.png")

    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.0), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        for a in arms:
            s = _step_series(out_dir, plan, t, a, "ratio/pos_adv_above_clip_frac")
            if s is None:
                continue
            xs, m, _ = s
            ax.plot(xs, [100 * v for v in m], label=a, color=colors[a], lw=1.4,
                    ls="--" if plan["arms"][a]["replay"] else "-")
        ax.set_title(f"{t}: A > 0 tokens with ρ > 1.2 (%)")
        ax.set_xlabel("rollouts")
        ax.grid(alpha=0.3)
    paths["eureka"] = _save(plt, fig, axes, figures_dir / "eureka_share.png")
    return paths


def _save(plt, fig, axes, path: Path) -> Path:
    """Legend on the first panel, tight layout, PNG at 110 dpi; closes the figure."""
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
