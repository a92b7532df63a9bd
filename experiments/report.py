"""The report of `experiments.paper_claims`: everything computed from the runs' metrics.jsonl.

`build_report(out_dir, report_path, figures_dir)` reads `<out_dir>/plan.json` (what was run)
and every run's metrics.jsonl, writes `<out_dir>/summary.json`, the markdown report and the
PNG figures, and returns the summary. No number in the report is typed in by hand.

Definitions (also stated in the report):
- accuracy: greedy accuracy on the held-out TEST slice (`eval/accuracy`), every `eval_every`
  steps and at step 0 (the shared warm start);
- final: the last evaluation; late: the mean of the last 5 evaluations (less noisy);
- budget: half of a run's rollouts (the paper's "half the rollouts"); acc@budget is the last
  evaluation at or before it;
- target (per task): warm start + half the largest mean gain (late − warm start) of any arm;
  rollouts to target: the first evaluation where the mean of it and the previous one is at
  or above the seed's warm start + that gain (two evaluations, so one lucky one does not count);
- worst drop: the largest fall between consecutive evaluations;
- paired differences between arms are taken per seed (the seeds share their warm start).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from experiments.report_data import late_accuracy, read_run, read_run_cached  # noqa: F401 (read_run: paper_claims)
from experiments.report_figures import write_figures
from experiments.report_markdown import write_markdown

# Per-step diagnostics summarised per arm (mean over the steps where the metric exists).
DIAG_KEYS = ["r2vpo/lambda", "r2vpo/ratio_var", "r2vpo/ratio_max", "r2vpo/eff_adv_flip_frac", "replay/ess_frac",
             "replay/staleness_mean", "ratio/pos_adv_above_clip_frac", "ratio/pos_adv_above_clip_eff_adv_mean",
             "clip/frac", "entropy/mean", "response_length/mean", "reward/mean", "perf/time_step_s"]
BUCKETS = ["0", "1", "2", "3", "ge4"]
BUCKET_KEYS = ["clip_frac", "ess_frac", "eff_adv_flip_frac", "ratio_mean", "tokens"]

PAIRS = [  # (A, B): is A better than B?
    ("r2vpo", "ppo_clip"), ("r2vpo", "clip_higher"), ("r2vpo_replay", "ppo_clip_replay"),
    ("r2vpo_replay", "ppo_clip"), ("r2vpo_replay", "r2vpo"), ("ppo_clip_replay", "ppo_clip"),
    ("r2vpo", "r2vpo_fixed_lambda"), ("r2vpo_replay", "r2vpo_replay_fixed_lambda"),
    ("r2vpo_replay_multiplicative", "ppo_clip_replay"), ("r2vpo_replay_multiplicative", "r2vpo_replay"),
]


# ---- one run --------------------------------------------------------------------------------------
def _stat_of(steps: list, key: str, stat=statistics.fmean):
    """`stat` (default: the mean) of `key` over the steps where it is a number; None if none."""
    values = [r[key] for r in steps if isinstance(r.get(key), (int, float))]
    return stat(values) if values else None


def run_summary(run: dict) -> dict:
    evals, steps, cfg = run["evals"], run["steps"], run["config"]
    accs = [a for _, _, a in evals]
    total = evals[-1][1]
    budget = total / 2
    at_budget = [a for _, ro, a in evals if ro <= budget][-1]
    drops = [accs[i - 1] - accs[i] for i in range(1, len(accs))]
    ups = cfg.get("updates_per_step", 1)
    out = {
        "acc0": accs[0], "final": accs[-1], "late": late_accuracy(evals),
        "auc": statistics.fmean(accs[1:]) if len(accs) > 1 else accs[0],
        "acc_at_budget": at_budget, "budget_rollouts": budget, "rollouts": total,
        "worst_drop": max([0.0] + drops),
        "curve": [[ro, a] for _, ro, a in evals],
        "wall_s": run["wall_s"], "step_time_s": sum(r.get("perf/time_step_s", 0.0) for r in steps),
        "means": {k: _stat_of(steps, k) for k in DIAG_KEYS},
        "last": {k: next((r[k] for r in reversed(steps) if isinstance(r.get(k), (int, float))), None)
                 for k in ("r2vpo/lambda", "r2vpo/ratio_var")},
        "buckets": {b: {k: _stat_of(steps, f"replay/staleness_{b}/{k}") for k in BUCKET_KEYS} for b in BUCKETS},
        # Outliers: one replayed token with a huge ρ makes V̂ (a mean of squares) huge for a step.
        "ratio_var_median": _stat_of(steps, "r2vpo/ratio_var", statistics.median),
        "ratio_max_max": max([r["r2vpo/ratio_max"] for r in steps if isinstance(r.get("r2vpo/ratio_max"), (int, float))],
                             default=None),
        "lambda_high_frac": statistics.fmean(
            [r.get("r2vpo/lambda", 0.0) >= 0.5 * cfg.get("lambda_max", 100.0) for r in steps]) if steps else None,
    }
    # "Eureka" tokens over the run: the logged counts are means per optimiser step.
    eureka = [r.get("ratio/pos_adv_above_clip_tokens") for r in steps]
    zeroed = [r.get("ratio/pos_adv_above_clip_zeroed_tokens") for r in steps]
    out["eureka_tokens"] = sum(v for v in eureka if v is not None) * ups if any(v is not None for v in eureka) else None
    out["eureka_zeroed"] = sum(v for v in zeroed if v is not None) * ups if any(v is not None for v in zeroed) else None
    out["buckets"] = {b: v for b, v in out["buckets"].items() if v["tokens"] is not None}
    return out


def rollouts_to_level(curve: list, level):
    """First rollout count where the mean of this and the previous evaluation of `curve`
    ([rollouts, accuracy, ...] rows) reaches `level`; None if never or `level` is None."""
    if level is None:
        return None
    for i in range(1, len(curve)):
        if (curve[i - 1][1] + curve[i][1]) / 2 >= level - 1e-12:
            return curve[i][0]
    return None


# ---- statistics ---------------------------------------------------------------------------------
def mean_std(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def paired(a: list, b: list) -> dict:
    """Per-seed differences a − b: mean, std, standard error, wins, and a verdict (|mean| > 2 SE)."""
    diffs = [x - y for x, y in zip(a, b) if x is not None and y is not None]
    if not diffs:
        return {"n": 0, "verdict": "n/a"}
    mean = statistics.fmean(diffs)
    std = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    se = std / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    wins = sum(d > 0 for d in diffs)
    if len(diffs) < 2:
        verdict = "n/a (1 seed)"
    elif mean > 2 * se and mean > 0:
        verdict = "better"
    elif mean < -2 * se and mean < 0:
        verdict = "worse"
    else:
        verdict = "no clear difference"
    return {"n": len(diffs), "mean": mean, "std": std, "se": se, "wins": wins, "verdict": verdict}


def _rel(a, b):
    return (a - b) / b if a is not None and b not in (None, 0) else None


# ---- the whole study ------------------------------------------------------------------------------
def summarise(out_dir: Path) -> dict:
    plan = json.loads((out_dir / "plan.json").read_text())
    arms, tasks = list(plan["arms"]), list(plan["tasks"])
    runs = {}
    for r in plan["runs"]:
        if r["kind"] != "main":
            continue
        try:
            runs[(r["task"], r["arm"], r["seed"])] = run_summary(read_run_cached(out_dir / r["run_dir"]))
        except (FileNotFoundError, ValueError):
            pass
    seeds = plan["seeds"]
    per_task = {}
    for task in tasks:
        arm_runs = {a: [runs.get((task, a, s)) for s in seeds] for a in arms}
        gains = [mean_std([r["late"] - r["acc0"] for r in rs if r])["mean"] for rs in arm_runs.values()]
        gains = [g for g in gains if g is not None]
        target_gain = 0.5 * max(gains) if gains and max(gains) > 0 else None
        table = {}
        for arm, rs in arm_runs.items():
            for r in rs:
                if r:
                    r["to_target"] = rollouts_to_level(r["curve"], r["acc0"] + target_gain) \
                        if target_gain is not None else None
            ok = [r for r in rs if r]
            entry = {k: mean_std([r[k] for r in ok]) for k in
                     ("acc0", "final", "late", "auc", "acc_at_budget", "worst_drop", "wall_s", "step_time_s")}
            entry["to_target"] = mean_std([r["to_target"] for r in ok])
            entry["reached"] = sum(r["to_target"] is not None for r in ok)
            entry["runs"] = len(ok)
            entry["rollouts"] = ok[0]["rollouts"] if ok else None
            entry["budget_rollouts"] = ok[0]["budget_rollouts"] if ok else None
            entry["means"] = {k: mean_std([r["means"][k] for r in ok])["mean"] for k in DIAG_KEYS}
            entry["last"] = {k: mean_std([r["last"][k] for r in ok])["mean"] for k in ("r2vpo/lambda", "r2vpo/ratio_var")}
            entry["ratio_var_median"] = mean_std([r["ratio_var_median"] for r in ok])["mean"]
            entry["lambda_high_frac"] = mean_std([r["lambda_high_frac"] for r in ok])["mean"]
            maxima = [r["ratio_max_max"] for r in ok if r["ratio_max_max"] is not None]
            entry["ratio_max_max"] = max(maxima) if maxima else None
            entry["eureka_tokens"] = mean_std([r["eureka_tokens"] for r in ok])["mean"]
            entry["eureka_zeroed"] = mean_std([r["eureka_zeroed"] for r in ok])["mean"]
            buckets = sorted({b for r in ok for b in r["buckets"]}, key=BUCKETS.index)
            entry["buckets"] = {b: {k: mean_std([r["buckets"].get(b, {}).get(k) for r in ok])["mean"]
                                    for k in BUCKET_KEYS} for b in buckets}
            entry["curve"] = _mean_curve([r["curve"] for r in ok])
            table[arm] = entry
        comparisons = {}
        for a, b in PAIRS:
            if a in arm_runs and b in arm_runs:
                ra, rb = arm_runs[a], arm_runs[b]
                comparisons[f"{a} vs {b}"] = {
                    "late": paired([r and r["late"] for r in ra], [r and r["late"] for r in rb]),
                    "final": paired([r and r["final"] for r in ra], [r and r["final"] for r in rb]),
                    "acc_at_budget": paired([r and r["acc_at_budget"] for r in ra],
                                            [r and r["acc_at_budget"] for r in rb]),
                    "relative_late": _rel(table[a]["late"]["mean"], table[b]["late"]["mean"]),
                    "to_target_rel": _rel(table[a]["to_target"]["mean"], table[b]["to_target"]["mean"]),
                    "rollouts_to_match": rollouts_to_level(table[a]["curve"], table[b]["late"]["mean"]),
                }
        acc0 = mean_std([r["acc0"] for rs in arm_runs.values() for r in rs if r])["mean"]
        # Every arm of a seed starts from the same saved warm start: their step-0 accuracies must agree.
        shared = all(len({round(rs[i]["acc0"], 9) for rs in arm_runs.values() if rs[i]}) <= 1
                     for i in range(len(seeds)))
        per_task[task] = {"target_gain": target_gain, "target": None if target_gain is None or acc0 is None
                          else acc0 + target_gain, "acc0": acc0, "warm_start_shared": shared,
                          "acc0_per_seed": [next((rs[i]["acc0"] for rs in arm_runs.values() if rs[i]), None)
                                            for i in range(len(seeds))],
                          "arms": table, "comparisons": comparisons}
    missing = [f"{t}/{a}/seed{s}" for t in tasks for a in arms for s in seeds if (t, a, s) not in runs]
    return {"plan": plan, "tasks": per_task, "claims": _claims(per_task, arms), "missing": missing,
            "complete": not missing, "generated": time.strftime("%Y-%m-%d %H:%M")}


def _mean_curve(curves: list) -> list:
    """[rollouts, mean, std] per evaluation index (the seeds evaluate at the same rollout counts)."""
    if not curves:
        return []
    n = min(len(c) for c in curves)
    out = []
    for i in range(n):
        accs = [c[i][1] for c in curves]
        out.append([curves[0][i][0], statistics.fmean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0])
    return out


def _claims(per_task: dict, arms: list) -> dict:
    """The paper's three claims, measured: setting-matched R²VPO vs clipping comparisons."""
    clip_onpolicy = [a for a in ("ppo_clip", "clip_higher") if a in arms]
    matched = []
    if "r2vpo" in arms and clip_onpolicy:
        matched.append(("on-policy", "r2vpo", clip_onpolicy))
    if "r2vpo_replay" in arms and "ppo_clip_replay" in arms:
        matched.append(("replay", "r2vpo_replay", ["ppo_clip_replay"]))
    c1, c2 = [], []
    for setting, ours, baselines in matched:
        rel, ratios = [], []
        for task, t in per_task.items():
            best = max(baselines, key=lambda b: t["arms"][b]["late"]["mean"] if t["arms"][b]["late"]["mean"]
                       is not None else -1)
            cmp_ = t["comparisons"].get(f"{ours} vs {best}", {})
            rel.append({"task": task, "baseline": best, "relative_late": cmp_.get("relative_late"),
                        "paired_late": cmp_.get("late")})
            ratios.append({"task": task, "baseline": best, "to_target_rel": cmp_.get("to_target_rel"),
                           "ours_to_target": t["arms"][ours]["to_target"], "reached": t["arms"][ours]["reached"],
                           "baseline_to_target": t["arms"][best]["to_target"],
                           "baseline_reached": t["arms"][best]["reached"],
                           "rollouts_to_match": cmp_.get("rollouts_to_match"),
                           "total_rollouts": t["arms"][ours]["rollouts"]})
        vals = [r["relative_late"] for r in rel if r["relative_late"] is not None]
        c1.append({"setting": setting, "ours": ours, "per_task": rel,
                   "average_relative": statistics.fmean(vals) if vals else None})
        c2.append({"setting": setting, "ours": ours, "per_task": ratios})
    c3 = []
    for ours, onp in (("r2vpo_replay", "r2vpo"), ("ppo_clip_replay", "ppo_clip")):
        if ours in arms and onp in arms:
            c3.append({"replay": ours, "on_policy": onp,
                       "per_task": {task: t["comparisons"].get(f"{ours} vs {onp}", {}).get("late")
                                    for task, t in per_task.items()}})
    return {"beats_clipping": c1, "rollouts": c2, "stale_data": c3}


def build_report(out_dir: Path, report_path: Path, figures_dir: Path) -> dict:
    out_dir = Path(out_dir)
    try:  # summarise and the figures share each run's parsed metrics.jsonl
        summary = summarise(out_dir)
        figures = write_figures(summary, out_dir, Path(figures_dir)) if not summary["missing"] or any(
            e["runs"] for t in summary["tasks"].values() for e in t["arms"].values()) else {}
    finally:
        read_run_cached.cache_clear()
    write_markdown(summary, Path(report_path), figures)
    summary["figures"] = {k: str(v) for k, v in figures.items()}
    summary["report"] = str(report_path)
    (out_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "plan"}, indent=1,
                                                     default=str))
    return summary
