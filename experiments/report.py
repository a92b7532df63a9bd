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
import os
import statistics
import time
from pathlib import Path

import yaml

LATE_WINDOW = 5
HAND_WRITTEN = "<!-- everything below this line is hand-written and kept when the report is rebuilt -->"
SMOOTH_STEPS = 5   # rolling mean of per-step diagnostics in the figures

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


def late_accuracy(evals: list, window: int = LATE_WINDOW) -> float:
    accs = [a for step, _, a in evals if step > 0] or [evals[-1][2]]
    return statistics.fmean(accs[-window:])


def _median_of(steps: list, key: str):
    values = [r[key] for r in steps if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def _mean_of(steps: list, key: str):
    values = [r[key] for r in steps if isinstance(r.get(key), (int, float))]
    return statistics.fmean(values) if values else None


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
        "means": {k: _mean_of(steps, k) for k in DIAG_KEYS},
        "last": {k: next((r[k] for r in reversed(steps) if isinstance(r.get(k), (int, float))), None)
                 for k in ("r2vpo/lambda", "r2vpo/ratio_var")},
        "buckets": {b: {k: _mean_of(steps, f"replay/staleness_{b}/{k}") for k in BUCKET_KEYS} for b in BUCKETS},
        # Outliers: one replayed token with a huge ρ makes V̂ (a mean of squares) huge for a step.
        "ratio_var_median": _median_of(steps, "r2vpo/ratio_var"),
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


def rollouts_to_target(curve: list, acc0: float, gain: float):
    """First rollout count where the mean of this and the previous evaluation reaches acc0 + gain."""
    for i in range(1, len(curve)):
        if (curve[i - 1][1] + curve[i][1]) / 2 >= acc0 + gain - 1e-12:
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
            runs[(r["task"], r["arm"], r["seed"])] = run_summary(read_run(out_dir / r["run_dir"]))
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
                    r["to_target"] = rollouts_to_target(r["curve"], r["acc0"], target_gain) \
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
                    "rollouts_to_match": _to_match(table[a]["curve"], table[b]["late"]["mean"]),
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


def _to_match(curve: list, level):
    """First rollouts where the seed-mean curve (mean of two consecutive evaluations) reaches `level`."""
    if level is None:
        return None
    for i in range(1, len(curve)):
        if (curve[i - 1][1] + curve[i][1]) / 2 >= level - 1e-12:
            return curve[i][0]
    return None


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


# ---- markdown ---------------------------------------------------------------------------------------
def _pct(x, digits=1):
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _ms(d, pct=True, digits=1):
    if d is None or d.get("mean") is None:
        return "–"
    if pct:
        return f"{100 * d['mean']:.{digits}f} ± {100 * d['std']:.{digits}f}"
    return f"{d['mean']:.0f} ± {d['std']:.0f}"


def _num(x, fmt="{:.3g}"):
    return "–" if x is None else fmt.format(x)


def _paired_text(p, pct=True):
    if not p or not p.get("n"):
        return "–"
    if p["n"] < 2:
        return f"{100 * p['mean']:+.1f} pts (1 seed)" if pct else f"{p['mean']:+.0f} (1 seed)"
    return f"{100 * p['mean']:+.1f} ± {100 * p['std']:.1f} pts, {p['wins']}/{p['n']} seeds: **{p['verdict']}**"


def write_markdown(summary: dict, report_path: Path, figures: dict) -> None:
    plan = summary["plan"]
    s = plan["settings"]
    arms, tasks = plan["arms"], plan["tasks"]
    rel = os.path.relpath
    L = []
    w = L.append
    w("# Results: the paper's claims, measured at toy scale\n")
    w(f"Generated by `experiments/report.py` from the runs' `metrics.jsonl` on {summary['generated']}; "
      "every number below is computed, none typed in. Rebuild with "
      "`python -m experiments.paper_claims --report-only` (same arguments as the study).\n")
    w(f"**Command:** `{s['command']}`  ")
    wall = s.get("wall_s")
    w(f"**Wall time:** {('%.1f min' % (wall / 60)) if wall else '–'} "
      f"(estimate before running: {('%.0f min' % (s['estimate_s'] / 60)) if s.get('estimate_s') else '–'}); "
      + (f"{s['jobs']} runs at a time (separate processes)" if s['jobs'] > 0 else "one run at a time, in-process")
      + f", {s['threads']} torch thread(s) each.  ")
    if summary["missing"]:
        w(f"**Incomplete:** {len(summary['missing'])} study runs missing or failed: "
          + ", ".join(summary["missing"][:12]) + ("…" if len(summary["missing"]) > 12 else "") + "  ")
    w("")
    w("## What was compared\n")
    w("The paper (R2VPO_SPEC.md) claims that R²VPO (1) beats the clipping baselines by up to +17% average "
      "relative, (2) needs about half the rollouts to converge, and (3) makes stale replayed data useful where "
      "clipping makes it useless. Every arm below starts from the **same supervised warm start** per (task, "
      "seed) (trained once, saved, loaded with `sft_steps=0`) and shares model, data, split, seed, sampling, "
      "learning rate, mini-batching (`updates_per_step: 2`, so the second mini-batch of each step is off-policy) "
      "and fresh-rollout budget. Only the loss, its tuned knob and, for the replay arms, the replay buffer "
      "differ.\n")
    w("| arm | what | tuned knob | picked (per task) |")
    w("|---|---|---|---|")
    for a in arms:
        spec = plan["arms"][a]
        picks = []
        for t in tasks:
            ch = plan["tuning"].get(f"{t}/{a}")
            if ch:
                picks.append(f"{t}: " + (f"tuning failed ({ch['error']})" if ch.get("error") else
                                         _fmt_overrides(ch["overrides"]) + ("" if ch["tuned"] else " (default)")))
        w(f"| `{a}` | {spec['title']} | {spec['knob']} | {'; '.join(picks) or '–'} |")
    w("")
    w("| task | problems | warm start (test acc., mean over seeds) |")
    w("|---|---|---|")
    for t in tasks:
        task = plan["tasks"][t]
        w(f"| `{t}` | {task['title']}: `{_fmt_overrides(task['overrides'])}` | "
          f"{_pct(summary['tasks'][t]['acc0'])}% |")
    w("")
    c = s["common"]
    w(f"Shared settings: tiny Llama model (random init, char tokenizer), SFT {c['sft_steps']} steps "
      f"(lr {c['sft_lr']}, batch {c['sft_batch_size']}); RL {s['steps']} steps × {c['prompts_per_step']} prompts × "
      f"{c['num_generations']} samples (temperature {c['temperature']}, ≤ {c['max_new_tokens']} tokens), lr "
      f"{c['lr']}, {c['updates_per_step']} optimiser steps per RL step, GRPO advantages, token-mean loss; replay "
      f"arms add `replay_ratio: {plan['arms'].get('r2vpo_replay', plan['arms'].get('ppo_clip_replay', {})).get('overrides', {}).get('replay_ratio', '–')}`, "
      f"`max_staleness: {c['max_staleness']}` (the update batch is then half fresh, half replayed; the number of "
      f"fresh rollouts is the same as on-policy). Held-out test slice: {c['eval_size']} problems, greedy, every "
      f"{s['eval_every']} steps; problem pool and split fixed (`data_seed: {c['data_seed']}`); seeds "
      f"{', '.join(map(str, plan['seeds']))}.\n")

    w("## Tuning (validation slice, never the test slice)\n")
    if plan["tune"]:
        w(f"Every arm's knob over 3 values, the same budget for each: 1 seed ({s['tune_seed']}, its own warm "
          f"start), {s['tune_steps']} RL steps, accuracy on the **validation** slice (`eval_split: validation`: "
          "problems disjoint from train and test, same distribution). Picked: best mean validation accuracy "
          f"over the last {LATE_WINDOW} evaluations (ties: the default value, else the first). Learning rate and everything else are not "
          "tuned per arm.\n")
        w("| task | arm | knob | candidates → validation accuracy (%) | picked |")
        w("|---|---|---|---|---|")
        for t in tasks:
            for a in arms:
                ch = plan["tuning"].get(f"{t}/{a}")
                if not ch or not ch.get("scores"):
                    continue
                cands = ", ".join(f"{_fmt_overrides(g)} → {_pct(sc)}" for g, sc in zip(ch["grid"], ch["scores"]))
                w(f"| {t} | `{a}` | {ch['knob']} | {cands} | {_fmt_overrides(ch['overrides'])} |")
        w("")
    else:
        w("Not tuned (`--no-tune`): every arm used its default value.\n")

    w("## Results per task (test slice, mean ± std over seeds)\n")
    w(f"Definitions: *final* = last evaluation; *late* = mean of the last {LATE_WINDOW} evaluations; *@budget* = accuracy "
      "after half of the rollouts; *target* = warm start + half the largest mean gain of any arm on that task; "
      "*to target* = rollouts until the mean of two consecutive evaluations reaches the seed's warm start + that "
      "gain (mean over the seeds that reached it); *worst drop* = largest fall between consecutive "
      "evaluations; *AUC* = mean accuracy over all evaluations after step 0. Accuracies in %.\n")
    for t in tasks:
        tt = summary["tasks"][t]
        w(f"### `{t}`: {plan['tasks'][t]['title']}\n")
        per_seed = ", ".join(f"seed {sd}: {_pct(a)}%" for sd, a in zip(plan["seeds"], tt["acc0_per_seed"]))
        same = "identical for every arm (shared warm start)" if tt["warm_start_shared"] else \
            "**NOT identical across arms: check the warm starts**"
        w(f"Warm start (step-0 test accuracy) {per_seed}; {same}. " + (
            f"Target gain +{_pct(tt['target_gain'])} pts (≈ {_pct(tt['target'])}% on average).\n"
            if tt["target_gain"] is not None else "No arm improved on it, so there is no target.\n"))
        any_arm = next(iter(tt["arms"].values()))
        budget = any_arm["budget_rollouts"]
        w(f"| arm | final | late | @budget ({_num(budget, '{:.0f}')} rollouts) | to target (rollouts) | reached | "
          f"worst drop | AUC |")
        w("|---|---|---|---|---|---|---|---|")
        for a in arms:
            e = tt["arms"][a]
            w(f"| `{a}` | {_ms(e['final'])} | {_ms(e['late'])} | {_ms(e['acc_at_budget'])} | "
              f"{_ms(e['to_target'], pct=False)} | {e['reached']}/{e['runs']} | {_ms(e['worst_drop'])} | "
              f"{_ms(e['auc'])} |")
        w("")
        w("Paired by seed (A − B, accuracy points; *better*/*worse* when |mean| > 2 standard errors of the "
          "per-seed differences — a loose screen with this few seeds, not a significance test):\n")
        w("| A vs B | late | @budget | relative (late) | A reaches B's late accuracy after |")
        w("|---|---|---|---|---|")
        for name, cmp_ in tt["comparisons"].items():
            a = name.split(" vs ")[0]
            match = cmp_["rollouts_to_match"]
            total = tt["arms"][a]["rollouts"]
            match_txt = "never" if match is None else f"{match:.0f} rollouts ({100 * match / total:.0f}% of budget)"
            w(f"| {name} | {_paired_text(cmp_['late'])} | {_paired_text(cmp_['acc_at_budget'])} | "
              f"{_pct(cmp_['relative_late'], 1)}% | {match_txt} |")
        w("")
    if figures.get("accuracy"):
        w(f"![accuracy vs rollouts]({rel(figures['accuracy'], report_path.parent)})\n")

    w("## The claims, measured\n")
    cl = summary["claims"]
    w("**(1) \"R²VPO beats clipping, up to +17% average relative.\"** R²VPO vs the best clipping arm of the same "
      "setting (by late accuracy):\n")
    for c1 in cl["beats_clipping"]:
        parts = [f"{r['task']} vs `{r['baseline']}`: {_pct(r['relative_late'])}% relative "
                 f"({_paired_text(r['paired_late'])})" for r in c1["per_task"]]
        w(f"- {c1['setting']} (`{c1['ours']}`): " + "; ".join(parts) +
          f". **Average relative: {_pct(c1['average_relative'])}%.**")
    w("")
    w("**(2) \"About half the rollouts to converge.\"** Rollouts to the task's target, R²VPO vs the same "
      "baseline (relative difference of the means: −50% would be the paper's \"half the rollouts\"):\n")
    for c2 in cl["rollouts"]:
        parts = []
        for r in c2["per_task"]:
            ours, base = r["ours_to_target"], r["baseline_to_target"]
            match = r["rollouts_to_match"]
            parts.append(f"{r['task']}: {_ms(ours, pct=False)} ({r['reached']} reached) vs "
                         f"{_ms(base, pct=False)} ({r['baseline_reached']} reached), "
                         f"relative {_pct(r['to_target_rel'])}%; reaches the baseline's late accuracy "
                         + ("never" if match is None else f"after {100 * match / r['total_rollouts']:.0f}% of the rollouts"))
        w(f"- {c2['setting']} (`{c2['ours']}` vs best clipping arm): " + "; ".join(parts) + ".")
    w("")
    w("**(3) \"Stale data: useful with R²VPO, useless with clipping.\"** Replay arm − its on-policy "
      "counterpart (same fresh rollouts; late accuracy):\n")
    if not cl["stale_data"]:
        w("- not measured: needs a replay arm and its on-policy counterpart.")
    for c3 in cl["stale_data"]:
        parts = [f"{task}: {_paired_text(p)}" for task, p in c3["per_task"].items()]
        w(f"- `{c3['replay']}` − `{c3['on_policy']}`: " + "; ".join(parts) + ".")
    w("")
    replay_arms = [a for a in arms if plan["arms"][a]["replay"]]
    if replay_arms:
        w("Replayed tokens by staleness (versions old; mean per optimiser step over the run): share PPO-clip "
          "(ε = 0.2) gives zero gradient, ESS/tokens, share of R²VPO effective advantages that flipped sign:\n")
        w("| task | arm | staleness | tokens | clip share (%) | ESS / tokens | eff.-adv. flips (%) | mean ρ |")
        w("|---|---|---|---|---|---|---|---|")
        for t in tasks:
            for a in replay_arms:
                for b, v in summary["tasks"][t]["arms"][a]["buckets"].items():
                    flips = _pct(v["eff_adv_flip_frac"], 2) if plan["arms"][a]["family"] == "r2vpo" else "–"
                    w(f"| {t} | `{a}` | {b} | {_num(v['tokens'], '{:.0f}')} | {_pct(v['clip_frac'])} | "
                      f"{_num(v['ess_frac'], '{:.3f}')} | {flips} | "
                      f"{_num(v['ratio_mean'], '{:.3f}')} |")
        w("")

    w("## \"Eureka\" tokens: positive advantage, ρ beyond PPO's 1 + 0.2\n")
    w("Per arm, mean over steps (and seeds): share of A > 0 tokens with ρ > 1.2; the mean effective advantage "
      "the loss gave them (clipping: 0 where clipped; R²VPO: A − 2λ(ρ − c)); their number over the run and how "
      "many lost their gradient to clipping; the overall clip fraction; R²VPO's sign-flip share.\n")
    w("| task | arm | eureka share (%) | their eff. advantage | eureka tokens / run | gradient zeroed | "
      "clip/frac (%) | eff.-adv. flips (%) |")
    w("|---|---|---|---|---|---|---|---|")
    for t in tasks:
        for a in arms:
            e = summary["tasks"][t]["arms"][a]
            m = e["means"]
            zeroed = e["eureka_zeroed"]
            share = f"{_num(zeroed, '{:.0f}')} ({_pct(_ratio(zeroed, e['eureka_tokens']), 0)}%)" \
                if zeroed is not None else "–"
            w(f"| {t} | `{a}` | {_pct(m['ratio/pos_adv_above_clip_frac'], 2)} | "
              f"{_num(m['ratio/pos_adv_above_clip_eff_adv_mean'], '{:.3f}')} | {_num(e['eureka_tokens'], '{:.0f}')} | "
              f"{share} | {_pct(m['clip/frac'], 2)} | {_pct(m['r2vpo/eff_adv_flip_frac'], 2)} |")
    w("")
    if figures.get("eureka"):
        w(f"![eureka share over training]({rel(figures['eureka'], report_path.parent)})\n")

    w("## Inside R²VPO: λ, ratio variance, ESS, sign flips\n")
    w("Per arm, over steps (then mean over seeds): V̂'s median and mean (a mean far above the median means a "
      "few steps with outlier ratios), λ's mean and last value, the share of steps with λ ≥ `lambda_max`/2 "
      "(one outlier step can send λ to `lambda_max`; the additive dual step then takes it down by only η_λ·δ "
      "per optimiser step), ESS/tokens, "
      "and the largest ρ seen in any step of any seed.\n")
    w("| task | arm | δ (target) | median V̂ | mean V̂ | mean λ | last λ | λ ≥ λ_max/2 (% steps) | ESS / tokens | "
      "largest ρ |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for t in tasks:
        for a in arms:
            if plan["arms"][a]["family"] != "r2vpo":
                continue
            e = summary["tasks"][t]["arms"][a]
            ch = plan["tuning"].get(f"{t}/{a}") or {}
            delta = ch.get("overrides", {}).get("ratio_var_target", s["common"]["ratio_var_target"])
            fixed = plan["arms"][a]["overrides"].get("dual_update") == "none"
            w(f"| {t} | `{a}` | {delta if not fixed else '– (λ fixed)'} | {_num(e['ratio_var_median'], '{:.2e}')} | "
              f"{_num(e['means']['r2vpo/ratio_var'], '{:.2e}')} | {_num(e['means']['r2vpo/lambda'], '{:.3g}')} | "
              f"{_num(e['last']['r2vpo/lambda'], '{:.3g}')} | {_pct(e['lambda_high_frac'], 0)} | "
              f"{_num(e['means']['replay/ess_frac'], '{:.4f}')} | {_num(e['ratio_max_max'], '{:.3g}')} |")
    w("")
    for t in tasks:
        if figures.get(f"r2vpo_{t}"):
            w(f"![R²VPO internals, {t}]({rel(figures[f'r2vpo_{t}'], report_path.parent)})\n")

    w("## Reading the outcome\n")
    w(_reading(summary))
    w("## Cost and reproduction\n")
    w("Per-run wall time (mean over seeds, 1 process): " + "; ".join(
        f"{t}/`{a}` {_num(summary['tasks'][t]['arms'][a]['wall_s']['mean'], '{:.0f}')} s"
        for t in tasks for a in arms) + ".\n")
    w("Each run's directory holds its `config.yaml` (rerun one with `r2vpo train --config <dir>/config.yaml`), "
      "`metrics.jsonl` and `stdout.log`: `<out>/sft/<task>/seed<s>` (warm starts), `<out>/tune/<task>/<arm>/cand<i>`, "
      "`<out>/runs/<task>/<arm>/seed<s>`; `<out>/plan.json` lists them all with their status, `<out>/summary.json` "
      "holds every number of this page.\n")
    kept = ""
    if report_path.exists() and HAND_WRITTEN in report_path.read_text():
        kept = report_path.read_text().split(HAND_WRITTEN, 1)[1]
    w(HAND_WRITTEN + (kept if kept.strip() else "\n\n## Interpretation\n\n(Written by hand after reading the "
                      "numbers above; this section survives `--report-only` rebuilds.)\n"))
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text("\n".join(L).rstrip("\n") + "\n")


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fmt_overrides(d: dict) -> str:
    short = {"clip_eps_low": "ε_low", "clip_eps_high": "ε_high", "ratio_var_target": "δ", "dual_lr": "η_λ",
             "init_lambda": "λ", "arithmetic_max_digits": "digits", "arithmetic_terms": "terms",
             "dataset_size": "train problems"}
    if set(d) == {"clip_eps_low", "clip_eps_high"} and d["clip_eps_low"] == d["clip_eps_high"]:
        return f"ε={d['clip_eps_low']:g}"
    return ", ".join(f"{short.get(k, k)}={v:g}" if isinstance(v, (int, float)) else f"{short.get(k, k)}={v}"
                     for k, v in d.items())


def _reading(summary: dict) -> str:
    """Plain statements of where R²VPO did and did not win, with the diagnostics that bear on why."""
    lines = []
    plan = summary["plan"]
    for t, tt in summary["tasks"].items():
        for name, cmp_ in tt["comparisons"].items():
            a, b = name.split(" vs ")
            if plan["arms"][a]["family"] != "r2vpo" or plan["arms"][b]["family"] != "clip":
                continue
            lines.append(f"- {t}: `{a}` vs `{b}`: {_paired_text(cmp_['late'])}.")
    lines.append("")
    facts = []
    for t, tt in summary["tasks"].items():
        for a, e in tt["arms"].items():
            if plan["arms"][a]["family"] != "r2vpo" or plan["arms"][a]["overrides"].get("dual_update") == "none":
                continue
            ch = plan["tuning"].get(f"{t}/{a}") or {}
            delta = ch.get("overrides", {}).get("ratio_var_target")
            v, lam = e["means"]["r2vpo/ratio_var"], e["means"]["r2vpo/lambda"]
            eureka = e["means"]["ratio/pos_adv_above_clip_frac"]
            if v is not None and lam is not None:
                facts.append(f"- {t}/`{a}`: median V̂ = {e['ratio_var_median']:.2e} (mean {v:.2e}) against δ = "
                             f"{delta}; mean λ = {lam:.3g}, ≥ `lambda_max`/2 in {_pct(e['lambda_high_frac'], 0)}% "
                             f"of steps; largest ρ {_num(e['ratio_max_max'], '{:.3g}')}; {_pct(eureka, 2)}% of "
                             "positive-advantage tokens had ρ > 1.2.")
    lines.append("Diagnostics that bear on the outcome (with ρ ≈ 1 and λ small, R²VPO's gradient is the plain "
                 "policy gradient, and PPO-clip's clip rarely binds, so the two can only differ through the few "
                 "tokens beyond the clip range):\n")
    lines += facts
    lines.append("")
    lines.append("Limits of this study, whatever the numbers say: a 2-layer, 128-wide model; answers of 1-3 tokens "
                 "(the paper's gains come from long reasoning traces, where ratios drift far more); "
                 f"{plan['settings']['steps']} RL steps; {len(plan['seeds'])} seed(s), so only differences above "
                 "~2 standard errors are called; evaluation on "
                 f"{plan['settings']['common']['eval_size']} test problems (one problem = "
                 f"{100 / plan['settings']['common']['eval_size']:.2g} pts).\n")
    return "\n".join(lines)


# ---- figures ------------------------------------------------------------------------------------------
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _step_series(out_dir: Path, plan: dict, task: str, arm: str, key: str):
    """Per-step `key` (rolling mean), averaged over seeds: x (rollouts), mean, std."""
    series = []
    for r in plan["runs"]:
        if r["kind"] == "main" and r["task"] == task and r["arm"] == arm:
            try:
                steps = read_run(out_dir / r["run_dir"])["steps"]
            except (FileNotFoundError, ValueError):
                continue
            pts = [(s["rollouts"], s.get(key)) for s in steps]
            if not any(isinstance(v, (int, float)) for _, v in pts):
                continue
            ys, smoothed = [v if isinstance(v, (int, float)) else math.nan for _, v in pts], []
            for i in range(len(ys)):
                window = [y for y in ys[max(0, i - SMOOTH_STEPS + 1):i + 1] if not math.isnan(y)]
                smoothed.append(statistics.fmean(window) if window else math.nan)
            series.append(([x for x, _ in pts], smoothed))
    if not series:
        return None
    n = min(len(s[0]) for s in series)
    xs = series[0][0][:n]
    cols = [[s[1][i] for s in series] for i in range(n)]
    mean = [statistics.fmean(c) for c in cols]
    std = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in cols]
    return xs, mean, std


def write_figures(summary: dict, out_dir: Path, figures_dir: Path) -> dict:
    plt = _plt()
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
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    paths["accuracy"] = figures_dir / "accuracy_vs_rollouts.png"
    fig.savefig(paths["accuracy"], dpi=110)
    plt.close(fig)

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
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"R²VPO arms, {t} (rolling mean over {SMOOTH_STEPS} steps; band: ±std over seeds)")
        fig.tight_layout()
        paths[f"r2vpo_{t}"] = figures_dir / f"r2vpo_internals_{t}.png"
        fig.savefig(paths[f"r2vpo_{t}"], dpi=110)
        plt.close(fig)

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
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    paths["eureka"] = figures_dir / "eureka_share.png"
    fig.savefig(paths["eureka"], dpi=110)
    plt.close(fig)
    return paths


def build_report(out_dir: Path, report_path: Path, figures_dir: Path) -> dict:
    out_dir = Path(out_dir)
    summary = summarise(out_dir)
    figures = write_figures(summary, out_dir, Path(figures_dir)) if not summary["missing"] or any(
        summary["tasks"][t]["arms"][a]["runs"] for t in summary["tasks"] for a in summary["tasks"][t]["arms"]) else {}
    write_markdown(summary, Path(report_path), figures)
    summary["figures"] = {k: str(v) for k, v in figures.items()}
    summary["report"] = str(report_path)
    (out_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "plan"}, indent=1,
                                                     default=str))
    return summary
