"""`R2VPOTrainer`: the RL loop, read top to bottom in `train()`.

    rollout (G responses per prompt, policy version)
      → rewards → advantages (per group, stored with the sample)
      → update batch = fresh + replayed samples; fresh ones enter the replay buffer
      → behaviour log-probs of the fresh samples (the first optimiser step's forward; a no-grad
        pass for those outside its mini-batch)
      → per optimiser step: R²VPO (or baseline) loss → backward → step → dual step on the
        GLOBAL ratio variance
      → new policy version; weights pushed to the rollout engine
      → metrics.jsonl, evaluation, checkpoint

Everything hardware-specific sits behind `backend` (the `device` package) and the engines.
Set-up is a recipe (torchtune's shape): `_setup_model` → `_setup_engines` → `_setup_data` →
`_setup_algorithm`, each a few lines you can find (docs/architecture.md).

With several processes (torchrun), every rank draws the same global batch of prompts and
generates for its share; advantages are computed on the gathered global rewards, and every
rank keeps the same replay buffer (fresh rollouts are gathered into it) and draws the same
replayed samples, taking its share. The update therefore sees exactly the global batch a
single process would, split over ranks; each sample carries its global position, so the
mini-batch split is that of one process too (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import device
from r2vpo_ascend.algos import compute_advantages
from r2vpo_ascend.algos.dual_settings import dual_controller
from r2vpo_ascend.replay import ReplayBuffer, Rollout, replay_count
from r2vpo_ascend.rewards import CORRECT_THRESHOLD
from r2vpo_ascend.data import PromptSampler
from r2vpo_ascend.data.records import as_records
from r2vpo_ascend.evaluation import check_groups, evaluate, score_completions, tokenize_prompts
from r2vpo_ascend.models.dtypes import resolve_dtype
from r2vpo_ascend.models.loading import enable_gradient_checkpointing, load_model_and_tokenizer
from r2vpo_ascend.rollout import HFGenerateEngine, RolloutError, SamplingConfig
from r2vpo_ascend.trainer.checkpoint import latest_checkpoint, resume_state, save_checkpoint
from r2vpo_ascend.trainer.config import ConfigError, R2VPOConfig, check_resume_config
from r2vpo_ascend.trainer.global_batch import GlobalBatchLayout
from r2vpo_ascend.engines import make_engine
from r2vpo_ascend.trainer.loggers import MetricsLogger, summary_line
from r2vpo_ascend.trainer.policy_update import PolicyUpdater
from r2vpo_ascend.trainer.preflight import preflight
from r2vpo_ascend.trainer.run_dir import (DivergenceGuard, OutputDirLock, StopSignals, diverged_on_nonfinite,
                                          rank_failure_message, start_fresh, stop_requested)
from r2vpo_ascend.trainer.setup import config_records, config_reward_fn
from r2vpo_ascend.trainer.sft import sft_warm_start


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    rollouts: int
    first_eval: dict | None
    last_eval: dict | None


class R2VPOTrainer:
    """Fine-tune a causal LM with R²VPO (or a clipping baseline) — a TRL-like entry point.

    Args:
        model: a `PreTrainedModel`, or a `model` spec (`tiny`, a checkpoint directory).
        tokenizer: required with a model object; loaded with a model spec.
        reward_fn: `reward_fn(prompts=..., completions=..., **columns) -> list[float]`;
            default from `config.reward`.
        train_dataset: list of dicts (or a `datasets.Dataset`) with a `prompt` column (or a
            `problem` column, templated); default from `config.dataset`.
        config: an `R2VPOConfig`.
        eval_dataset: held-out records, same form; default from `config.eval_dataset`.
        backend: a `device.Backend`; default `device.current()`.
    """

    def __init__(self, model=None, tokenizer=None, reward_fn=None, train_dataset=None,
                 config: R2VPOConfig | None = None, *, eval_dataset=None, backend=None, rollout_engine=None):
        self.config = config = config or R2VPOConfig()
        preflight(config, model=model, reward_fn=reward_fn)  # names, weights, reward: before any model loads
        self.backend = backend or device.current()
        self.dist = device.init_distributed(self.backend, timeout_s=config.collective_timeout_s)
        if config.prompts_per_step % self.dist.world_size:
            raise ConfigError(f"config field `prompts_per_step` ({config.prompts_per_step}) must be a multiple of "
                              f"the number of processes ({self.dist.world_size})")
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.backend.manual_seed(config.seed + self.dist.rank)  # ranks sample different responses
        self.layout = GlobalBatchLayout(config.num_generations, self.dist.rank, self.dist.world_size)
        model, self.tokenizer, dtype = self._setup_model(model, tokenizer)
        self._setup_engines(model, dtype, rollout_engine)
        self._setup_data(reward_fn, train_dataset, eval_dataset)
        self._setup_algorithm()
        self.output_dir = Path(config.output_dir)
        self.step = self.version = self.rollouts = self.next_group_id = 0
        self.sft_done = config.sft_steps == 0
        self.first_eval = self.last_eval = None

    # ---- setup, in the order the loop needs it (torchtune's recipe shape) ------------------
    def _setup_model(self, model, tokenizer):
        """The policy (loaded from `config.model` unless given), its tokenizer and the training dtype;
        the backend's fused kernels and, if asked, activation checkpointing."""
        cfg = self.config
        dtype = resolve_dtype(cfg.dtype, self.backend, mixed_precision=cfg.mixed_precision)
        if model is None or isinstance(model, (str, Path)):
            model, loaded_tok = load_model_and_tokenizer(str(model or cfg.model), tokenizer=cfg.tokenizer,
                                                         trust_remote_code=cfg.trust_remote_code,
                                                         dtype=dtype, seed=cfg.seed, rank=self.dist.rank)
            tokenizer = tokenizer or loaded_tok
        if tokenizer is None:
            raise ConfigError("R2VPOTrainer: pass `tokenizer=` together with a model object")
        self.fused_ops = device.apply_fused_patches(self.backend)  # the backend's fused kernels, if any
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model, tokenizer, dtype

    def _setup_engines(self, model, dtype: torch.dtype, rollout_engine) -> None:
        """The training engine (owns the model and optimiser) and the rollout engine (generates)."""
        self.engine = make_engine(model, self.config, self.backend, dtype, self.dist)
        self.rollout_engine = rollout_engine or self._make_rollout_engine()

    def _setup_data(self, reward_fn, train_dataset, eval_dataset) -> None:
        """Reward function, training and held-out records, the prompt sampler."""
        cfg = self.config
        self.reward_fn = reward_fn or config_reward_fn(cfg)
        self.train_records = as_records(train_dataset, "train_dataset") if train_dataset is not None \
            else config_records(cfg, self.tokenizer, split="train")
        self.eval_records = as_records(eval_dataset, "eval_dataset") if eval_dataset is not None \
            else (config_records(cfg, self.tokenizer, split="eval") if cfg.eval_every > 0 else [])
        if len(self.train_records) < cfg.prompts_per_step:
            raise ConfigError(f"the training set has {len(self.train_records)} prompts, fewer than "
                              f"prompts_per_step={cfg.prompts_per_step}")
        # Whole batches only: every step has the same global batch size (and equal shares per rank).
        self.sampler = PromptSampler(self.train_records, cfg.prompts_per_step, seed=cfg.seed, drop_last=True)

    def _setup_algorithm(self) -> None:
        """Replay buffer, dual controller (λ), the update phase and the sampling settings."""
        cfg = self.config
        self.buffer = ReplayBuffer(cfg.replay_capacity, cfg.max_staleness, seed=cfg.seed)
        self.dual = dual_controller(cfg)  # the shared settings table's one builder (algos/dual_settings.py)
        self.updater = PolicyUpdater(self.engine, cfg, self.dual, pad_id=self.tokenizer.pad_token_id)
        self.sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k)

    def _make_rollout_engine(self):
        cfg, model = self.config, self.engine.model
        if cfg.rollout_engine == "vllm":
            from r2vpo_ascend.rollout.vllm import VLLMEngine
            return VLLMEngine(model, self.tokenizer, dtype="auto", seed=cfg.seed + self.dist.rank,
                              max_model_len=min(cfg.max_prompt_length + cfg.max_new_tokens,
                                                model.config.max_position_embeddings),
                              gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                              enable_sleep_mode=cfg.vllm_sleep_mode)
        return HFGenerateEngine(model, self.tokenizer, compute_dtype=self.engine.compute_dtype)

    # ---- the loop -------------------------------------------------------------------------
    # Set up by train(); these defaults serve callers that drive `_run_step` themselves (benchmarks).
    stop_signals = StopSignals(enabled=False)

    @property
    def guard(self) -> DivergenceGuard:
        if "_guard" not in self.__dict__:
            self._guard = DivergenceGuard(self.config.max_bad_steps)
        return self._guard

    def train(self) -> TrainResult:
        """One run at a time per output_dir (rank 0 locks it); SIGINT/SIGTERM stop at a step
        boundary with a checkpoint (single process); see docs/reliability.md."""
        self._guard = DivergenceGuard(self.config.max_bad_steps)
        with OutputDirLock(self.output_dir) if self.dist.is_main else contextlib.nullcontext(), \
                StopSignals(enabled=self.dist.world_size == 1) as self.stop_signals:
            return self._train()

    def _train(self) -> TrainResult:
        cfg = self.config
        resumed = self._maybe_resume()
        if not resumed and self.dist.is_main:
            start_fresh(self.output_dir)  # an earlier run's files move to previous_runs/<n>/
        self.logger = MetricsLogger(self.output_dir, report_to=cfg.report_to, config=cfg.to_dict(),
                                    resume_step=self.step if resumed else None, total_steps=cfg.steps,
                                    progress_bar=cfg.progress_bar, wandb_project=cfg.wandb_project,
                                    enabled=self.dist.is_main)
        try:
            if not self.sft_done:
                self._sft_warm_start()
            if self.step == 0 and self.eval_records:
                self.first_eval = self._evaluate(step=0)
            for step in range(self.step + 1, cfg.steps + 1):
                self._run_step(step)
        except Exception as e:
            if self.dist.world_size > 1:  # say which rank and step; the others fail in their next collective
                print(rank_failure_message(e, self.dist.rank, self.dist.world_size, self.step + 1,
                                           cfg.collective_timeout_s), file=sys.stderr, flush=True)
            raise
        finally:
            self.logger.close()
        self._save_final_model()
        return TrainResult(self.output_dir, self.step, self.rollouts, self.first_eval, self.last_eval)

    def _run_step(self, step: int) -> None:
        cfg = self.config
        start_state = self._snapshot()  # what an error before the update restores
        t0 = time.perf_counter()
        try:
            records = next(self.sampler)[self.dist.rank::self.dist.world_size]  # this rank's prompts
            fresh = self.rollout(records)                                   # G responses per prompt
            t_gen = time.perf_counter() - t0
            reward_metrics, rewards = self.score(fresh, records)            # reward per response
            self.assign_advantages(fresh, rewards)                          # group-normalised, stored
        except Exception:
            self._save(step - 1, override=start_state)  # nothing is lost: resume retries this step
            raise
        replayed = self.replayed_share(len(fresh))
        batch = fresh + replayed                                            # fresh + replayed
        t1 = time.perf_counter()
        with diverged_on_nonfinite(step, self.dist.rank):
            update_metrics = self.updater.update(batch, current_version=self.version,   # loss, step, dual step
                                                 positions=self.layout.positions(len(fresh), len(replayed)))
        nonfinite = self.guard.nonfinite(update_metrics)  # a non-finite gradient: the engine skipped the step
        if cfg.replay_ratio > 0:
            self.buffer.add(self.layout.gather(fresh, device.all_gather_objects))                     # replayable from next step
        self.version += 1                                                   # a new policy version ...
        self.rollout_engine.sync_weights(self.engine.model)                 # ... pushed to the engine
        t_update = time.perf_counter() - t1

        counts = self.engine.all_reduce_sum(torch.tensor(
            [len(fresh), sum(len(r.response_ids) for r in fresh), sum(not r.extras["finished"] for r in fresh),
             bool(nonfinite), self.stop_signals.requested is not None], dtype=torch.float64))
        n_fresh, tokens, truncated, n_nonfinite, n_stop = counts.tolist()  # flags summed: every rank agrees
        self.guard.count(n_nonfinite > 0)
        self.step, self.rollouts = step, self.rollouts + int(n_fresh)
        metrics = {"rollouts": self.rollouts, **reward_metrics, **update_metrics,
                   "response_length/mean": tokens / n_fresh, "response_length/truncated_frac": truncated / n_fresh,
                   "replay/buffer_size": len(self.buffer), "lr": self.engine.lr,
                   "perf/time_generate_s": t_gen, "perf/time_update_s": t_update,
                   "perf/time_step_s": time.perf_counter() - t0,
                   "perf/tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9),  # all ranks
                   "perf/max_memory_gb": self.backend.memory_stats()["max_allocated_gb"],  # peak use
                   "nonfinite/skipped_steps": self.guard.skipped}
        if cfg.eval_every > 0 and self.eval_records and (step % cfg.eval_every == 0 or step == cfg.steps):
            metrics.update(self._evaluate(step=None))
        record = self.logger.log(step, metrics)
        if self.dist.is_main and cfg.log_every and step % cfg.log_every == 0:
            print(summary_line(record), flush=True)
        self.guard.check(step, n_nonfinite > 0, nonfinite, rank=self.dist.rank,  # stops before any save
                         last_checkpoint=lambda: latest_checkpoint(self.output_dir))
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or n_stop:
            self._save(step)
        if n_stop and step < cfg.steps:
            raise stop_requested(self.stop_signals.requested, step, self.output_dir)

    # ---- the stages ---------------------------------------------------------------------
    def rollout(self, records: list[dict]) -> list[Rollout]:
        """G responses per prompt from the rollout engine, tagged with the current policy version.

        Behaviour log-probs are the trainer's own at this version; they are left None here and
        filled by the update before its first optimiser step (the first mini-batch's own
        forward, a no-grad pass for the rest: policy_update.py).
        """
        cfg = self.config
        prompt_ids = tokenize_prompts(self.tokenizer, records, cfg.max_prompt_length)
        self.rollout_engine.wake()
        groups = self.rollout_engine.generate(prompt_ids, self.sampling, n=cfg.num_generations)
        self.rollout_engine.sleep()
        check_groups(groups, len(records), cfg.num_generations)
        if all(len(g.response_ids) == 0 for group in groups for g in group):
            raise RolloutError("every generated response is empty (0 tokens): check max_new_tokens, the prompt "
                               "length against the model's context, and the tokenizer's EOS token")
        fresh = []
        for i, (record, group) in enumerate(zip(records, groups)):
            for g in group:
                fresh.append(Rollout(prompt_ids=g.prompt_ids, response_ids=g.response_ids, old_log_probs=None,
                                     reward=0.0, advantage=0.0, version=self.version,
                                     group_id=self.next_group_id + self.dist.rank + i * self.dist.world_size,
                                     extras={"finished": g.finished}))
        self.next_group_id += len(records) * self.dist.world_size
        return fresh

    def score(self, fresh: list[Rollout], records: list[dict]) -> tuple[dict, torch.Tensor]:
        """Call the reward function with the completions and every dataset column, one float each.

        Returns the reward metrics and the GLOBAL batch's rewards `[N_global]` (gathered once here,
        reused by `assign_advantages`)."""
        completions = [self.tokenizer.decode(r.response_ids, skip_special_tokens=True) for r in fresh]
        rewards = score_completions(self.reward_fn, records, completions, self.config.num_generations)
        for rollout, reward in zip(fresh, rewards):
            rollout.reward = float(reward)
        rewards_t = self._global_rewards(fresh)
        metrics = {"reward/mean": rewards_t.mean().item(), "reward/std": rewards_t.std(unbiased=False).item(),
                   "reward/solved_frac": (rewards_t > CORRECT_THRESHOLD).float().mean().item()}
        metrics.update(getattr(self.reward_fn, "last_metrics", None) or {})
        return metrics, rewards_t

    def assign_advantages(self, fresh: list[Rollout], global_rewards: torch.Tensor | None = None) -> None:
        """Group-normalised advantages, computed once at collection time and stored with the sample.

        Computed on the GLOBAL batch's rewards (gathered from every rank), so a group's baseline
        is the same whichever rank generated it.
        """
        rewards = self._global_rewards(fresh) if global_rewards is None else global_rewards
        advantages = compute_advantages(self.config.advantage, rewards, self.config.num_generations)
        for rollout, slot in zip(fresh, self.layout.slots(len(fresh))):
            rollout.advantage = float(advantages[slot])

    def replayed_share(self, num_fresh: int) -> list[Rollout]:
        """This rank's share of the replayed samples. Every rank holds the same buffer and RNG, so
        all draw the same global sample (sized for the global fresh count, as one process would)
        and each takes every world_size-th one; shares may differ by one sample (the update pads)."""
        world, rank = self.dist.world_size, self.dist.rank
        self.buffer.evict_stale(self.version)
        wanted = replay_count(num_fresh * world, self.config.replay_ratio)
        replayed = self.buffer.sample(wanted, self.version) if wanted else []
        return replayed[rank::world]

    def _global_rewards(self, fresh: list[Rollout]) -> torch.Tensor:
        return self.layout.global_rewards([r.reward for r in fresh], self.engine.all_reduce_sum)

    # ---- warm start, evaluation ---------------------------------------------------------
    def _sft_warm_start(self) -> None:
        cfg = self.config
        losses = sft_warm_start(self.engine.model, self.tokenizer, self.train_records, steps=cfg.sft_steps,
                                lr=cfg.sft_lr, batch_size=cfg.sft_batch_size, seed=cfg.seed,
                                device=self.backend.device, max_prompt_length=cfg.max_prompt_length,
                                max_answer_length=cfg.max_new_tokens)
        self.sft_done = True
        self.rollout_engine.sync_weights(self.engine.model)  # an engine with its own copy must see them
        if self.dist.is_main:
            print(f"[sft] {cfg.sft_steps} warm-start steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)

    def _evaluate(self, step: int | None) -> dict:
        metrics = evaluate(self.rollout_engine, self.tokenizer, self.eval_records, self.reward_fn,
                           max_new_tokens=self.config.max_new_tokens, max_prompt_length=self.config.max_prompt_length)
        self.last_eval = metrics
        if step is not None:  # the step-0 evaluation gets its own line
            self.logger.log(step, {"rollouts": 0, **metrics})
            if self.dist.is_main:
                print(f"[eval] step {step}: accuracy {metrics['eval/accuracy']:.3f}", flush=True)
        return metrics

    # ---- checkpoints --------------------------------------------------------------------
    def _snapshot(self) -> dict:
        return {"rng": [self.backend.rng_state()], "sampler": self.sampler.state_dict()}

    def state_dict(self) -> dict:
        """Collective with several processes (each rank's RNG state is gathered): call on all ranks."""
        return {"engine": self.engine.state_dict(), "dual": self.dual.state_dict(),
                "buffer": self.buffer.state_dict(), "sampler": self.sampler.state_dict(),
                "rng": device.all_gather_objects(self.backend.rng_state()), "config": self.config.to_dict(),
                "trainer": {"step": self.step, "version": self.version, "rollouts": self.rollouts,
                            "next_group_id": self.next_group_id, "sft_done": self.sft_done,
                            "first_eval": self.first_eval, "skipped_steps": self.guard.skipped}}

    def _save(self, step: int, override: dict | None = None) -> None:
        if step == 0 and not self.sft_done:
            return
        if override is not None and self.dist.world_size > 1:
            return  # an error on one rank: no collective can be trusted; the last checkpoint stands
        state = self.state_dict()  # on every rank: it gathers their RNG states
        if self.dist.is_main:
            state.update(override or {})
            save_checkpoint(self.output_dir, step, state, keep=self.config.keep_checkpoints)

    def _maybe_resume(self) -> bool:
        cfg = self.config
        if cfg.resume == "never":
            return False
        found = resume_state(cfg.resume, self.output_dir)  # a corrupt newest one falls back, with a warning
        if found is None:
            return False
        path, state = found
        check_resume_config(cfg, state, path)  # refuses changed fields the checkpoint fixes
        self.engine.load_state_dict(state["engine"])
        self.dual.load_state_dict(state["dual"])
        self.buffer.load_state_dict(state["buffer"])
        self.sampler.load_state_dict(state["sampler"])
        rng = state["rng"]
        if len(rng) != self.dist.world_size:
            print(f"[resume] checkpoint has RNG states of {len(rng)} processes, this run has "
                  f"{self.dist.world_size}: sampling will not replay exactly", flush=True)
        self.backend.set_rng_state(rng[self.dist.rank % len(rng)])
        t = state["trainer"]
        self.step, self.version, self.rollouts = t["step"], t["version"], t["rollouts"]
        self.next_group_id, self.sft_done, self.first_eval = t["next_group_id"], t["sft_done"], t["first_eval"]
        self.guard.skipped = t.get("skipped_steps", 0)
        self.rollout_engine.sync_weights(self.engine.model)
        if self.dist.is_main:
            print(f"[resume] from {path} at step {self.step}", flush=True)
        return True

    def _save_final_model(self) -> None:
        final = self.output_dir / "final"
        self.engine.save_pretrained(final)  # on every rank: ZeRO-3 gathers the weights
        if self.dist.is_main:
            self.tokenizer.save_pretrained(final)
