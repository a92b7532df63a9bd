"""A study built for sample efficiency (issue 11): does R²VPO, or one of its remedies, need
fewer rollouts than clipping when data are reused (ppo_epochs, replay)?

    python -m experiments.sample_efficiency --stage A --dry-run   # the plan and its cost estimate
    python -m experiments.sample_efficiency --stage A             # run it (finished runs are skipped)
    python -m experiments.sample_efficiency --report-only         # rebuild docs/results_sample_efficiency.md

Stages (issue 11 "A study built for sample efficiency"):
  A  screen: the spec's R²VPO, every remedy alone, and PPO-clip at the setting where R²VPO
     collapsed (lr 3e-4, ppo_epochs 4, replay 0.5), 2 tasks × 2 seeds, test split;
  B  tune at most 4 arms (`--arms`: the best remedy of stage A, the spec, PPO-clip + replay) over
     lr {1e-4, 3e-4} × reuse {(ppo_epochs 1, replay 0), (2, 0.5), (4, 0.5), (1, 0.75)} on the
     validation split, 1 seed (its own warm start), the same budget for each, per task;
  C  final: those arms at their stage-B pick per task (the best mean validation accuracy over the
     run, `tuning_score`), plus clip-higher and GSPO at their loss defaults with PPO-clip's pick,
     5 seeds × 2 tasks, test split; the target gain is fixed from stage B before stage C runs.
Every (task, seed) shares one supervised warm start (trained once, loaded with sft_steps 0), as in
experiments/paper_claims.py, whose Run, execute_run (config-hash caching, one process per run) and
scheduler this module reuses. Runs go one at a time (`--jobs 0`: in this process; default 1: one
subprocess at a time), 1 torch thread each: the machine is shared.

The TRL baseline of stages B/C, arm `trl_grpo` (`trainer: trl`): TRL's GRPOTrainer with its
default loss on the same warm start, data, batch and evaluation (experiments/trl_arm.py; needs the
`trl` package); its stage-B grid is lr {1e-4, 3e-4} × num_iterations {1, 2, 4} (TRL has no replay).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from experiments.paper_claims import BASE, TASKS, Run, execute_run
from experiments.scheduler import schedule, simulate

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "sample_efficiency"
REPORT = ROOT / "docs" / "results_sample_efficiency.md"


# ---- what is compared -------------------------------------------------------------------------
@dataclass(frozen=True)
class SETask:
    name: str
    title: str
    overrides: dict
    tuned_steps: int = 100  # RL steps of a stage-B/C run (stage A: STEPS), unless --steps says otherwise


SE_TASKS = {
    "easy": SETask("easy", TASKS["easy"].title + ", answers of 1–3 tokens", dict(TASKS["easy"].overrides)),
    # The built-in sequence task (r2vpo_ascend/data/sequence_task.py): answers of 15 characters
    # + EOS = 16 tokens, so every ratio of a long response can drift.
    "sequence": SETask("sequence", "each of 8 digits plus one (mod 10), answers of 16 tokens",
                       {"dataset": "sequence", "sequence_length": 8, "dataset_size": 3000, "max_new_tokens": 20,
                        # 25 SFT steps: a partly trained warm start (r2vpo_ascend/data/sequence_task.py)
                        "sft_steps": 25},
                     # Stage A: every R²VPO arm was at 100% by 5,760-6,400 rollouts (50 steps) of its 100:
                     # stages B and C stop at 60 steps (7,680 rollouts), the compute after saturation measures nothing.
                     tuned_steps=60),
}

# The stage-A setting: where the spec's R²VPO collapsed (lr 3e-4, 4 passes, replay 0.5).
REUSE_A = {"lr": 3e-4, "ppo_epochs": 4, "updates_per_step": 1, "replay_ratio": 0.5, "max_staleness": 4}
# δ and η_λ of the paper-claims study's R²VPO default (δ = 0.016 with η_λ = 0.05/δ).
R2VPO_BASE = {"loss": "r2vpo", "ratio_var_target": 0.016, "dual_lr": round(0.05 / 0.016, 6)}

ARMS = {  # name -> (title, overrides); every remedy alone on top of the spec's R²VPO
    "spec": ("R²VPO as specified (R2VPO_SPEC.md)", dict(R2VPO_BASE)),
    "huber": ("+ Huber penalty (κ 0.5)", dict(R2VPO_BASE, variance_penalty="huber", penalty_huber_kappa=0.5)),
    "tis": ("+ truncated IS weights (C 2)", dict(R2VPO_BASE, ratio_grad_cap=2.0)),
    "winsor": ("+ winsorised dual V̂ (κ 1)", dict(R2VPO_BASE, dual_variance="winsorized", dual_variance_clip=1.0)),
    "m2": ("+ log-ratio second moment for the dual step (M2PO)", dict(R2VPO_BASE, dual_variance="log_ratio")),
    "normalized": ("+ normalised dual step (η_λ 0.05)", dict(R2VPO_BASE, dual_update="normalized", dual_lr=0.05)),
    "pid": ("+ PID Lagrangian (K_I 0.05, K_P 1, K_D 0)",
            dict(R2VPO_BASE, dual_update="pid", dual_lr=0.05, dual_kp=1.0, dual_kd=0.0)),
    "sequence_ratio": ("+ sequence-level ratios (GSPO-style)", dict(R2VPO_BASE, ratio_level="sequence")),
    "ppo_clip": ("PPO-clip (ε 0.2)", {"loss": "ppo_clip"}),
    "clip_higher": ("clip-higher (DAPO defaults)", {"loss": "clip_higher"}),
    "gspo": ("GSPO (paper defaults)", {"loss": "gspo"}),
    "trl_grpo": ("TRL 1.16 GRPOTrainer (its default loss)", {"trainer": "trl"}),
}
# Stage C adds these at their loss defaults (ε), with PPO-clip's stage-B lr and reuse: same budget and reuse.
ARMS_AT_DEFAULTS = ("clip_higher", "gspo")
STAGE_A_ARMS = ("spec", "huber", "tis", "winsor", "m2", "normalized", "pid", "sequence_ratio", "ppo_clip")
LRS_B = (1e-4, 3e-4)
REUSE_B = ({"ppo_epochs": 1, "replay_ratio": 0.0}, {"ppo_epochs": 2, "replay_ratio": 0.5},
           {"ppo_epochs": 4, "replay_ratio": 0.5}, {"ppo_epochs": 1, "replay_ratio": 0.75})
TRL_ITERATIONS_B = (1, 2, 4)  # the TRL arm's reuse axis in stage B (its `num_iterations`)
SEEDS = {"A": 2, "B": 1, "C": 5}
TUNE_SEED = 1000  # stage B: its own warm start, so stage C's seeds are untouched by tuning

# Identical for every run (model, SFT recipe, batch as experiments/paper_claims.py).
SE_BASE = dict(BASE, prompts_per_step=16, updates_per_step=1, eval_size=200, micro_batch_size=256)
STEPS = 100          # RL steps per run: 100 × 16 × 8 = 12,800 fresh rollouts
EVALS_PER_RUN = 20
# Seconds of one 1-thread run process with another beside it (2 quiet cores), for --dry-run.
COST = {"startup": 8.0, "sft_step": 0.1, "eval_per_100": 0.5,
        # per RL step at 16 prompts × 8: generation and scoring, and one pass over 128 samples (stage A's
        # measured wall times, 2 runs at a time: easy 58 s, sequence 205 s for 100 steps of 8 passes)
        "rl_step": {"easy": 0.06, "sequence": 0.27}, "rl_pass": {"easy": 0.04, "sequence": 0.19},
        "trl_pass": 1.9}  # TRL's time per completion per pass relative to ours (measured, experiments/trl_arm.py)


class SERun(Run):
    """A paper-claims Run whose RL kind ("screen", "tune_b", "final") passes its config unchanged
    through execute_run (no paper-claims tuning lookup), with this study's cost model."""

    def cost(self) -> float:
        c = self.config
        if self.kind == "sft":
            return COST["startup"] + c["sft_steps"] * COST["sft_step"]
        passes = c.get("ppo_epochs", 1) * (1 + c.get("replay_ratio", 0.0) / (1 - c.get("replay_ratio", 0.0)))
        if c.get("trainer") == "trl":  # TRL: num_iterations optimiser steps on each generation batch
            passes = c.get("num_iterations", 1) * COST["trl_pass"]
        evals = c["steps"] // max(c["eval_every"], 1) + 1
        task = self.task if self.task in COST["rl_step"] else "sequence"
        return COST["startup"] + c["steps"] * (COST["rl_step"][task] + COST["rl_pass"][task] * passes) * \
            c["prompts_per_step"] / 16 + evals * COST["eval_per_100"] * c["eval_size"] / 100


# ---- the plan ---------------------------------------------------------------------------------
def _warm(out: Path, task: str, seed: int, common: dict, eval_every: int) -> SERun:
    d = out / "sft" / task / f"seed{seed}"
    cfg = dict(common, **SE_TASKS[task].overrides, seed=seed, steps=0, eval_every=eval_every, eval_split="test",
               output_dir=str(d))
    return SERun("sft", task, seed, d, cfg)


def _rl(kind: str, out: Path, warm: SERun, arm: str, overrides: dict, steps: int, split: str, name: str) -> SERun:
    d = out / kind / warm.task / name / f"seed{warm.seed}"
    cfg = dict(warm.config, **ARMS[arm][1], **overrides, seed=warm.seed, steps=steps, sft_steps=0,
               model=str(warm.run_dir / "final"), eval_split=split, eval_every=max(1, steps // EVALS_PER_RUN),
               output_dir=str(d))
    return SERun(kind, warm.task, warm.seed, d, cfg, arm=name, deps=[warm])


def build_plan(stage: str, tasks: list, arms: list, seeds: int | None, steps: int | None, out: Path,
               picks: dict | None = None) -> list[SERun]:
    """The runs of one stage, in the order they run (seed-major: a partial stage still has
    every arm on the first seeds). ``picks`` (stage C): task -> arm -> its stage-B overrides."""
    common = dict(SE_BASE, num_threads=1, data_seed=0)
    eval_every = max(1, STEPS // EVALS_PER_RUN)  # the warm start's (its config, so its cache key, is stage-independent)
    n_seeds = SEEDS[stage] if seeds is None else seeds
    seed_list = [TUNE_SEED] if stage == "B" else list(range(n_seeds))
    warms = {(t, s): _warm(out, t, s, common, eval_every) for s in seed_list for t in tasks}
    runs: list[SERun] = []
    for seed in seed_list:
        for task in tasks:
            warm = warms[(task, seed)]
            runs.append(warm)
            task_steps = steps or (STEPS if stage == "A" else SE_TASKS[task].tuned_steps)
            for arm in arms:
                if stage == "A":
                    runs.append(_rl("screen", out, warm, arm, REUSE_A, task_steps, "test", arm))
                elif stage == "B":
                    for suffix, overrides in tune_grid(arm):
                        runs.append(_rl("tune_b", out, warm, arm, overrides, task_steps, "validation",
                                        f"{arm}/{suffix}"))
                else:
                    chosen = (picks or {}).get(task, {}).get(arm, REUSE_A)
                    runs.append(_rl("final", out, warm, arm, chosen, task_steps, "test", arm))
    return runs


def trl_tune_grid() -> list[tuple[str, dict]]:
    """The TRL arm's stage-B candidates: its data reuse is num_iterations (PPO epochs), no replay."""
    return [(f"lr{lr:g}_i{k}", {"lr": lr, "num_iterations": k}) for lr in LRS_B for k in TRL_ITERATIONS_B]


def tune_grid(arm: str) -> list[tuple[str, dict]]:
    """Stage B's candidates of one arm: (run-name suffix, overrides), the same grid for every arm
    of ours; the TRL arm has its own (`trl_tune_grid`)."""
    if ARMS[arm][1].get("trainer") == "trl":
        return trl_tune_grid()
    return [(f"lr{lr:g}_e{reuse['ppo_epochs']}_r{reuse['replay_ratio']:g}", dict(reuse, lr=lr))
            for lr in LRS_B for reuse in REUSE_B]


def tuning_score(evals: list) -> float:
    """Stage B's criterion: the mean validation accuracy over the run's evaluations after step 0
    (the area under the learning curve ÷ the budget). It rewards reaching a level early, which is
    what "rollouts to target" measures; late accuracy alone would pick a slow setting that ends high."""
    accs = [a for step, _, a in evals if step > 0]
    if not accs:
        raise ValueError("no evaluation after step 0")
    return sum(accs) / len(accs)


def stage_b_scores(out: Path, task: str, arm: str) -> dict:
    """suffix -> {"overrides", "score", "gain"} of every finished stage-B run of `arm` on `task`."""
    from experiments.report_data import late_accuracy, read_run_cached  # picks and target gain read the same runs
    scores = {}
    for suffix, overrides in tune_grid(arm):
        d = out / "tune_b" / task / arm / suffix / f"seed{TUNE_SEED}"
        done = d / "done.json"
        if not done.exists() or json.loads(done.read_text()).get("rc") != 0:
            continue
        evals = read_run_cached(d)["evals"]
        scores[suffix] = {"overrides": overrides, "score": tuning_score(evals),
                          "gain": late_accuracy(evals) - evals[0][2]}
    return scores


def stage_b_picks(out: Path, task: str, arms: list) -> dict:
    """arm -> the stage-B overrides with the best tuning score on `task` (arms with no finished
    stage-B run are left out)."""
    picks = {}
    for arm in arms:
        scores = stage_b_scores(out, task, arm)
        if scores:
            picks[arm] = max(scores.values(), key=lambda v: v["score"])["overrides"]
    return picks


def stage_b_target_gain(out: Path, task: str, arms: list) -> float | None:
    """Half the largest validation gain (late − warm start) of any stage-B run on `task`: stage C's
    target is each seed's warm start + this, fixed before stage C runs (issue 11 item 4)."""
    gains = [v["gain"] for arm in arms for v in stage_b_scores(out, task, arm).values()]
    return max(gains) / 2 if gains and max(gains) > 0 else None


def write_plan(out: Path, stage: str, runs: list[SERun], command: str, extra: dict | None = None) -> None:
    """`<out>/plan_<stage>.json`: what the stage holds and each run's status (merged with earlier).
    `extra` goes into its "setting"; a value an earlier command recorded there wins (stage C's
    target gains are fixed when stage C is first planned)."""
    path = out / f"plan_{stage}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    setting = {"base": SE_BASE, "reuse_A": REUSE_A, "r2vpo": R2VPO_BASE, **(extra or {})}
    for key, value in old.get("setting", {}).items():
        if key in (extra or {}) and isinstance(value, dict):
            setting[key] = {**setting[key], **{k: v for k, v in value.items() if v is not None}}
    done = {r["run_dir"]: r for r in old.get("runs", [])}
    rows = []
    for r in runs:
        rel = str(r.run_dir.relative_to(out))
        row = {"kind": r.kind, "task": r.task, "arm": r.arm, "seed": r.seed, "run_dir": rel, "status": r.status,
               "wall_s": r.wall_s, "message": r.message}
        if r.status == "pending" and rel in done:
            row.update({k: done[rel][k] for k in ("status", "wall_s", "message")})
        if (r.run_dir / "done.json").exists() and row["status"] == "pending":
            row["status"] = "done" if json.loads((r.run_dir / "done.json").read_text()).get("rc") == 0 else "failed"
        rows.append(row)
    # runs of the stage planned by an earlier command (other --tasks/--seeds) stay listed
    listed = {row["run_dir"] for row in rows}
    rows += [row for rel, row in done.items() if rel not in listed]
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stage": stage, "command": command, "runs": rows,
                                "arms": {a: ARMS[a][0] for a in sorted({r["arm"].split("/")[0] for r in rows if r["arm"]})},
                                "tasks": {t: SE_TASKS[t].title for t in sorted({row["task"] for row in rows})},
                                "setting": setting},
                               indent=1, default=str))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.sample_efficiency", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("A", "B", "C"), default="A")
    p.add_argument("--tasks", nargs="+", default=list(SE_TASKS), choices=list(SE_TASKS))
    p.add_argument("--arms", nargs="+", default=None, help="default: stage A every arm of STAGE_A_ARMS; B and C "
                   "need the arms to tune (at most 4), C adds clip_higher and gspo")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: A 2, C 5; B uses its own seed)")
    p.add_argument("--steps", type=int, default=None, help=f"RL steps per run (default: stage A {STEPS}; stages B "
                   "and C each task's tuned_steps: " + ", ".join(f"{t.name} {t.tuned_steps}" for t in SE_TASKS.values())
                   + ")")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--report", default=str(REPORT))
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each a subprocess (0: in this process)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its cost estimate, run nothing")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    args = p.parse_args(argv)
    out = Path(args.out)
    arms = args.arms or (list(STAGE_A_ARMS) if args.stage == "A" else None)
    if arms is None:
        raise SystemExit(f"--stage {args.stage} needs --arms (at most 4 of {sorted(ARMS)})")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; choose from {sorted(ARMS)}")
    if args.stage == "B" and len(arms) > 4:
        raise SystemExit("stage B tunes at most 4 arms")
    picks, extra = None, None
    if args.stage == "C":
        picks = {t: stage_b_picks(out, t, arms) for t in args.tasks}
        extra = {"target_gain": {t: stage_b_target_gain(out, t, arms) for t in args.tasks}, "picks": picks}
        missing = [(t, a) for t in args.tasks for a in arms if a not in picks[t]]
        if missing and not (args.dry_run or args.report_only):
            raise SystemExit(f"stage C needs stage B's picks; none yet for {missing}")
        for t in args.tasks:
            if "ppo_clip" in picks[t]:
                picks[t].update({a: picks[t]["ppo_clip"] for a in ARMS_AT_DEFAULTS})
        arms = arms + [a for a in ARMS_AT_DEFAULTS if a not in arms]
    runs = build_plan(args.stage, args.tasks, arms, args.seeds, args.steps, out, picks)
    estimate = simulate(runs, max(args.jobs, 1))
    rl = [r for r in runs if r.kind != "sft"]
    print(f"[plan] stage {args.stage}: {len(runs) - len(rl)} warm starts, {len(rl)} RL runs "
          f"({args.steps or 'default'} steps); "
          f"tasks {args.tasks}, arms {arms}; estimated {estimate / 3600:.1f} h one at a time "
          f"(cost model; finished runs are skipped, so a resumed stage takes less)", flush=True)
    command = "python -m experiments.sample_efficiency " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.dry_run:
        return 0
    if not args.report_only:
        def notify(run: SERun) -> None:
            print(f"[{run.status:7s}] {run.kind} {run.task} {run.arm or ''} seed{run.seed} {run.wall_s:.0f}s "
                  f"{run.message}", flush=True)
            write_plan(out, args.stage, runs, command, extra)  # after every run: an interrupted stage keeps its record
        schedule(runs, args.jobs, lambda r: execute_run(None, r, in_process=args.jobs <= 0, keep_models=False),
                 notify)
        write_plan(out, args.stage, runs, command, extra)
    # --report-only reads the plans as the stages wrote them (its own arms or seeds would rewrite them)
    from experiments.sample_efficiency_report import build_report
    build_report(out, Path(args.report))
    print(f"[report] {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
