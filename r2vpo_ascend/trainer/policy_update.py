"""The update phase of one RL step.

The update batch is split into `updates_per_step` mini-batches (one optimiser step each) and
each mini-batch into micro-batches (gradient accumulation). Loss normalisation uses the
mini-batch's GLOBAL token and sequence counts (summed over ranks), so the accumulated
gradient is that of the loss on the whole mini-batch, whatever the micro-batch split or the
number of ranks. The variance centre c is the global mean ratio: computed inside the loss
when a mini-batch is one micro-batch per rank, else by a no-grad pre-pass. After each
optimiser step the dual variable λ takes one step on the global V̂ (R2VPO_SPEC "Dual step").
"""

from __future__ import annotations

import copy
import random

import torch

from r2vpo_ascend.algos import DualController, LossReduction, compute_policy_loss, kl_penalty, policy_ratio
from r2vpo_ascend.replay import Rollout, replay_metrics
from r2vpo_ascend.trainer.batch import collate, pad_right
from r2vpo_ascend.trainer.config import R2VPOConfig


class PolicyUpdater:
    def __init__(self, engine, config: R2VPOConfig, dual: DualController, *, pad_id: int):
        self.engine, self.config, self.dual, self.pad_id = engine, config, dual, pad_id
        # With one optimiser step per RL step, the first forward of the update runs at the very
        # weights that sampled the fresh responses: its detached log-probs ARE the behaviour
        # log-probs, so the separate no-grad pass is skipped (same numbers, a third less compute).
        self.fills_behaviour_log_probs = config.updates_per_step == 1
        self.ref_model = None
        if config.kl_coef > 0:
            self.ref_model = copy.deepcopy(engine.model).eval().requires_grad_(False)

    # ---- behaviour log-probs --------------------------------------------------------------
    @torch.no_grad()
    def behaviour_log_probs(self, rollouts: list[Rollout]) -> None:
        """Store log μ(response) at the current weights on each rollout (no grad)."""
        for chunk in _chunks(rollouts, self.config.micro_batch_size):
            batch = collate([r.prompt_ids for r in chunk], [r.response_ids for r in chunk], self.pad_id)
            log_probs, _ = self.engine.log_probs(batch, temperature=self.config.temperature)
            for r, row in zip(chunk, log_probs.float().cpu()):
                r.old_log_probs = row[:len(r.response_ids)].clone()

    # ---- update -------------------------------------------------------------------------
    def update(self, batch: list[Rollout], *, current_version: int) -> dict:
        cfg = self.config
        self._current_version = current_version
        order = list(batch)
        random.Random(cfg.seed * 1_000_003 + current_version).shuffle(order)  # mix fresh/replayed
        minis = [order[i::cfg.updates_per_step] for i in range(cfg.updates_per_step)]
        per_step = [self._optimizer_step(mini, current_version) for mini in minis if mini]
        keys = dict.fromkeys(k for m in per_step for k in m)  # buckets may differ between mini-batches
        metrics = {k: sum(m[k] for m in per_step if k in m) / sum(k in m for m in per_step) for k in keys}
        metrics["r2vpo/lambda"] = self.dual.lam  # after the last dual step
        return metrics

    def _optimizer_step(self, mini: list[Rollout], current_version: int) -> dict:
        cfg, engine = self.config, self.engine
        micro = list(_chunks(mini, cfg.micro_batch_size))
        counts = engine.all_reduce_sum(torch.tensor([float(sum(len(r.response_ids) for r in mini)),
                                                     float(len(mini))], dtype=torch.float64))
        n_tokens, n_seqs = counts.tolist()
        center = None
        if cfg.center == "mean" and len(micro) > 1:
            center = self._global_ratio_mean(micro)
        lam = self.dual.lam
        reduction = LossReduction(global_tokens=n_tokens, global_seqs=n_seqs, center_value=center,
                                  all_reduce=engine.all_reduce_sum if engine.world_size > 1 else None)
        stats, kept = None, []
        sums = {"loss/policy": 0.0, "entropy/mean": 0.0}
        for chunk in micro:
            tensors = self._tensors(chunk)
            log_probs, entropy = engine.log_probs(tensors["batch"], temperature=cfg.temperature, with_entropy=True)
            mask = tensors["mask"].to(log_probs.device)
            old = self._old_log_probs(chunk, log_probs, tensors["T"]).to(log_probs.device)
            advantages = tensors["advantages"].to(log_probs.device)
            loss, m = compute_policy_loss(cfg.loss, log_probs, old, advantages, mask, cfg, lam=lam,
                                          reduction=reduction)
            stats = m["_stats"] if stats is None else stats.merge(m["_stats"])
            for key in m:  # loss terms are partial sums of the global loss: they add up
                if key.startswith(("loss/", "r2vpo/pg_loss", "r2vpo/var_penalty")):
                    sums[key] = sums.get(key, 0.0) + float(m[key])
            sums["entropy/mean"] += float((entropy.detach() * mask).sum()) / n_tokens
            if cfg.entropy_coef:
                loss = loss - cfg.entropy_coef * (entropy * mask).sum() / n_tokens
            if self.ref_model is not None:
                kl = kl_penalty(log_probs, self._ref_log_probs(tensors["batch"]).to(log_probs.device),
                                kind=cfg.kl_estimator)
                kl_term = (kl * mask).sum() / n_tokens
                sums["kl/ref"] = sums.get("kl/ref", 0.0) + float(kl_term.detach())
                loss = loss + cfg.kl_coef * kl_term
            engine.backward(loss)
            ratio = policy_ratio(log_probs.detach(), old, mask.bool(), cfg.ratio_level)
            kept.append((ratio.float().cpu(), advantages.cpu(), mask.cpu(), tensors["staleness"]))
        grad_norm = engine.step()
        ratio_var = stats.variance()           # global V̂ over the whole mini-batch
        self.dual.update(ratio_var)            # the dual step: identical λ on every rank

        ratio, advantages, mask, staleness = _concat(kept)
        metrics = {**sums, **stats.to_metrics(), "grad_norm": grad_norm}
        metrics.update(replay_metrics(ratio, advantages, mask, staleness, lam=lam, center_value=stats.center_value()))
        return metrics

    # ---- helpers -------------------------------------------------------------------------
    def _tensors(self, chunk: list[Rollout]) -> dict:
        batch = collate([r.prompt_ids for r in chunk], [r.response_ids for r in chunk], self.pad_id)
        return {"batch": batch, "mask": batch.response_mask, "T": batch.response_ids.shape[1],
                "advantages": torch.tensor([r.advantage for r in chunk], dtype=torch.float32),
                "staleness": torch.tensor([self._staleness(r) for r in chunk], dtype=torch.long)}

    def _staleness(self, r: Rollout) -> int:
        return self._current_version - r.version

    def _old_log_probs(self, chunk: list[Rollout], log_probs: torch.Tensor, width: int) -> torch.Tensor:
        """Stored behaviour log-probs; fresh rollouts without them take this forward's (see __init__)."""
        for r, row in zip(chunk, log_probs.detach().float().cpu()):
            if r.old_log_probs is None:
                r.old_log_probs = row[:len(r.response_ids)].clone()
        return pad_right([r.old_log_probs for r in chunk], width)

    @torch.no_grad()
    def _global_ratio_mean(self, micro: list[list[Rollout]]) -> float:
        sums = torch.zeros(2, dtype=torch.float64)  # Σ m·ρ, Σ m
        for chunk in micro:
            tensors = self._tensors(chunk)
            log_probs, _ = self.engine.log_probs(tensors["batch"], temperature=self.config.temperature)
            mask = tensors["mask"].to(log_probs.device).bool()
            old = self._old_log_probs(chunk, log_probs, tensors["T"]).to(log_probs.device)
            ratio = policy_ratio(log_probs, old, mask, self.config.ratio_level)
            sums += torch.stack([(ratio * mask).sum(), mask.sum()]).double().cpu()
        sums = self.engine.all_reduce_sum(sums)
        return float(sums[0] / sums[1].clamp(min=1))

    @torch.no_grad()
    def _ref_log_probs(self, batch) -> torch.Tensor:
        from r2vpo_ascend.trainer.logprobs import response_log_probs
        log_probs, _ = response_log_probs(self.ref_model, batch.to(next(self.ref_model.parameters()).device),
                                          temperature=self.config.temperature)
        return log_probs


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _concat(kept):
    width = max(r.shape[1] for r, *_ in kept)

    def pad(t, value=0.0):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)
    ratio = torch.cat([pad(r, 1.0) for r, *_ in kept])
    mask = torch.cat([pad(m) for _, _, m, _ in kept])
    advantages = torch.cat([a for _, a, _, _ in kept])
    staleness = torch.cat([s for *_, s in kept])
    return ratio, advantages, mask, staleness
