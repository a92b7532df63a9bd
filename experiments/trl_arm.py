"""The sample-efficiency study's TRL baseline (issue 11, stages B/C): TRL's `GRPOTrainer` with its
own default loss, driven by the same config dict as our runs, evaluated by our evaluation.

    python -m experiments.trl_arm --config run_dir/config.yaml

`experiments/launch.py:train_once` runs this instead of `r2vpo train` when the config has
`trainer: trl`. The config is one of our run configs (model = the warm start's `final/`, dataset,
data_seed, eval_size, eval_split, prompts_per_step, num_generations, max_new_tokens, temperature,
top_p, top_k, lr, lr_scheduler, warmup_steps, adam_betas, weight_decay, max_grad_norm, seed, steps,
eval_every, num_threads, output_dir, ...) plus two keys of this arm: `trainer: trl` and
`num_iterations` (TRL's PPO epochs, default 1). Our reuse knobs (ppo_epochs, updates_per_step,
replay_ratio) and our loss (`loss`, `kl_coef`) have no meaning here and are refused.

The same model, data and reward as our runs: the model and tokenizer from our loader (as
`r2vpo train` loads `model: <dir>`), the train and eval records from `config_records`, the reward
from `config_reward_fn`. One RL step = one generation batch of prompts_per_step × num_generations
completions: `per_device_train_batch_size` = that, `steps_per_generation` 1, no gradient
accumulation. With `num_iterations` k TRL regenerates every `steps_per_generation × k` optimiser
steps and reuses the buffered batch, whole, for the k steps in between (TRL 1.16
`GRPOTrainer._prepare_inputs` and `RepeatSampler(repeat_count=num_iterations × steps_per_generation)`),
so `max_steps` = steps × k and RL step s ends at optimiser step s·k.

The loss is TRL's default, left unset here; in TRL 1.16.0 that is `loss_type="dapo"` (token-level
losses summed and divided by the active tokens of the global batch), `epsilon=0.2` with
`epsilon_high=None` (= epsilon: symmetric clip), `beta=0.0` (no KL, no reference model),
`scale_rewards="group"` (advantages = (r − group mean) / group std), `importance_sampling_level=
"token"`, `mask_truncated_completions=False`, `top_entropy_quantile=1.0`; the run prints the values
it used. Sampling: our temperature, top_p, top_k (0 = off, TRL's meaning too), HF generate (no vLLM).
CPU, fp32, no gradient checkpointing (TRL's default recomputes the forward in the backward: the
same maths, slower), HF's default optimiser (AdamW) with our betas and weight decay.

Evaluation is ours (`evaluation.scoring.evaluate`, greedy, as `R2VPOTrainer._evaluate`) on the
model being trained, at step 0 before training, every `eval_every` RL steps and at the last step;
`<output_dir>/metrics.jsonl` gets one line per RL step: step, rollouts, reward/mean,
response_length/mean, ... from TRL's per-step logs, and the eval/* keys on evaluation steps.
Nothing is saved (the study keeps only metrics).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import yaml

from r2vpo_ascend.algos.errors import ConfigError
from r2vpo_ascend.evaluation.scoring import evaluate
from r2vpo_ascend.models.loading import load_model_and_tokenizer
from r2vpo_ascend.rollout.hf import HFGenerateEngine
from r2vpo_ascend.trainer.config import R2VPOConfig
from r2vpo_ascend.trainer.setup import config_records, config_reward_fn

TRL_KEYS = ("trainer", "num_iterations")
# Our knobs with no TRL counterpart in this arm: silently ignoring them would mislabel a run.
REFUSED = {"ppo_epochs": 1, "updates_per_step": 1, "replay_ratio": 0.0, "kl_coef": 0.0}
SCHEDULERS = {"constant": "constant", "linear": "linear", "cosine": "cosine"}
# TRL log key -> our metrics.jsonl key (per RL step; averaged over its num_iterations optimiser steps)
LOG_KEYS = {"reward": "reward/mean", "reward_std": "reward/std", "completions/mean_length": "response_length/mean",
            "completions/clipped_ratio": "response_length/truncated_frac", "entropy": "entropy/mean",
            "clip_ratio/region_mean": "clip/frac", "grad_norm": "grad_norm", "learning_rate": "lr",
            "loss": "loss/policy"}
DEFAULTS_SHOWN = ("loss_type", "epsilon", "epsilon_high", "beta", "scale_rewards", "importance_sampling_level",
                  "mask_truncated_completions", "top_entropy_quantile", "optim")


def split_config(cfg: dict) -> tuple[R2VPOConfig, int]:
    """Our R2VPOConfig (the config without this arm's keys) and TRL's num_iterations."""
    if cfg.get("trainer", "trl") != "trl":
        raise ConfigError(f"experiments.trl_arm runs `trainer: trl` configs, got trainer={cfg['trainer']!r}")
    k = cfg.get("num_iterations", 1)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"config field `num_iterations` must be an integer >= 1, got {k!r}")
    if "loss" in cfg:
        raise ConfigError("the TRL arm uses TRL's default loss: remove `loss` from its config")
    for key, neutral in REFUSED.items():
        if cfg.get(key, neutral) != neutral:
            raise ConfigError(f"the TRL arm has no `{key}` (={cfg[key]!r}); TRL's data reuse is `num_iterations`")
    config = R2VPOConfig.from_dict({k_: v for k_, v in cfg.items() if k_ not in TRL_KEYS})
    if config.lr_scheduler not in SCHEDULERS:
        raise ConfigError(f"the TRL arm maps lr_scheduler {sorted(SCHEDULERS)}, got {config.lr_scheduler!r}")
    return config, k


def grpo_args(config: R2VPOConfig, num_iterations: int):
    from trl import GRPOConfig
    schedule = SCHEDULERS[config.lr_scheduler]
    if schedule == "constant" and config.warmup_steps:
        schedule = "constant_with_warmup"  # HF's "constant" ignores warm-up
    return GRPOConfig(
        output_dir=config.output_dir, per_device_train_batch_size=config.prompts_per_step * config.num_generations,
        num_generations=config.num_generations, steps_per_generation=1, gradient_accumulation_steps=1,
        num_iterations=num_iterations, max_steps=config.steps * num_iterations,
        max_completion_length=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
        top_k=config.top_k, use_vllm=False, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        learning_rate=config.lr, lr_scheduler_type=schedule, warmup_steps=config.warmup_steps,
        adam_beta1=config.adam_betas[0], adam_beta2=config.adam_betas[1], weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm, logging_strategy="steps", logging_steps=1, save_strategy="no",
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=config.seed,
    )


def _callback(config: R2VPOConfig, num_iterations: int, tokenizer, eval_records: list[dict], reward_fn, path: Path):
    """A TrainerCallback writing one metrics.jsonl line per RL step, with our evaluation when due."""
    from transformers import TrainerCallback

    per_step = config.prompts_per_step * config.num_generations

    class StudyMetrics(TrainerCallback):
        def __init__(self):
            self.pending: dict[str, list[float]] = {}
            self.last_global_step = 0
            self.evaluations = 0
            self.step_start = time.perf_counter()

        def _evaluate(self, model) -> dict:
            model.eval()  # HFGenerateEngine also switches to eval and inference mode; explicit for the reader
            try:
                with torch.no_grad():
                    metrics = evaluate(HFGenerateEngine(model, tokenizer), tokenizer, eval_records, reward_fn,
                                       max_new_tokens=config.max_new_tokens,
                                       max_prompt_length=config.max_prompt_length)
            finally:
                model.train()
            self.evaluations += 1
            return metrics

        def _write(self, record: dict) -> None:
            with open(path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if eval_records:
                metrics = self._evaluate(model)
                self._write({"step": 0, "rollouts": 0, **metrics})
                print(f"[eval] step 0: accuracy {metrics['eval/accuracy']:.3f}", flush=True)
            self.step_start = time.perf_counter()

        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            # The end-of-training summary is logged at the last step again: one line per optimiser step.
            if state.global_step == self.last_global_step or "train_runtime" in (logs or {}):
                return
            self.last_global_step = state.global_step
            for key, value in (logs or {}).items():
                if key in LOG_KEYS and isinstance(value, (int, float)) and math.isfinite(value):
                    self.pending.setdefault(LOG_KEYS[key], []).append(float(value))
            if state.global_step % num_iterations:
                return  # inside an RL step: its generation batch is being reused
            step = state.global_step // num_iterations
            record = {"step": step, "rollouts": step * per_step,
                      **{k: sum(v) / len(v) for k, v in self.pending.items()}, "trl/optimizer_steps": state.global_step,
                      # generation, rewards, k optimiser steps: the step alone, without our evaluation (as ours)
                      "perf/time_step_s": time.perf_counter() - self.step_start}
            self.pending = {}
            if eval_records and config.eval_every > 0 and (step % config.eval_every == 0 or step == config.steps):
                record.update(self._evaluate(model))
            self.step_start = time.perf_counter()
            self._write(record)
            if config.log_every and (step % config.log_every == 0 or step == config.steps):
                acc = f" eval/accuracy {record['eval/accuracy']:.3f}" if "eval/accuracy" in record else ""
                print(f"[step {step}] reward/mean {record.get('reward/mean', float('nan')):.3f} "
                      f"response_length/mean {record.get('response_length/mean', float('nan')):.2f}{acc}", flush=True)

    return StudyMetrics()


def train(cfg: dict):
    """Train `cfg` with TRL's GRPOTrainer; returns the trainer (its `state` and the callback's counts)."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    config, num_iterations = split_config(cfg)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    model, tokenizer = load_model_and_tokenizer(str(config.model), tokenizer=config.tokenizer,
                                                trust_remote_code=config.trust_remote_code, dtype=torch.float32,
                                                seed=config.seed)
    train_records = config_records(config, tokenizer, split="train")
    eval_records = config_records(config, tokenizer, split="eval") if config.eval_every > 0 else []
    reward_fn = config_reward_fn(config)
    columns = [k for k in train_records[0] if k != "prompt"]

    def reward(prompts, completions, **kwargs):  # TRL adds completion_ids, trainer_state, log_extra, ...
        return reward_fn(prompts=prompts, completions=completions, **{k: kwargs[k] for k in columns})

    reward.__name__ = getattr(reward_fn, "__name__", type(reward_fn).__name__)  # TRL's metric name
    args = grpo_args(config, num_iterations)
    callback = _callback(config, num_iterations, tokenizer, eval_records, reward_fn, metrics_path)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=reward, args=args,
                          train_dataset=Dataset.from_list(train_records), callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # TRL's per-step dict print; the callback prints a summary
    print("[trl] GRPOTrainer defaults used: " + ", ".join(f"{k}={getattr(args, k)!r}" for k in DEFAULTS_SHOWN) +
          f"; num_iterations={num_iterations}, max_steps={args.max_steps}", flush=True)
    trainer.train()
    trainer.study_metrics = callback
    return trainer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.trl_arm", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="a run's config.yaml (our keys + trainer: trl, num_iterations)")
    args = p.parse_args(argv)
    try:
        train(yaml.safe_load(Path(args.config).read_text()))
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
