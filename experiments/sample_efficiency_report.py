"""The report of `experiments.sample_efficiency`: `<out>/summary.json` and the markdown report,
every number computed from the runs' metrics.jsonl (helpers from experiments/report.py).

Definitions (stated in the report too):
- accuracy: greedy `eval/accuracy` on the held-out split the stage uses; step 0 = the warm start;
- late: mean of the last 5 evaluations; acc@half: the last evaluation at or before half the
  run's rollouts; worst drop: the largest fall between consecutive evaluations;
- target (per task and stage): mean warm start + half the largest mean gain (late − warm start)
  of any arm; in stage C the gain is half the largest validation gain of any stage-B run, fixed
  (recorded in plan_C.json) before stage C ran; rollouts to target: first evaluation where it
  and the previous one average at or above the seed's warm start + that gain
  (experiments/report.py `rollouts_to_level`);
- a seed whose warm start + the target gain exceeds 100% has no headroom: it is left out of the
  rollouts-to-target numbers (reached k/n counts the others);
- collapsed: the run's late accuracy is below its warm start;
- diagnostics (means over the run's steps unless said): grad/top1pct_share, grad/var_share,
  the largest r2vpo/lambda_max_change of any step, the largest r2vpo/ratio_max, clip/frac.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from experiments.report import mean_std, rollouts_to_level
from experiments.report_data import HAND_WRITTEN, late_accuracy, read_run_cached
from experiments.sample_efficiency_figures import R2VPO_ARMS, write_figures

DIAG_MEAN = ("grad/top1pct_share", "grad/var_share", "grad/top1pct_var_share", "r2vpo/lambda", "clip/frac",
             "r2vpo/ratio_var", "r2vpo/dual_ratio_var")
DIAG_MAX = ("r2vpo/lambda_max_change", "r2vpo/ratio_max", "grad_norm")
STAGE_TITLES = {"A": "Stage A: screen at the collapse setting (lr 3e-4, ppo_epochs 4, replay 0.5)",
                "B": "Stage B: tuning on the validation split", "C": "Stage C: final runs"}


def run_numbers(run_dir: Path) -> dict:
    run = read_run_cached(Path(run_dir))
    evals, steps = run["evals"], run["steps"]
    accs = [a for _, _, a in evals]
    half = evals[-1][1] / 2
    out = {"acc0": accs[0], "late": late_accuracy(evals), "final": accs[-1],
           "acc_at_half": [a for _, ro, a in evals if ro <= half][-1],
           "worst_drop": max([0.0] + [accs[i - 1] - accs[i] for i in range(1, len(accs))]),
           "curve": [[ro, a] for _, ro, a in evals], "rollouts": evals[-1][1], "wall_s": run["wall_s"]}
    for key in DIAG_MEAN:
        values = [r[key] for r in steps if isinstance(r.get(key), (int, float))]
        out[key] = statistics.fmean(values) if values else None
    for key in DIAG_MAX:
        values = [r[key] for r in steps if isinstance(r.get(key), (int, float))]
        out["max " + key] = max(values) if values else None
    out["collapsed"] = out["late"] < out["acc0"]
    return out


def summarise(out: Path) -> dict:
    """{stage: {task: {arm: {"runs": {seed: numbers}, "missing": [seeds], ...aggregates}}}}."""
    summary = {}
    for plan_path in sorted(out.glob("plan_*.json")):
        plan = json.loads(plan_path.read_text())
        stage = plan["stage"]
        per_task: dict = {}
        for row in plan["runs"]:
            if row["kind"] == "sft":
                continue
            cell = per_task.setdefault(row["task"], {}).setdefault(row["arm"], {"runs": {}, "missing": [],
                                                                                "run_dirs": []})
            done = out / row["run_dir"] / "done.json"
            # only finished runs count (a run in progress has a partial metrics.jsonl)
            if not done.exists() or json.loads(done.read_text()).get("rc") != 0:
                cell["missing"].append(row["seed"])
                continue
            try:
                cell["runs"][str(row["seed"])] = run_numbers(out / row["run_dir"])
                cell["run_dirs"].append(row["run_dir"])
            except (FileNotFoundError, ValueError):
                cell["missing"].append(row["seed"])
        for task, arms in per_task.items():
            for cell in arms.values():
                runs = list(cell["runs"].values())
                for key in ("acc0", "late", "acc_at_half", "worst_drop"):
                    cell[key] = mean_std([r[key] for r in runs])
                cell["collapsed"] = sum(r["collapsed"] for r in runs)
            gains = [c["late"]["mean"] - c["acc0"]["mean"] for c in arms.values() if c["runs"]]
            gain = max(gains) / 2 if gains and max(gains) > 0 else None
            fixed = plan.get("setting", {}).get("target_gain", {}).get(task)
            if fixed is not None:  # stage C: fixed from stage B's validation runs before stage C ran
                gain = fixed
            for cell in arms.values():
                # a seed whose warm start + gain is above 100% cannot reach the target with any arm
                # (no headroom): left out of the rollouts-to-target numbers, counted in `no_headroom`
                runs = [r for r in cell["runs"].values() if gain is None or r["acc0"] + gain <= 1.0]
                reached = [rollouts_to_level(r["curve"], None if gain is None else r["acc0"] + gain) for r in runs]
                cell["target_gain"] = gain
                cell["target_source"] = "stage B validation" if fixed is not None else "this stage"
                cell["no_headroom"] = len(cell["runs"]) - len(runs)
                cell["reached"] = sum(x is not None for x in reached)
                cell["rollouts_to_target"] = mean_std([x for x in reached if x is not None])
                # unreached counted as the run's whole budget: a lower bound, comparable across arms
                cell["rollouts_to_target_censored"] = mean_std(
                    [r["rollouts"] if x is None else x for x, r in zip(reached, runs)])
        summary[stage] = {"tasks": per_task, "plan": {k: plan[k] for k in ("command", "arms", "tasks", "setting")}}
    return summary


def _pct(d) -> str:
    if d is None or d.get("mean") is None:
        return "–"
    return f"{100 * d['mean']:.1f}" + (f" ± {100 * d['std']:.1f}" if d.get("n", 0) > 1 else "")


def _num(x, fmt="{:.3g}") -> str:
    return "–" if x is None else fmt.format(x)


def _mean_of(cell: dict, key: str):
    values = [r[key] for r in cell["runs"].values() if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def _max_of(cell: dict, key: str):
    values = [r[key] for r in cell["runs"].values() if r.get(key) is not None]
    return max(values) if values else None


def _targets(cells: dict) -> list[str]:
    """Issue 11's target, per R²VPO arm: rollouts to target ≤ 0.5× TRL's and ≤ 0.7× our best
    clipping arm's (means with unreached runs counted as the budget), and no collapsed seed."""
    def censored(arm):
        c = cells.get(arm)
        return c["rollouts_to_target_censored"]["mean"] if c and c["runs"] else None
    clip = [a for a in cells if a in ("ppo_clip", "clip_higher", "gspo") and censored(a) is not None]
    best_clip = min(clip, key=censored) if clip else None
    lines = ["Against issue 11's target (mean rollouts to target, unreached seeds counted as the whole budget):", ""]
    for arm in [a for a in cells if a in R2VPO_ARMS and censored(a) is not None]:
        parts = []
        if censored("trl_grpo"):
            ratio = censored(arm) / censored("trl_grpo")
            parts.append(f"{ratio:.2f}× TRL GRPOTrainer ({'meets' if ratio <= 0.5 else 'misses'} ≤ 0.5×)")
        if best_clip:
            ratio = censored(arm) / censored(best_clip)
            parts.append(f"{ratio:.2f}× `{best_clip}` ({'meets' if ratio <= 0.7 else 'misses'} ≤ 0.7×)")
        parts.append(f"{cells[arm]['collapsed']}/{len(cells[arm]['runs'])} seeds collapsed")
        lines.append(f"- `{arm}`: " + "; ".join(parts))
    return lines + [""]


def markdown(summary: dict, figures: dict | None = None) -> str:
    figures = figures or {}
    lines = ["# Sample-efficiency study (issue 11)", "",
             "Generated by `python -m experiments.sample_efficiency` from the runs' metrics.jsonl "
             "(experiments/sample_efficiency.py; summary in `experiments/results/sample_efficiency/summary.json`). "
             "Do not edit by hand: rerun with `--report-only`.", "",
             __doc__.split("\n\n", 1)[1].strip(), ""]
    for stage in sorted(summary):
        block = summary[stage]
        lines += [f"## {STAGE_TITLES[stage]}", "",
                  f"Run (or resume) with `python -m experiments.sample_efficiency --stage {stage}`.", ""]
        arms = block["plan"]["arms"]
        for task, cells in block["tasks"].items():
            title = block["plan"]["tasks"].get(task, task)
            gain = next((c["target_gain"] for c in cells.values()), None)
            source = next((c.get("target_source") for c in cells.values()), "this stage")
            lines += [f"### {task}: {title}", "",
                      f"Target = warm start + {_num(None if gain is None else 100 * gain, '{:.1f}')} points "
                      f"(half the largest mean gain, {source}).", "",
                      "| arm | seeds done | warm start % | late % | acc@half % | reached | rollouts to target | "
                      "… unreached = budget | worst drop | collapsed | top-1% share | var share | max Δλ | max ρ | "
                      "clip frac |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for arm, cell in cells.items():
                n = len(cell["runs"])
                rtt = cell["rollouts_to_target"]
                lines.append(
                    f"| `{arm}` {arms.get(arm.split('/')[0], '')} | {n}/{n + len(cell['missing'])} | "
                    f"{_pct(cell['acc0'])} | {_pct(cell['late'])} | {_pct(cell['acc_at_half'])} | "
                    f"{cell['reached']}/{n - cell['no_headroom']} | {_num(rtt['mean'], '{:,.0f}')} | "
                    f"{_num(cell['rollouts_to_target_censored']['mean'], '{:,.0f}')} | {_pct(cell['worst_drop'])} | "
                    f"{cell['collapsed']}/{n} | {_num(_mean_of(cell, 'grad/top1pct_share'), '{:.2f}')} | "
                    f"{_num(_mean_of(cell, 'grad/var_share'), '{:.2f}')} | "
                    f"{_num(_max_of(cell, 'max r2vpo/lambda_max_change'))} | "
                    f"{_num(_max_of(cell, 'max r2vpo/ratio_max'))} | {_num(_mean_of(cell, 'clip/frac'), '{:.3f}')} |")
            missing = {arm: cell["missing"] for arm, cell in cells.items() if cell["missing"]}
            lines.append("")
            no_room = max((c.get("no_headroom", 0) for c in cells.values()), default=0)
            if no_room:
                lines += [f"{no_room} seed(s) start within the target gain of 100% (warm start + gain > 100%): no "
                          "arm can reach the target there, so they are left out of `reached` and the rollouts to "
                          "target (their accuracies stay in the other columns).", ""]
            if stage == "C":
                lines += _targets(cells)
            for kind in ("accuracy", "diagnostics"):
                if f"{stage}_{task}_{kind}" in figures:
                    lines += [f"![stage {stage} {task} {kind}](figures/se_{stage}_{task}_{kind}.png)", ""]
            if missing:
                lines += ["Not run (or not finished) yet: " +
                          "; ".join(f"`{a}` seeds {s}" for a, s in missing.items()), ""]
    return "\n".join(lines) + "\n"


def build_report(out: Path, report_path: Path) -> dict:
    read_run_cached.cache_clear()  # runs may have finished since the last build in this process
    summary = summarise(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    report_path.parent.mkdir(parents=True, exist_ok=True)
    figures = write_figures(summary, out, report_path.parent / "figures")
    # the text after the HAND_WRITTEN marker (the diagnosis) survives a rebuild, as in docs/results.md
    old = report_path.read_text() if report_path.exists() else ""
    kept = old.split(HAND_WRITTEN, 1)[1] if HAND_WRITTEN in old else "\n"
    report_path.write_text(markdown(summary, figures) + "\n" + HAND_WRITTEN + kept)
    return summary
