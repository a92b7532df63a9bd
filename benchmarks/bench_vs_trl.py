"""Trainer throughput: our `R2VPOTrainer` vs TRL's `GRPOTrainer`, side by side on one machine.

    python benchmarks/bench_vs_trl.py                                  # 4x4x16 and 8x8x64, 5 rounds
    python benchmarks/bench_vs_trl.py --settings 8x8x64 --rounds 3 --threads 1
    python benchmarks/bench_vs_trl.py --profile 8x8x64 --threads 1 --out benchmarks/results/vs_trl_profile.json
                                                                       # where our step's time goes, per phase
    python benchmarks/bench_vs_trl.py --model smollm2-135m-instruct --threads 1 --rounds 2 --steps 3
                                                                       # the real model: 4x4x64 by default

Needs TRL: `pip install -c constraints-cpu.txt trl==1.16.0` (keeps the CPU torch).

Both trainers get the same thing:
- model (`--model`): `tiny` = `build_tiny_model(build_char_tokenizer(), seed=--seed)` (random
  init, fp32), or `smollm2-135m-instruct` = the real pretrained model through its preset (fp32,
  its own tokenizer), loaded fresh in each case's process; the same torch thread count (`--threads`);
- data: tiny: the built-in arithmetic prompts (`config_records`, the default arithmetic config);
  smollm2: the task of configs/smollm2_math.yaml (its arithmetic problems in the model's chat
  template, the config's prompt limit); both: the same exact-match `ArithmeticReward` on the
  `answer` column (in-process; math-verify's worker pool would add the same cost to both);
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

Arm `ours_vllm` (default with the real model) is ours with `rollout_engine: vllm`: it runs only
where vllm is importable (it cannot force exactly L tokens: its lengths are recorded) and is
otherwise reported as skipped, with the reason. Arms `ours_bf16` and `trl_grpo_bf16` are
`ours_ppo_clip` and `trl_grpo` in bf16 mixed precision, float32 weights and AdamW state on both
sides: ours `mixed_precision: bf16` (the decoder's forwards and HF generate under torch.autocast,
the LM head's log-probs in float32), TRL `bf16=True` (accelerate's autocast around the whole
forward, generation included); `ours_bf16`'s "vs TRL" is against `trl_grpo_bf16`.

Each (round, setting, arm) runs in a fresh spawned process: `--warmup` steps, then `--steps`
measured steps, and no more (ours writes no checkpoint or final model: `_save` and
`_save_final_model` are switched off in the benchmark process; TRL saves nothing). The arms
of a round run one after the other, in a rotated order from round to round, so they share the
background load. A step's time is the interval between consecutive
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
from benchmarks._vs_trl_setup import LR, MODELS, _model, _records, max_prompt_length  # noqa: E402
from benchmarks.profile_step import phase_table, profile_ours  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "vs_trl_cpu.json"
REAL_OUT = ROOT / "benchmarks" / "results" / "vs_trl_smollm2.json"
ARMS = ("ours_ppo_clip", "trl_grpo", "ours_r2vpo", "trl_grpo_gc")
REAL_ARMS = ("ours_ppo_clip", "trl_grpo", "ours_vllm")  # the defaults with the real model
BF16_ARMS = ("ours_bf16", "trl_grpo_bf16")  # mixed precision on both sides, on request


def run_ours(loss: str, prompts: int, gens: int, length: int, warmup: int, steps: int, threads: int, seed: int,
             model_name: str = "tiny", rollout_engine: str = "hf", mixed_precision: str = "no") -> dict:
    """Our trainer, in this (fresh) process: per-step times of steps warmup+1 .. warmup+steps."""
    import json

    import torch

    from r2vpo_ascend import R2VPOConfig, R2VPOTrainer
    from r2vpo_ascend.rewards.arithmetic import ArithmeticReward

    torch.set_num_threads(threads)
    model, tokenizer = _model(seed, model_name)
    model.generation_config.min_new_tokens = length  # exactly `length` tokens: EOS is masked until then
    out = tempfile.mkdtemp(prefix="bench_ours_")
    config = R2VPOConfig(
        loss=loss, prompts_per_step=prompts, num_generations=gens, max_new_tokens=length, temperature=1.0,
        updates_per_step=1, micro_batch_size=prompts * gens, lr=LR, lr_scheduler="constant", max_grad_norm=1.0,
        kl_coef=0.0, loss_agg="token-mean", replay_ratio=0.0, sft_steps=0, eval_every=0, save_every=0,
        log_every=0, progress_bar="off", resume="never", num_threads=threads, seed=seed, output_dir=out,
        steps=warmup + steps, max_prompt_length=max_prompt_length(model_name), rollout_engine=rollout_engine,
        mixed_precision=mixed_precision,
    )
    trainer = R2VPOTrainer(model=model, tokenizer=tokenizer, reward_fn=ArithmeticReward(),
                           train_dataset=_records(seed, tokenizer, model_name), config=config)
    # No checkpoint and no final model (1.6 GB and 0.5 GB for the real model): TRL saves nothing either.
    trainer._save = lambda *args, **kwargs: None
    trainer._save_final_model = lambda: None
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
            gradient_checkpointing: bool = False, model_name: str = "tiny", bf16: bool = False) -> dict:
    """TRL's GRPOTrainer with the equivalent settings, in this (fresh) process."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r2vpo_ascend.rewards.arithmetic import ArithmeticReward

    torch.set_num_threads(threads)
    model, tokenizer = _model(seed, model_name)
    reward = ArithmeticReward()

    def arithmetic(prompts, completions, answer, **columns):
        return reward(prompts, completions, answer=answer)

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_trl_"), per_device_train_batch_size=prompts * gens,
        num_generations=gens, steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1,
        max_completion_length=length, generation_kwargs={"min_new_tokens": length}, temperature=1.0, top_p=1.0,
        top_k=0, beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group", learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,  # optim: HF's default
        logging_strategy="no", save_strategy="no", report_to=[], use_vllm=False, bf16=bf16, fp16=False,
        use_cpu=True, seed=seed, disable_tqdm=True, dataloader_num_workers=0, max_steps=warmup + steps,
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
                          train_dataset=Dataset.from_list(_records(seed, tokenizer, model_name)), callbacks=[StepTimes()])
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


def run_arm(arm: str, prompts: int, gens: int, length: int, warmup: int, steps: int, threads: int, seed: int,
            model_name: str = "tiny") -> dict:
    if arm in ("trl_grpo", "trl_grpo_gc", "trl_grpo_bf16"):
        return run_trl(prompts, gens, length, warmup, steps, threads, seed, gradient_checkpointing=arm == "trl_grpo_gc",
                       model_name=model_name, bf16=arm == "trl_grpo_bf16")
    if arm == "ours_bf16":
        return run_ours("ppo_clip", prompts, gens, length, warmup, steps, threads, seed, model_name,
                        mixed_precision="bf16")
    if arm == "ours_vllm":
        return run_ours("ppo_clip", prompts, gens, length, warmup, steps, threads, seed, model_name, rollout_engine="vllm")
    return run_ours(arm.removeprefix("ours_"), prompts, gens, length, warmup, steps, threads, seed, model_name)


def unavailable(arm: str) -> str | None:
    """Why `arm` cannot run here, or None."""
    import importlib.util

    if arm == "ours_vllm" and importlib.util.find_spec("vllm") is None:
        return "vllm is not importable in this environment (not installed)"
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="tiny", help="tiny, or the real pretrained model")
    parser.add_argument("--settings", type=_settings, default=None,
                        help="PROMPTSxGENERATIONSxTOKENS list (comma-separated); default 4x4x16,8x8x64 (tiny), "
                             "4x4x64 (real model)")
    parser.add_argument("--arms", type=_str_list, default=None,
                        help=f"subset of {','.join(ARMS + REAL_ARMS[2:] + BF16_ARMS)}; default {','.join(ARMS)} (tiny), "
                             f"{','.join(REAL_ARMS)} (real model)")
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
    parser.add_argument("--out", default=None, help=f"JSON results file (default {DEFAULT_OUT.name}, "
                                                     f"{REAL_OUT.name} with the real model)")
    args = parser.parse_args(argv)
    real = args.model != "tiny"
    args.settings = args.settings or _settings("4x4x64" if real else "4x4x16,8x8x64")
    args.arms = args.arms or list(REAL_ARMS if real else ARMS)
    args.out = args.out or str(REAL_OUT if real else DEFAULT_OUT)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (a step's time is measured from the end of the one before)")
    if args.profile:
        if real:
            parser.error("--profile runs the tiny model only (benchmarks/profile_step.py)")
        (p, g, length), = args.profile
        result = run_isolated(profile_ours, args.profile_loss, p, g, length, args.warmup, args.steps, args.threads,
                              args.seed, args.cprofile)
        print(result.pop("cprofile", ""))
        print(phase_table(result))
        payload = {"benchmark": "where our trainer's step time goes", "command": " ".join([sys.executable, *sys.argv]),
                   "machine": machine_info(), "versions": _versions(), "load_1m_after": os.getloadavg()[0], **result}
        print(f"wrote {write_results(args.out, payload)}")
        return payload

    info = machine_info()
    print(f"{info['cpu_model']}, {info['cpu_usable_cores']} usable cores, torch {info['torch']}, "
          f"{args.threads} threads, load {os.getloadavg()[0]:.2f}, model {args.model}", flush=True)
    skipped = {arm: why for arm in args.arms if (why := unavailable(arm))}
    for arm, why in skipped.items():
        print(f"  {arm}: skipped, {why}", flush=True)
    args.arms = [arm for arm in args.arms if arm not in skipped]
    runs: list[dict] = []
    for round_index in range(args.rounds):
        for p, g, length in args.settings:
            shift = round_index % len(args.arms)
            for arm in args.arms[shift:] + args.arms[:shift]:  # rotate who goes first
                load_before = os.getloadavg()[0]
                result = run_isolated(run_arm, arm, p, g, length, args.warmup, args.steps, args.threads, args.seed,
                                      args.model)
                result.update(arm=arm, setting=f"{p}x{g}x{length}", round=round_index, load_1m_before=load_before,
                              load_1m_after=os.getloadavg()[0])
                runs.append(result)
                print(f"  round {round_index} {p}x{g}x{length} {arm:14s} {median(result['step_s']):.4f} s/step "
                      f"(gen {median(result['generate_s']):.4f}, update {median(result['update_s']):.4f}) "
                      f"load {load_before:.2f}", flush=True)
    summary = _summarise(runs, args)
    payload = {"benchmark": "trainer throughput vs TRL GRPOTrainer", "command": " ".join([sys.executable, *sys.argv]),
               "machine": info, "versions": _versions(), "args": {**vars(args), "settings": [list(s) for s in args.settings]},
               "learning_rate": LR, "model": args.model, "skipped_arms": skipped, "summary": summary, "runs": runs,
               "load_1m_range": [min(r["load_1m_before"] for r in runs), max(r["load_1m_after"] for r in runs)]}
    path = write_results(args.out, payload)
    print(_table(summary))
    for arm, why in skipped.items():
        print(f"{arm}: not run, {why}")
    print(f"wrote {path}")
    return payload


def _summarise(runs: list[dict], args) -> list[dict]:
    rows = []
    for p, g, length in args.settings:
        setting = f"{p}x{g}x{length}"
        trl = {}
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
            if trl_baseline(arm) == arm:  # a TRL arm others are compared with
                trl[arm] = row
            rows.append(row)
        for row in rows:
            base = trl_baseline(row["arm"])
            if row["setting"] == setting and base in trl:
                row["vs_trl_arm"] = base
                row["speedup_vs_trl"] = trl[base]["median_step_s"] / row["median_step_s"]
                row["cpu_speedup_vs_trl"] = trl[base]["median_cpu_s"] / row["median_cpu_s"]
                rounds = {r["round"]: median(r["step_s"]) for r in runs if r["arm"] == base and r["setting"] == setting}
                per_round = [rounds[r["round"]] / median(r["step_s"]) for r in runs
                             if r["arm"] == row["arm"] and r["setting"] == setting and r["round"] in rounds]
                row["speedup_vs_trl_per_round"] = per_round
    return rows


def trl_baseline(arm: str) -> str:
    """The TRL arm `arm` is compared with: the bf16 one for the mixed-precision arms."""
    return "trl_grpo_bf16" if arm in BF16_ARMS else "trl_grpo"


def _table(rows: list[dict]) -> str:
    out = ["| setting (PxGxL) | trainer | s/step (median) | samples/s | generate s | update s | other s "
           "| in-step s | CPU s/step | vs TRL (wall) | vs TRL per round: median (min–max) | vs TRL (CPU s) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_round = r.get("speedup_vs_trl_per_round") or []
        span = f"{median(per_round):.2f}x ({min(per_round):.2f}–{max(per_round):.2f})" if per_round else "–"
        out.append(f"| {r['setting']} | {r['arm']} | {r['median_step_s']:.4f} | {r['samples_per_s']:.3g} "
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
