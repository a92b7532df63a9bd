"""Trainer throughput: our `R2VPOTrainer` vs TRL's `GRPOTrainer`, side by side on one machine.

    python benchmarks/bench_vs_trl.py                                  # 4x4x16 and 8x8x64, 5 rounds
    python benchmarks/bench_vs_trl.py --settings 8x8x64 --rounds 3 --threads 1
    python benchmarks/bench_vs_trl.py --profile 8x8x64 --threads 1 --out benchmarks/results/vs_trl_profile.json
                                                                       # where our step's time goes, per phase

Needs TRL: `pip install -c constraints-cpu.txt trl==1.16.0` (keeps the CPU torch).

Both trainers get the same thing:
- model: `build_tiny_model(build_char_tokenizer(), seed=--seed)` (random init, fp32), built
  fresh in each case's process; the same torch thread count (`--threads`);
- data: the built-in arithmetic prompts (`config_records`, the default arithmetic config), and
  the same exact-match `ArithmeticReward` on the `answer` column;
- a setting PxGxL: P prompts per optimiser step, G completions per prompt, and exactly L new
  tokens per completion: `min_new_tokens = max_new_tokens = L` on both sides (ours through
  the model's `generation_config`, which `generate` falls back on; TRL through
  `GRPOConfig.generation_kwargs`), so EOS cannot end a completion early and both generate
  P·G·L tokens (the lengths are checked and recorded);
- HF `generate` with sampling at temperature 1, no top-k/top-p;
- one optimiser step per RL step on all P·G completions in one micro-batch: ours
  `updates_per_step=1, micro_batch_size=P·G`; TRL `per_device_train_batch_size=P·G,
  num_generations=G, steps_per_generation=1, gradient_accumulation_steps=1,
  num_iterations=1`; no reference model (ours `kl_coef=0`, TRL `beta=0`); token-mean
  loss (ours `loss_agg=token-mean`, TRL `loss_type="dapo"`), ε = 0.2, group-std advantages,
  fused AdamW (ours on the CPU; TRL: HF Trainer's default `adamw_torch_fused`), the same
  constant learning rate, grad-norm clip 1.0, no gradient checkpointing (TRL's default turns
  it on, which recomputes the forward in the backward: arm `trl_grpo_gc` keeps that default,
  for reference; `trl_grpo` turns it off so both do the same work); no logging, evaluation,
  or checkpoints (ours `sft_steps=0, eval_every=0, save_every=0, log_every=0`; TRL
  `logging_strategy/save_strategy="no"`, `report_to=[]`, `use_vllm=False`, fp32, `use_cpu`).

Each (round, setting, arm) runs in a fresh spawned process: `--warmup` steps, then `--steps`
measured steps. The arms of a round run one after the other, in a rotated order from round to
round, so they share the background load. A step's time is the interval between consecutive
step ends (the whole loop, as a user sees it); its split: generation (ours:
`perf/time_generate_s` from metrics.jsonl; TRL: its `_generate_single_turn`), update (ours:
`perf/time_update_s`; TRL: from the end of `_prepare_inputs` — generation, rewards,
advantages — to `on_step_end`, i.e. the loss forward, backward and optimiser step), and the
rest (rewards, advantages, bookkeeping, logging); "in-step" is the step alone (ours:
`_run_step`; TRL: `on_step_begin` to `on_step_end`). Reported: medians over all measured steps
of all rounds, the median of the per-round medians, and CPU seconds per step (steadier on a
shared machine). samples/s = P·G / median step time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, median, run_isolated, write_results  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "vs_trl_cpu.json"
ARMS = ("ours_ppo_clip", "trl_grpo", "ours_r2vpo", "trl_grpo_gc")
LR = 1e-5


def _records(seed: int) -> list[dict]:
    """The built-in arithmetic training prompts (default arithmetic config)."""
    from r2vpo_ascend import R2VPOConfig
    from r2vpo_ascend.models.tokenizer import build_char_tokenizer
    from r2vpo_ascend.trainer.setup import config_records

    return config_records(R2VPOConfig(seed=seed, eval_every=0), build_char_tokenizer(), split="train")


def _model(seed: int):
    from r2vpo_ascend.models.tiny import build_tiny_model
    from r2vpo_ascend.models.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed)
    return model, tokenizer


def run_ours(loss: str, prompts: int, gens: int, length: int, warmup: int, steps: int, threads: int, seed: int) -> dict:
    """Our trainer, in this (fresh) process: per-step times of steps warmup+1 .. warmup+steps."""
    import json

    import torch

    from r2vpo_ascend import R2VPOConfig, R2VPOTrainer
    from r2vpo_ascend.rewards.arithmetic import ArithmeticReward

    torch.set_num_threads(threads)
    model, tokenizer = _model(seed)
    model.generation_config.min_new_tokens = length  # exactly `length` tokens: EOS is masked until then
    out = tempfile.mkdtemp(prefix="bench_ours_")
    config = R2VPOConfig(
        loss=loss, prompts_per_step=prompts, num_generations=gens, max_new_tokens=length, temperature=1.0,
        updates_per_step=1, micro_batch_size=prompts * gens, lr=LR, lr_scheduler="constant", max_grad_norm=1.0,
        kl_coef=0.0, loss_agg="token-mean", replay_ratio=0.0, sft_steps=0, eval_every=0, save_every=0,
        log_every=0, progress_bar="off", resume="never", num_threads=threads, seed=seed, output_dir=out,
        steps=warmup + steps + 1,  # the last step writes the final checkpoint: not measured
    )
    trainer = R2VPOTrainer(model=model, tokenizer=tokenizer, reward_fn=ArithmeticReward(),
                           train_dataset=_records(seed), config=config)
    ends: list[tuple[float, float]] = []
    begins: list[float] = []
    run_step = trainer._run_step

    def timed_step(step: int) -> None:
        begins.append(time.perf_counter())
        run_step(step)
        ends.append((time.perf_counter(), time.process_time()))

    trainer._run_step = timed_step
    trainer.train()
    lines = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r for r in lines}
    measured = range(warmup + 1, warmup + steps + 1)  # step s ends at ends[s-1]
    wall = [ends[s - 1][0] - ends[s - 2][0] for s in measured]
    cpu = [ends[s - 1][1] - ends[s - 2][1] for s in measured]
    gen = [by_step[s]["perf/time_generate_s"] for s in measured]
    update = [by_step[s]["perf/time_update_s"] for s in measured]
    lengths = [by_step[s]["response_length/mean"] for s in measured]
    inner = [ends[s - 1][0] - begins[s - 1] for s in measured]
    return _summary(wall, cpu, gen, update, min(lengths), max(lengths), torch.get_num_threads(), inner)


def run_trl(prompts: int, gens: int, length: int, warmup: int, steps: int, threads: int, seed: int,
            gradient_checkpointing: bool = False) -> dict:
    """TRL's GRPOTrainer with the equivalent settings, in this (fresh) process."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r2vpo_ascend.rewards.arithmetic import ArithmeticReward

    torch.set_num_threads(threads)
    model, tokenizer = _model(seed)
    reward = ArithmeticReward()

    def arithmetic(prompts, completions, answer, **columns):
        return reward(prompts, completions, answer=answer)

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_trl_"), per_device_train_batch_size=prompts * gens,
        num_generations=gens, steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1,
        max_completion_length=length, generation_kwargs={"min_new_tokens": length}, temperature=1.0, top_p=1.0,
        top_k=0, beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group", learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,  # optim: HF's default
        logging_strategy="no", save_strategy="no", report_to=[], use_vllm=False, bf16=False, fp16=False,
        use_cpu=True, seed=seed, disable_tqdm=True, dataloader_num_workers=0, max_steps=warmup + steps + 1,
        gradient_checkpointing=gradient_checkpointing,  # TRL's default is True: a second forward in the backward
    )
    begins: list[float] = []
    ends: list[tuple[float, float]] = []
    prepared: list[float] = []
    gen_times: list[float] = []
    lengths: list[int] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            ends.append((time.perf_counter(), time.process_time()))

    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=arithmetic, args=args,
                          train_dataset=Dataset.from_list(_records(seed)), callbacks=[StepTimes()])
    trainer.remove_callback(PrinterCallback)  # the end-of-training summary print
    generate, prepare = trainer._generate_single_turn, trainer._prepare_inputs

    def timed_generate(*a, **k):
        start = time.perf_counter()
        out = generate(*a, **k)
        gen_times.append(time.perf_counter() - start)
        lengths.extend(len(ids) for ids in out[0])
        return out

    def timed_prepare(*a, **k):
        out = prepare(*a, **k)
        prepared.append(time.perf_counter())
        return out

    trainer._generate_single_turn, trainer._prepare_inputs = timed_generate, timed_prepare
    trainer.train()
    measured = range(warmup, warmup + steps)  # 0-based step index
    wall = [ends[i][0] - ends[i - 1][0] for i in measured]
    cpu = [ends[i][1] - ends[i - 1][1] for i in measured]
    gen = [gen_times[i] for i in measured]
    update = [ends[i][0] - prepared[i] for i in measured]
    inner = [ends[i][0] - begins[i] for i in measured]
    result = _summary(wall, cpu, gen, update, min(lengths), max(lengths), torch.get_num_threads(), inner)
    result["optimizer"] = str(args.optim)
    result["gradient_checkpointing"] = args.gradient_checkpointing
    return result


def _summary(wall, cpu, gen, update, min_len, max_len, threads, inner) -> dict:
    """step_s: interval between consecutive step ends; step_inner_s: step begin to end (ours:
    `_run_step`; TRL: `on_step_begin` to `on_step_end`), i.e. without the loop around it."""
    return {"step_s": wall, "step_inner_s": inner, "cpu_s": cpu, "generate_s": gen, "update_s": update,
            "other_s": [w - g - u for w, g, u in zip(wall, gen, update)],
            "completion_length_min": min_len, "completion_length_max": max_len, "torch_threads": threads}


def run_arm(arm: str, prompts: int, gens: int, length: int, warmup: int, steps: int, threads: int, seed: int) -> dict:
    if arm in ("trl_grpo", "trl_grpo_gc"):
        return run_trl(prompts, gens, length, warmup, steps, threads, seed, gradient_checkpointing=arm == "trl_grpo_gc")
    return run_ours(arm.removeprefix("ours_"), prompts, gens, length, warmup, steps, threads, seed)


# Phases of our step, timed by wrapping the callables that implement them (nested phases are
# subtracted from their parent, so the rows add up to the step).
_PHASES = (
    ("generate: model forward (decode steps)", "rollout: HF generate"),
    ("rollout: HF generate", None),
    ("rewards: decode + reward fn", None),
    ("update: policy forward (decoder + log-prob head)", None),
    ("update: loss + metrics", None),
    ("update: backward", None),
    ("update: grad clip + AdamW step", None),
    ("update: replay diagnostics", None),
)


def profile_ours(loss: str, prompts: int, gens: int, length: int, warmup: int, steps: int, threads: int, seed: int,
                 cprofile_top: int) -> dict:
    """Where our step's time goes: wall and CPU seconds per phase (and, with cprofile_top > 0,
    a cProfile listing of a second run of the same steps)."""
    import cProfile
    import io
    import pstats

    import torch

    import r2vpo_ascend.trainer.policy_update as policy_update
    from r2vpo_ascend import R2VPOConfig, R2VPOTrainer
    from r2vpo_ascend.trainer.loggers import MetricsLogger

    torch.set_num_threads(threads)
    model, tokenizer = _model(seed)
    model.generation_config.min_new_tokens = length
    config = R2VPOConfig(loss=loss, prompts_per_step=prompts, num_generations=gens, max_new_tokens=length,
                         micro_batch_size=prompts * gens, lr=LR, sft_steps=0, eval_every=0, save_every=0, log_every=0,
                         progress_bar="off", resume="never", num_threads=threads, seed=seed,
                         steps=warmup + 2 * steps + 1, output_dir=tempfile.mkdtemp(prefix="bench_prof_"))
    trainer = R2VPOTrainer(model=model, tokenizer=tokenizer, train_dataset=_records(seed), config=config)
    trainer.logger = MetricsLogger(trainer.output_dir, config=config.to_dict(), progress_bar="off")
    for step in range(1, warmup + 1):
        trainer._run_step(step)

    totals = {name: [0.0, 0.0] for name, _ in _PHASES}
    parents = dict(_PHASES)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dw, dc = time.perf_counter() - wall, time.process_time() - cpu
                totals[name][0] += dw
                totals[name][1] += dc
                if parents[name]:
                    totals[parents[name]][0] -= dw
                    totals[parents[name]][1] -= dc
        return wrapper

    engine = trainer.engine
    model.forward = timed("generate: model forward (decode steps)", model.forward)
    trainer.rollout_engine.generate = timed("rollout: HF generate", trainer.rollout_engine.generate)
    trainer.score = timed("rewards: decode + reward fn", trainer.score)
    engine.log_probs = timed("update: policy forward (decoder + log-prob head)", engine.log_probs)
    engine.backward = timed("update: backward", engine.backward)
    engine.step = timed("update: grad clip + AdamW step", engine.step)
    saved = policy_update.compute_policy_loss, policy_update.replay_metrics
    policy_update.compute_policy_loss = timed("update: loss + metrics", saved[0])
    policy_update.replay_metrics = timed("update: replay diagnostics", saved[1])
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(warmup + 1, warmup + steps + 1):
        trainer._run_step(step)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    policy_update.compute_policy_loss, policy_update.replay_metrics = saved
    phases = [{"phase": name, "wall_s": w / steps, "cpu_s": c / steps} for name, (w, c) in totals.items()]
    phases.append({"phase": "rest of the step (tokenise, advantages, replay buffer, metrics, log line)",
                   "wall_s": (wall - sum(w for w, _ in totals.values())) / steps,
                   "cpu_s": (cpu - sum(c for _, c in totals.values())) / steps})
    result = {"setting": f"{prompts}x{gens}x{length}", "loss": loss, "threads": threads, "steps": steps,
              "step_wall_s": wall / steps, "step_cpu_s": cpu / steps, "phases": phases}
    if cprofile_top > 0:
        profiler = cProfile.Profile()
        profiler.enable()
        for step in range(warmup + steps + 1, warmup + 2 * steps + 1):
            trainer._run_step(step)
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(cprofile_top)
        stats.sort_stats("tottime").print_stats(cprofile_top)
        result["cprofile"] = text.getvalue()
    trainer.logger.close()
    return result


def _phase_table(result: dict) -> str:
    out = [f"our step at {result['setting']}, loss={result['loss']}, {result['threads']} thread(s), "
           f"{result['steps']} steps: {result['step_wall_s']:.4f} s wall, {result['step_cpu_s']:.4f} s CPU per step",
           "| phase | wall s/step | CPU s/step | share of CPU |", "|---|---|---|---|"]
    for p in result["phases"]:
        out.append(f"| {p['phase']} | {p['wall_s']:.4f} | {p['cpu_s']:.4f} | {p['cpu_s'] / result['step_cpu_s']:.1%} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", type=_settings, default=_settings("4x4x16,8x8x64"),
                        help="PROMPTSxGENERATIONSxTOKENS list (comma-separated); default 4x4x16,8x8x64")
    parser.add_argument("--arms", type=_str_list, default=list(ARMS), help=f"subset of {','.join(ARMS)}")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all arms (a fresh process per case)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps first in each process (>= 1)")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per process")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, the same for every arm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=_settings, default=None,
                        help="instead of the comparison: where our trainer's step time goes (loss --profile-loss) "
                             "at this setting, per phase; JSON to --out")
    parser.add_argument("--profile-loss", default="ppo_clip")
    parser.add_argument("--cprofile", type=int, default=0, help="with --profile: also print the top N cProfile entries")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (a step's time is measured from the end of the one before)")
    if args.profile:
        (p, g, length), = args.profile
        result = run_isolated(profile_ours, args.profile_loss, p, g, length, args.warmup, args.steps, args.threads,
                              args.seed, args.cprofile)
        print(result.pop("cprofile", ""))
        print(_phase_table(result))
        payload = {"benchmark": "where our trainer's step time goes", "command": " ".join([sys.executable, *sys.argv]),
                   "machine": machine_info(), "versions": _versions(), "load_1m_after": os.getloadavg()[0], **result}
        print(f"wrote {write_results(args.out, payload)}")
        return payload

    info = machine_info()
    print(f"{info['cpu_model']}, {info['cpu_usable_cores']} usable cores, torch {info['torch']}, "
          f"{args.threads} threads, load {os.getloadavg()[0]:.2f}", flush=True)
    runs: list[dict] = []
    for round_index in range(args.rounds):
        for p, g, length in args.settings:
            shift = round_index % len(args.arms)
            for arm in args.arms[shift:] + args.arms[:shift]:  # rotate who goes first
                load_before = os.getloadavg()[0]
                result = run_isolated(run_arm, arm, p, g, length, args.warmup, args.steps, args.threads, args.seed)
                result.update(arm=arm, setting=f"{p}x{g}x{length}", round=round_index, load_1m_before=load_before,
                              load_1m_after=os.getloadavg()[0])
                runs.append(result)
                print(f"  round {round_index} {p}x{g}x{length} {arm:14s} {median(result['step_s']):.4f} s/step "
                      f"(gen {median(result['generate_s']):.4f}, update {median(result['update_s']):.4f}) "
                      f"load {load_before:.2f}", flush=True)
    summary = _summarise(runs, args)
    payload = {"benchmark": "trainer throughput vs TRL GRPOTrainer", "command": " ".join([sys.executable, *sys.argv]),
               "machine": info, "versions": _versions(), "args": {**vars(args), "settings": [list(s) for s in args.settings]},
               "learning_rate": LR, "summary": summary, "runs": runs,
               "load_1m_range": [min(r["load_1m_before"] for r in runs), max(r["load_1m_after"] for r in runs)]}
    path = write_results(args.out, payload)
    print(_table(summary))
    print(f"wrote {path}")
    return payload


def _summarise(runs: list[dict], args) -> list[dict]:
    rows = []
    for p, g, length in args.settings:
        setting = f"{p}x{g}x{length}"
        trl = None
        for arm in args.arms:
            mine = [r for r in runs if r["arm"] == arm and r["setting"] == setting]
            pooled = {k: [x for r in mine for x in r[k]]
                      for k in ("step_s", "step_inner_s", "cpu_s", "generate_s", "update_s", "other_s")}
            row = {"setting": setting, "arm": arm, "completions_per_step": p * g,
                   **{f"median_{k}": median(v) for k, v in pooled.items()},
                   "median_of_round_medians_step_s": median([median(r["step_s"]) for r in mine]),
                   "round_medians_step_s": [median(r["step_s"]) for r in mine],
                   "completion_length": [min(r["completion_length_min"] for r in mine),
                                         max(r["completion_length_max"] for r in mine)]}
            row["samples_per_s"] = p * g / row["median_step_s"]
            if arm == "trl_grpo":
                trl = row
            rows.append(row)
        for row in rows:
            if row["setting"] == setting and trl is not None:
                row["speedup_vs_trl"] = trl["median_step_s"] / row["median_step_s"]
                row["cpu_speedup_vs_trl"] = trl["median_cpu_s"] / row["median_cpu_s"]
                rounds = {r["round"]: median(r["step_s"]) for r in runs if r["arm"] == "trl_grpo" and r["setting"] == setting}
                per_round = [rounds[r["round"]] / median(r["step_s"]) for r in runs
                             if r["arm"] == row["arm"] and r["setting"] == setting and r["round"] in rounds]
                row["speedup_vs_trl_per_round"] = per_round
    return rows


def _table(rows: list[dict]) -> str:
    out = ["| setting (PxGxL) | trainer | s/step (median) | samples/s | generate s | update s | other s "
           "| in-step s | CPU s/step | vs TRL (wall) | vs TRL per round: median (min–max) | vs TRL (CPU s) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_round = r.get("speedup_vs_trl_per_round") or []
        span = f"{median(per_round):.2f}x ({min(per_round):.2f}–{max(per_round):.2f})" if per_round else "–"
        out.append(f"| {r['setting']} | {r['arm']} | {r['median_step_s']:.4f} | {r['samples_per_s']:.0f} "
                   f"| {r['median_generate_s']:.4f} | {r['median_update_s']:.4f} | {r['median_other_s']:.4f} "
                   f"| {r['median_step_inner_s']:.4f} | {r['median_cpu_s']:.4f} | {r.get('speedup_vs_trl', float('nan')):.2f}x | {span} "
                   f"| {r.get('cpu_speedup_vs_trl', float('nan')):.2f}x |")
    return "\n".join(out)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _settings(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(x) for x in item.lower().split("x")) for item in text.split(",") if item.strip()]


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


if __name__ == "__main__":
    main()
