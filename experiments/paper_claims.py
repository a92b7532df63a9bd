"""Check the paper's claims with this package, at toy scale, in ONE command.

    python -m experiments.paper_claims                 # the full study: tuning + 6 arms x 2 tasks x 3 seeds
    python -m experiments.paper_claims --dry-run       # the plan and its estimated wall time, nothing run
    python -m experiments.paper_claims --report-only   # rebuild the report and figures from finished runs
    python -m experiments.paper_claims --scale 4 --jobs 1 --threads 8   # 4x steps and prompts (bigger machine)

The claims (R2VPO_SPEC.md): R²VPO beats the clipping baselines (up to +17% average relative),
needs about half the rollouts to converge, and its re-weighting makes stale replayed data
useful where clipping makes it useless. Every arm starts from the SAME supervised warm start
per (task, seed) (trained once, saved, loaded with `sft_steps=0`) and shares model, data,
split, seeds, sampling, learning rate, mini-batching and rollout budget; only the loss (and
its own tuned knob) and, for the replay arms, the replay buffer differ.

Stages (a small dependency scheduler runs them `--jobs` processes at a time, `--threads`
torch threads each; a finished run is skipped when the command is run again):
  1. warm starts: `sft/<task>/seed<s>` (`steps=0`: SFT + step-0 evaluation, then the model)
  2. tuning: every arm's knob over a 4-value grid, 1 seed (`--tune-seed`), `--tune-steps`
     steps, evaluated on the VALIDATION slice (`eval_split=validation`); the value with the
     best mean validation accuracy over the last 5 evaluations is picked
  3. the study: every (task, arm, seed) with its picked value, evaluated on the TEST slice
  4. the report (experiments/report.py): summary.json, the markdown report, PNG figures,
     all computed from the runs' metrics.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


from experiments.launch import progress_printer, train_once
from experiments.scheduler import schedule, simulate

ROOT = Path(__file__).resolve().parents[1]


# ---- what is compared -----------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    name: str
    title: str
    overrides: dict


TASKS = {
    # The embedded default (configs/tiny_cpu.yaml): "3+5-2=".
    "easy": Task("easy", "3 single-digit terms (a±b±c)",
                 {"arithmetic_max_digits": 1, "arithmetic_terms": 3, "dataset_size": 3000}),
    # One more term: the tiny model's warm start is about half as accurate and RL is slower.
    # (2-digit a±b was measured too: ~4% after SFT and no progress in 80 RL steps, too hard
    # for this model to give a signal; see experiments/README.md.)
    "hard": Task("hard", "4 single-digit terms (a±b±c±d)",
                 {"arithmetic_max_digits": 1, "arithmetic_terms": 4, "dataset_size": 3000}),
}


@dataclass(frozen=True)
class Arm:
    name: str
    title: str
    overrides: dict
    knob: str                 # what tuning varies, in words
    grid: tuple               # candidate override dicts (tuning tries each)
    default: int              # index of the candidate used without tuning
    family: str               # "clip" or "r2vpo"
    replay: bool


REPLAY = {"replay_ratio": 0.5, "max_staleness": 4}


def _eps(e):
    return {"clip_eps_low": e, "clip_eps_high": e}


def _delta(d):
    # η_λ scaled with δ (η_λ·δ = 0.05): the additive dual step η_λ(V̂ − δ) is then the same
    # step relative to δ whatever δ is, so λ can move within a run at every grid point.
    return {"ratio_var_target": d, "dual_lr": round(0.05 / d, 6)}


# Grids: 4 values per arm, the same budget for every arm. Clipping: the usual values around
# the defaults (ε = 0.2; DAPO's ε_high = 0.28). R²VPO: δ bounds V̂, whose scale depends on the
# setting (measured with the default model and data: V̂ ≈ 1e-3 to 3e-3 on-policy with 2
# mini-batches, ≈ 1.6e-2 to 1.8e-2 with replay); each grid spans x4 steps from a δ that binds
# hard to one that is slack (λ → 0: plain policy gradient). Fixed λ: weak to strong penalty.
# The 4th value of each grid (listed last, so earlier runs stay cached) was added after the
# first 3-value tuning picked an edge of the grid for most arms, nearly always the
# conservative one (smallest ε, smallest δ, smallest λ): it extends every grid one step in
# that direction (replay R²VPO arms, whose pick was inside: one step down in δ, for the same
# budget).
_CLIP_GRID = tuple(_eps(e) for e in (0.1, 0.2, 0.3, 0.05))
_DELTA_GRID = tuple(_delta(d) for d in (0.001, 0.004, 0.016, 0.00025))
_DELTA_GRID_REPLAY = tuple(_delta(d) for d in (0.004, 0.016, 0.064, 0.001))
_LAMBDA_GRID = tuple({"init_lambda": v} for v in (1.0, 4.0, 16.0, 0.25))
ARMS = {a.name: a for a in [
    Arm("ppo_clip", "PPO-clip (GRPO), on-policy", {"loss": "ppo_clip"}, "ε (ε_low = ε_high)",
        _CLIP_GRID, 1, "clip", False),
    Arm("clip_higher", "clip-higher (DAPO), on-policy", {"loss": "clip_higher"}, "ε_high (ε_low = 0.2)",
        tuple({"clip_eps_low": 0.2, "clip_eps_high": h} for h in (0.24, 0.28, 0.36, 0.22)), 1, "clip", False),
    Arm("r2vpo", "R²VPO, on-policy", {"loss": "r2vpo"}, "δ (η_λ = 0.05/δ)", _DELTA_GRID, 1, "r2vpo", False),
    Arm("ppo_clip_replay", "PPO-clip + replay (stale data)", {"loss": "ppo_clip", **REPLAY},
        "ε (ε_low = ε_high)", _CLIP_GRID, 1, "clip", True),
    Arm("r2vpo_replay", "R²VPO + replay (stale data)", {"loss": "r2vpo", **REPLAY}, "δ (η_λ = 0.05/δ)",
        _DELTA_GRID_REPLAY, 1, "r2vpo", True),
    Arm("r2vpo_fixed_lambda", "R²VPO, fixed λ (dual_update: none), on-policy",
        {"loss": "r2vpo", "dual_update": "none"}, "λ", _LAMBDA_GRID, 1, "r2vpo", False),
    # Not in the default set: the fixed-λ ablation on the replay setting, and the multiplicative
    # dual update on replay (λ·exp(η_λ(V̂ − δ)/δ): after an outlier step sends λ to lambda_max it
    # comes back down geometrically, where the additive step needs ~lambda_max/(η_λ·δ) steps).
    Arm("r2vpo_replay_fixed_lambda", "R²VPO + replay, fixed λ", {"loss": "r2vpo", "dual_update": "none", **REPLAY},
        "λ", _LAMBDA_GRID, 1, "r2vpo", True),
    Arm("r2vpo_replay_multiplicative", "R²VPO + replay, multiplicative dual update",
        {"loss": "r2vpo", "dual_update": "multiplicative", "dual_lr": 0.5, **REPLAY}, "δ (η_λ = 0.5)",
        tuple({"ratio_var_target": d} for d in (0.004, 0.016, 0.064, 0.001)), 1, "r2vpo", True),
]}
DEFAULT_ARMS = ("ppo_clip", "clip_higher", "r2vpo", "ppo_clip_replay", "r2vpo_replay", "r2vpo_fixed_lambda")

# Identical for every run. Model, data and generation are the embedded default's
# (configs/tiny_cpu.yaml); `updates_per_step: 2` makes the second mini-batch of every step
# off-policy, so clipping has something to clip even without replay.
BASE = {
    "model": "tiny", "dataset": "arithmetic", "data_seed": 0, "eval_size": 400,
    "sft_steps": 300, "sft_lr": 0.003, "sft_batch_size": 64,
    "prompts_per_step": 32, "num_generations": 8, "max_new_tokens": 4, "temperature": 1.0,
    "updates_per_step": 2, "micro_batch_size": 256, "lr": 3e-4,
    "init_lambda": 1.0, "ratio_var_target": 0.05, "dual_lr": 0.5, "replay_ratio": 0.0, "max_staleness": 4,
    "save_every": 0, "keep_checkpoints": 1, "resume": "never", "progress_bar": "off", "log_every": 10,
    "report_to": ["jsonl"],
}
STEPS, TUNE_STEPS, EVALS_PER_RUN, TUNE_SEED = 200, 200, 40, 1000

# Cost model for --dry-run and the printed estimate: seconds of one 1-thread run process
# (CPU time measured with these settings, experiments/README.md); 2 such processes on 2
# quiet cores run at about this speed. Only an estimate: a shared machine is slower.
COST = {"startup": 6.0, "sft_step": 0.035, "rl_step": 0.22, "rl_step_replay_extra": 0.11, "eval_per_100": 0.02}


# ---- runs -------------------------------------------------------------------------------------
@dataclass(eq=False)
class Run:
    kind: str                  # "sft", "tune", "main"
    task: str
    seed: int
    run_dir: Path
    config: dict               # without the tuned candidate (main runs get it at launch)
    arm: str | None = None
    candidate: int | None = None   # tune runs: index into the arm's grid
    deps: list = field(default_factory=list)
    status: str = "pending"    # pending, done, cached, failed, skipped
    wall_s: float = 0.0
    message: str = ""

    @property
    def key(self) -> str:
        return str(self.run_dir)

    def cost(self) -> float:
        c = self.config
        if self.kind == "sft":
            return COST["startup"] + c["sft_steps"] * COST["sft_step"]
        per_step = COST["rl_step"] + COST["rl_step_replay_extra"] * (c.get("replay_ratio", 0) > 0)
        evals = c["steps"] // max(c["eval_every"], 1) + 1
        return COST["startup"] + c["steps"] * per_step * c["prompts_per_step"] / 32 + \
            evals * COST["eval_per_100"] * c["eval_size"] / 100


@dataclass
class Plan:
    out: Path
    tasks: list
    arms: list
    seeds: list
    tune: bool
    sft: dict                  # (task, seed) -> Run
    tuning: dict               # (task, arm) -> [Run]
    main: dict                 # (task, arm, seed) -> Run
    settings: dict
    choices: dict = field(default_factory=dict)   # (task, arm) -> tuning_choice, once its tuning runs finished

    def all_runs(self) -> list:
        return list(self.sft.values()) + [r for runs in self.tuning.values() for r in runs] + list(self.main.values())


def build_plan(args) -> Plan:
    out = Path(args.out)
    tasks, arms = args.tasks, args.arms
    for name in tasks:
        if name not in TASKS:
            raise SystemExit(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    for name in arms:
        if name not in ARMS:
            raise SystemExit(f"unknown arm {name!r}; choose from {sorted(ARMS)}")
    steps = args.steps if args.steps is not None else max(1, round(STEPS * args.scale))
    tune_steps = args.tune_steps if args.tune_steps is not None else max(1, round(TUNE_STEPS * args.scale))
    eval_every = max(1, steps // EVALS_PER_RUN)
    sets = _parse_sets(args.set)
    common = dict(BASE, prompts_per_step=max(1, round(BASE["prompts_per_step"] * args.scale)),
                  num_threads=args.threads, data_seed=args.data_seed)
    common.update(sets)
    seeds = list(range(args.seeds))
    tune = not args.no_tune
    sft, tuning, main = {}, {}, {}
    for task in tasks:
        task_cfg = dict(common, **TASKS[task].overrides)
        task_cfg.update(sets)  # --set wins over the task too
        for seed in seeds + ([args.tune_seed] if tune else []):
            d = out / "sft" / task / f"seed{seed}"
            cfg = dict(task_cfg, seed=seed, steps=0, eval_every=eval_every, eval_split="test", output_dir=str(d))
            sft[(task, seed)] = Run("sft", task, seed, d, cfg)
        for arm in arms:
            if tune:
                warm = sft[(task, args.tune_seed)]
                tuning[(task, arm)] = [
                    Run("tune", task, args.tune_seed, d, _rl_config(task_cfg, arm, warm, tune_steps, "validation", d),
                        arm=arm, candidate=i, deps=[warm])
                    for i in range(len(ARMS[arm].grid))
                    for d in [out / "tune" / task / arm / f"cand{i}"]]
            for seed in seeds:
                d, warm = out / "runs" / task / arm / f"seed{seed}", sft[(task, seed)]
                main[(task, arm, seed)] = Run("main", task, seed, d, _rl_config(task_cfg, arm, warm, steps, "test", d),
                                              arm=arm, deps=[warm] + tuning.get((task, arm), []))
    settings = {"steps": steps, "tune_steps": tune_steps, "eval_every": eval_every,
                "tune_eval_every": max(1, tune_steps // EVALS_PER_RUN), "scale": args.scale, "jobs": args.jobs,
                "threads": args.threads, "tune_seed": args.tune_seed if tune else None, "common": common,
                "command": "python -m experiments.paper_claims " + " ".join(sys.argv[1:])}
    return Plan(out, tasks, arms, seeds, tune, sft, tuning, main, settings)


def _rl_config(task_cfg: dict, arm: str, warm: Run, steps: int, split: str, run_dir: Path) -> dict:
    """An RL run: the task's config, the arm's settings, starting from the warm start `warm`."""
    return dict(task_cfg, **ARMS[arm].overrides, seed=warm.seed, steps=steps, sft_steps=0,
                model=str(warm.run_dir / "final"), eval_split=split,
                eval_every=max(1, steps // EVALS_PER_RUN), output_dir=str(run_dir))


def _parse_sets(items) -> dict:
    """`--set key=value` overrides for every run; the keys the harness or an arm decides are refused."""
    from r2vpo_ascend.trainer.config import parse_overrides
    values = parse_overrides(items or [])
    owned = {"model", "seed", "steps", "eval_split", "eval_every", "output_dir", "data_seed"}
    owned |= {k for arm in ARMS.values() for k in arm.overrides}
    owned |= {k for arm in ARMS.values() for cand in arm.grid for k in cand}
    refused = sorted(set(values) & owned)
    if refused:
        raise SystemExit(f"--set cannot change {refused}: the harness or the arms set them (use --steps, "
                         "--tune-steps, --seeds, --data-seed, or edit ARMS)")
    return values


# ---- tuning: pick on validation ---------------------------------------------------------------
def tuning_choice(plan: Plan, task: str, arm: str) -> dict:
    """The picked candidate of (task, arm): best mean validation accuracy over the last 5
    evaluations of its tuning run (ties: the default candidate if it is among them, else the
    earlier one). Without tuning: the default. Kept in `plan.choices` once every tuning run
    of (task, arm) has finished (has its done.json), so their metrics are read once."""
    from experiments.report import late_accuracy, read_run
    if (task, arm) in plan.choices:
        return plan.choices[(task, arm)]
    spec = ARMS[arm]
    runs = plan.tuning.get((task, arm))
    if not runs:
        return {"index": spec.default, "overrides": spec.grid[spec.default], "scores": None, "tuned": False}
    scores = []
    for run in runs:
        try:
            scores.append(late_accuracy(read_run(run.run_dir)["evals"]))
        except (FileNotFoundError, ValueError, KeyError):
            scores.append(None)
    valid = [(s, i == spec.default, -i) for i, s in enumerate(scores) if s is not None]
    if not valid:
        ran = any((run.run_dir / "done.json").exists() for run in runs)
        raise RuntimeError(f"every tuning run of {task}/{arm} failed; see {runs[0].run_dir.parent}" if ran
                           else f"the tuning runs of {task}/{arm} have not run yet")
    index = -max(valid)[2]
    choice = {"index": index, "overrides": spec.grid[index], "scores": scores, "tuned": True}
    if all((run.run_dir / "done.json").exists() for run in runs):
        plan.choices[(task, arm)] = choice
    return choice


def resolved_config(plan: Plan, run: Run) -> dict:
    cfg = dict(run.config)
    if run.kind == "tune":
        cfg.update(ARMS[run.arm].grid[run.candidate])
    elif run.kind == "main":
        cfg.update(tuning_choice(plan, run.task, run.arm)["overrides"])
    return cfg


# ---- running ------------------------------------------------------------------------------------
def execute_run(plan: Plan, run: Run, *, in_process: bool, keep_models: bool) -> Run:
    """Run `run` with its resolved config (skipped when an identical finished run is on disk)."""
    result = train_once(resolved_config(plan, run), run.run_dir, in_process=in_process,
                        keep_models=keep_models or run.kind == "sft")
    run.status, run.wall_s, run.message = result.status, result.wall_s, result.message
    return run


def write_plan(plan: Plan) -> None:
    plan.out.mkdir(parents=True, exist_ok=True)
    runs = [{"kind": r.kind, "task": r.task, "arm": r.arm, "seed": r.seed, "candidate": r.candidate,
             "run_dir": str(r.run_dir.relative_to(plan.out)), "status": r.status, "wall_s": r.wall_s,
             "message": r.message} for r in plan.all_runs()]
    tuning = {}
    for t in plan.tasks:
        for a in plan.arms:
            try:
                choice = tuning_choice(plan, t, a)
            except RuntimeError as e:  # every candidate failed (or has not run)
                choice = {"index": None, "overrides": {}, "scores": None, "tuned": False, "error": str(e)}
            tuning[f"{t}/{a}"] = dict(choice, grid=list(ARMS[a].grid), knob=ARMS[a].knob)
    meta = {"settings": plan.settings, "tasks": {t: dataclasses.asdict(TASKS[t]) for t in plan.tasks},
            "arms": {a: dataclasses.asdict(ARMS[a]) for a in plan.arms},
            "seeds": plan.seeds, "tune": plan.tune, "runs": runs, "tuning": tuning}
    (plan.out / "plan.json").write_text(json.dumps(meta, indent=1, default=str))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.paper_claims", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="multiply RL steps (study and tuning) and prompts per "
                   "step by this (default %(default)s; <1 for quick checks, >1 on a bigger machine)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per (task, arm): 0..N-1 (default %(default)s)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"from {list(TASKS)} (default: all)")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), help=f"from {list(ARMS)} (default: the six "
                   f"of the issue: {' '.join(DEFAULT_ARMS)})")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results"), help="where runs and the summary go")
    p.add_argument("--report", default=str(ROOT / "docs" / "results.md"), help="markdown report path")
    p.add_argument("--figures", default=str(ROOT / "docs" / "figures"), help="where the PNG figures go")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, each its own process (0: in this "
                   "process, one at a time; default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default %(default)s)")
    p.add_argument("--steps", type=int, default=None, help=f"RL steps per study run (default {STEPS} x scale)")
    p.add_argument("--tune-steps", type=int, default=None, help=f"RL steps per tuning run (default {TUNE_STEPS} x scale)")
    p.add_argument("--no-tune", action="store_true", help="skip tuning: every arm uses its default value")
    p.add_argument("--tune-seed", type=int, default=TUNE_SEED, help="seed of the tuning runs (default %(default)s)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the task's problem pool and split, the same "
                   "for every run (default %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (repeatable), e.g. --set eval_size=200")
    p.add_argument("--keep-models", action="store_true", help="keep each RL run's final model and checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated wall time, run nothing")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    args = p.parse_args(argv)
    plan = build_plan(args)
    runs = plan.all_runs()
    estimate = simulate(runs, args.jobs)
    print(f"[plan] {len(plan.sft)} warm starts, {sum(map(len, plan.tuning.values()))} tuning runs "
          f"({plan.settings['tune_steps']} steps), {len(plan.main)} study runs ({plan.settings['steps']} steps): "
          f"tasks {plan.tasks}, arms {plan.arms}, seeds {plan.seeds}; {max(args.jobs, 1)} at a time, "
          f"{args.threads} thread(s) each; estimated wall time {estimate / 60:.0f} min on 2 quiet CPU cores "
          f"(cost model; a shared or different machine differs)",
          flush=True)
    if args.dry_run:
        return 0
    from experiments import report
    if not args.report_only:
        t0 = time.perf_counter()
        notify = progress_printer(plan, t0)
        schedule(runs, args.jobs, lambda r: execute_run(plan, r, in_process=args.jobs <= 0,
                                                        keep_models=args.keep_models), notify)
        plan.settings["wall_s"] = time.perf_counter() - t0
        plan.settings["estimate_s"] = estimate
        failed = [r for r in runs if r.status in ("failed", "skipped")]
        print(f"[done] {len(runs) - len(failed)}/{len(runs)} runs ok in {plan.settings['wall_s'] / 60:.1f} min", flush=True)
        write_plan(plan)
    else:
        previous = plan.out / "plan.json"
        if previous.exists():  # keep the timing of the run that produced the data
            old = json.loads(previous.read_text())
            plan.settings.update({k: old["settings"][k] for k in ("wall_s", "estimate_s", "command")
                                  if k in old["settings"]})
            statuses = {r["run_dir"]: r for r in old["runs"]}
            for r in runs:
                prev = statuses.get(str(r.run_dir.relative_to(plan.out)))
                if prev:
                    r.status, r.wall_s, r.message = prev["status"], prev["wall_s"], prev["message"]
        write_plan(plan)
    summary = report.build_report(plan.out, Path(args.report), Path(args.figures))
    print(f"[report] {args.report} ; figures in {args.figures} ; summary {plan.out / 'summary.json'}")
    return 0 if summary["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
