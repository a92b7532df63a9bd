"""The update phase of one RL step.

The update batch is passed over `ppo_epochs` times; each pass reshuffles it and splits it into
`updates_per_step` mini-batches (one optimiser step each), and each mini-batch into micro-batches
(gradient accumulation). Behaviour log-probs stay those of sampling time across passes. Loss normalisation uses the
mini-batch's GLOBAL token and sequence counts (summed over ranks), so the accumulated
gradient is that of the loss on the whole mini-batch, whatever the micro-batch split or the
number of ranks. The variance centre c is the global mean ratio: computed inside the loss
when a mini-batch is one micro-batch per rank, else by a no-grad pre-pass. After each
optimiser step the dual variable λ takes one step on the global V̂ (docs/algorithms.md "Dual step").

With several processes each rank passes its share of the update batch and each sample's
position in the global batch. The mini-batch split is drawn over global positions, so mini-
batch k holds the same samples whatever the number of ranks; ranks whose share of a mini-
batch needs fewer micro-batches run empty "padding" micro-batches (a masked-out row: no loss,
no gradient), because every micro-batch is a round of collectives (the loss's all-reduces,
and, under ZeRO-3, the weight all-gathers of its forward and backward).

Behaviour log-probs of fresh samples (stored as None by the trainer) are taken where they cost
least: the first optimiser step of pass 0 runs at the sampling weights, so its own forward's
detached log-probs are those of its samples; only the fresh samples outside that mini-batch get a
no-grad pass, before any weight moves (none at all with one mini-batch per pass). Replayed
samples keep the log-probs stored when they were drawn.

Micro-batches are cut from a mini-batch sorted by sample length (prompt + response), so each
pads to its own longest sample instead of a random one's. The loss is normalised by the
mini-batch's counts, not a micro-batch's, so the split changes float rounding only.
"""

from __future__ import annotations

import random

import torch

from r2vpo_ascend.algos import (DualController, LossReduction, RatioStats, aggregate, compute_policy_loss, kl_penalty,
                                policy_ratio)
from r2vpo_ascend.algos.robust import dual_variance_sums, gradient_split
from r2vpo_ascend.replay import Rollout, replay_metrics
from r2vpo_ascend.replay.reweighter import STALENESS_TAIL, staleness_bucket_name
from r2vpo_ascend.trainer.batch import collate, pad_right
from r2vpo_ascend.trainer.config import R2VPOConfig
from r2vpo_ascend.trainer.param_split import param_space_split


class PolicyUpdater:
    def __init__(self, engine, config: R2VPOConfig, dual: DualController, *, pad_id: int):
        self.engine, self.config, self.dual, self.pad_id = engine, config, dual, pad_id
        self.loss_config = config.policy_loss_config()
        self.ref_model = None
        if config.kl_coef > 0:  # an engine that partitions its weights (ZeRO-3) keeps a full copy for this
            self.ref_model = engine.frozen_copy()

    # ---- behaviour log-probs --------------------------------------------------------------
    @torch.no_grad()
    def behaviour_log_probs(self, rollouts: list[Rollout], *, num_chunks: int = 0) -> None:
        """Store log μ(response) at the current weights on each rollout (no grad), in length-sorted
        micro-batches; at least `num_chunks` forwards (padding rows: each is a collective under ZeRO-3)."""
        chunks = list(_chunks(by_length(rollouts), self.config.micro_batch_size))
        chunks += [[self._padding_row(0)] for _ in range(num_chunks - len(chunks))]
        for chunk in chunks:
            batch = collate([r.prompt_ids for r in chunk], [r.response_ids for r in chunk], self.pad_id)
            log_probs, _ = self.engine.log_probs(batch, temperature=self.config.temperature)
            for r, row in zip(chunk, log_probs.float().cpu()):
                if not r.extras.get("padding"):
                    r.old_log_probs = row[:len(r.response_ids)].clone()

    def _fill_behaviour_log_probs(self, batch: list[Rollout], minis: list[list[Rollout]], num_micro: list[int]) -> None:
        """Before pass 0: behaviour log-probs for the fresh samples (None) outside the first
        optimiser step's mini-batch, whose forward fills its own (`_old_log_probs`)."""
        first = next((i for i, n in enumerate(num_micro) if n), None)
        own = {id(r) for r in minis[first]} if first is not None else set()
        pending = [r for r in batch if r.old_log_probs is None and id(r) not in own]
        count = -(-len(pending) // self.config.micro_batch_size)
        if self.engine.world_size > 1:  # every rank runs as many forwards as the busiest one
            table = torch.zeros(self.engine.world_size, dtype=torch.float64)
            table[self.engine.rank] = count
            count = int(self.engine.all_reduce_sum(table).max().item())
        if count:
            self.behaviour_log_probs(pending, num_chunks=count)

    # ---- update -------------------------------------------------------------------------
    def update(self, batch: list[Rollout], *, current_version: int, positions: list[int] | None = None) -> dict:
        """`ppo_epochs` × `updates_per_step` optimiser steps (each followed by a dual step) on `batch`.

        `positions[i]`: index of `batch[i]` in the global batch (all ranks' samples in the order
        one process would hold them); required with several processes. Default in one process:
        the batch order.
        """
        cfg, engine = self.config, self.engine
        world = engine.world_size
        if positions is None:
            if world > 1:
                raise ValueError("update: pass `positions` (each sample's index in the global batch) "
                                 "when training with several processes")
            positions = list(range(len(batch)))
        if len(positions) != len(batch):
            raise ValueError(f"update: {len(positions)} positions for {len(batch)} samples")
        num_global = len(batch) if world == 1 else \
            int(engine.all_reduce_sum(torch.tensor([float(len(batch))], dtype=torch.float64)).item())
        local = dict(zip(positions, batch))
        if len(local) != len(batch) or not all(0 <= p < num_global for p in local):
            raise ValueError(f"update: positions must be distinct indices below the global batch size {num_global}")
        every = cfg.grad_split_every
        # parameter-space split (param_split.py): first optimiser step of RL steps N, 2N, ... (step = version + 1)
        split_due = bool(every) and cfg.loss == "r2vpo" and (current_version + 1) % every == 0 and \
            getattr(engine, "zero_stage", 0) != 3
        per_step, lam_before, largest_change = [], self.dual.lam, 0.0
        for epoch in range(cfg.ppo_epochs):
            # One shuffle of the GLOBAL batch per pass (mixes fresh and replayed), cut into
            # mini-batches; pass 0 draws exactly the single-pass order.
            order = list(range(num_global))
            random.Random(cfg.seed * 1_000_003 + current_version + epoch * 7_919).shuffle(order)
            minis = [[local[p] for p in order[i::cfg.updates_per_step] if p in local]
                     for i in range(cfg.updates_per_step)]
            num_micro = self._micro_batch_counts(minis)  # per mini-batch, the same on every rank
            if epoch == 0:
                self._fill_behaviour_log_probs(batch, minis, num_micro)
            for mini, n in zip(minis, num_micro):
                if n:
                    per_step.append(self._optimizer_step(mini, current_version, n,
                                                         param_split=split_due and not per_step))
                    largest_change = max(largest_change, abs(self.dual.lam - lam_before))
                    lam_before = self.dual.lam
        keys = dict.fromkeys(k for m in per_step for k in m)  # buckets may differ between mini-batches
        metrics = {k: sum(m[k] for m in per_step if k in m) / sum(k in m for m in per_step) for k in keys}
        metrics["r2vpo/lambda"] = self.dual.lam  # after the last dual step
        metrics["r2vpo/lambda_max_change"] = largest_change  # the largest |Δλ| of one dual step in this RL step
        return metrics

    def _micro_batch_counts(self, minis: list[list[Rollout]]) -> list[int]:
        """Micro-batches per mini-batch: the most any rank needs for its share (0: empty everywhere)."""
        size = self.config.micro_batch_size
        counts = [-(-len(mini) // size) for mini in minis]
        if self.engine.world_size == 1:
            return counts
        table = torch.zeros(self.engine.world_size, len(minis), dtype=torch.float64)
        table[self.engine.rank] = torch.tensor(counts, dtype=torch.float64)
        return [int(c) for c in self.engine.all_reduce_sum(table).max(dim=0).values.tolist()]

    def _optimizer_step(self, mini: list[Rollout], current_version: int, num_micro: int, *,
                        param_split: bool = False) -> dict:
        cfg, engine, loss_config = self.config, self.engine, self.loss_config
        micro = list(_chunks(by_length(mini), cfg.micro_batch_size))  # each pads to its own longest
        micro += [[self._padding_row(current_version)] for _ in range(num_micro - len(micro))]
        counts = engine.all_reduce_sum(torch.tensor([float(sum(len(r.response_ids) for r in mini)),
                                                     float(len(mini))], dtype=torch.float64))
        n_tokens, n_seqs = counts.tolist()
        center = None
        if cfg.center == "mean" and num_micro > 1:
            center = self._global_ratio_mean(micro, current_version)
        lam = self.dual.lam
        reduction = LossReduction(global_tokens=n_tokens, global_seqs=n_seqs, center_value=center,
                                  all_reduce=engine.all_reduce_sum if engine.world_size > 1 else None,
                                  world_size=engine.world_size, rank=engine.rank)
        stats: RatioStats | None = None
        kept = []
        terms: dict[str, float] = {}  # already global (the loss all-reduces them)
        local = {"entropy/mean": 0.0}  # this rank's partial sums: all-reduced below
        if self.ref_model is not None:
            local["kl/ref"] = 0.0
        for chunk in micro:
            tensors = self._tensors(chunk, current_version)
            log_probs, entropy = engine.log_probs(tensors["batch"], temperature=cfg.temperature, with_entropy=True)
            mask = tensors["mask"].to(log_probs.device)
            old = self._old_log_probs(chunk, log_probs, tensors["T"]).to(log_probs.device)
            advantages = tensors["advantages"].to(log_probs.device)
            out = compute_policy_loss(cfg.loss, log_probs, old, advantages, mask, loss_config, lam=lam,
                                      reduction=reduction)
            stats = out.stats if stats is None else stats.merge(out.stats)
            for key, value in out.terms.items():  # partial sums of the global loss: they add up
                terms[key] = terms.get(key, 0.0) + value
            loss = out.loss
            # The logged entropy is a token mean whatever `loss_agg`; the bonus and the KL term
            # aggregate like the policy loss (same global denominators, same L).
            local["entropy/mean"] += float((entropy.detach() * mask).sum()) / n_tokens
            if cfg.entropy_coef:
                loss = loss - cfg.entropy_coef * self._aggregate(entropy, mask, reduction)
            if self.ref_model is not None:
                kl = kl_penalty(log_probs, self._ref_log_probs(tensors["batch"]).to(log_probs.device),
                                kind=cfg.kl_estimator)
                kl_term = self._aggregate(kl, mask, reduction)
                local["kl/ref"] += float(kl_term.detach())
                loss = loss + cfg.kl_coef * kl_term
            engine.backward(loss)
            if not chunk[0].extras.get("padding"):
                kept.append((out.ratio.float().cpu(), advantages.cpu(), mask.cpu(), tensors["staleness"]))
        split_metrics = {}
        if param_split:  # at the weights of this step's gradient (autograd.grad leaves .grad alone)
            chunks = [(t["batch"], t["mask"], pad_right([r.old_log_probs for r in c], t["T"]), t["advantages"])
                      for c in micro for t in [self._tensors(c, current_version)]]
            split_metrics = param_space_split(engine, cfg, loss_config, chunks, lam=lam, reduction=reduction)
        grad_norm = engine.step()
        dual_var = self._dual_variance(stats, kept)  # global V̂ (or its robust variant) over the mini-batch
        self.dual.update(dual_var)                    # the dual step: identical λ on every rank
        local = dict(zip(local, reduction.sum(torch.tensor(list(local.values()), dtype=torch.float64)).tolist()))
        metrics = {**terms, **local, **stats.to_metrics(), **split_metrics, "grad_norm": grad_norm,
                   "r2vpo/dual_ratio_var": dual_var}
        if kept:  # replay and gradient diagnostics are over this rank's share (reweighter.py)
            ratio, advantages, mask, staleness = _concat(kept)
            metrics.update(replay_metrics(ratio, advantages, mask, staleness, lam=lam,
                                          center_value=stats.center_value()))
            if cfg.loss == "r2vpo":
                metrics.update(self._gradient_split(ratio, advantages, mask, staleness, lam, stats.center_value()))
        return metrics

    def _dual_variance(self, stats: RatioStats, kept: list) -> float:
        """The V̂ the dual step reads: the loss's (``dual_variance: spec``) or a robust variant,
        summed over this rank's tokens and all-reduced (algos/robust.py)."""
        cfg = self.config
        if cfg.dual_variance == "spec":
            return stats.ratio_var()
        sums = torch.zeros(2, dtype=torch.float64)
        for ratio, _, mask, _ in kept:
            sums += dual_variance_sums(ratio, mask, stats.center_value(), cfg.dual_variance, cfg.dual_variance_clip)
        if self.engine.world_size > 1:
            sums = self.engine.all_reduce_sum(sums)
        return float(sums[0] / sums[1].clamp(min=1.0))

    def _gradient_split(self, ratio, advantages, mask, staleness, lam: float, center: float) -> dict:
        """``grad/*``: the per-token split of ∂loss/∂logπ (algos/robust.py gradient_split), overall
        and per staleness bucket (buckets as replay/staleness_*)."""
        cfg = self.config
        options = dict(lam=lam, center=center, penalty_kind=cfg.variance_penalty, kappa=cfg.penalty_huber_kappa,
                       cap=cfg.ratio_grad_cap)
        split = gradient_split(ratio, advantages, mask.bool(), **options)
        out = {"grad/adv_part": split["adv_abs"], "grad/var_part": split["var_abs"],
               "grad/var_share": split["var_share"], "grad/top1pct_share": split["top_share"],
               "grad/top1pct_var_share": split["top_var_share"]}
        buckets = staleness.clamp(max=STALENESS_TAIL)
        for bucket in sorted(set(buckets.tolist())):
            bucket_mask = mask.bool() & (buckets == bucket).unsqueeze(-1)
            part = gradient_split(ratio, advantages, bucket_mask, **options)
            if part["tokens"]:
                prefix = f"grad/staleness_{staleness_bucket_name(int(bucket))}"
                out.update({f"{prefix}/var_share": part["var_share"], f"{prefix}/top1pct_share": part["top_share"]})
        return out

    def _aggregate(self, values: torch.Tensor, mask: torch.Tensor, reduction: LossReduction) -> torch.Tensor:
        """A per-token term aggregated like the policy loss (`loss_agg`, global denominators, L)."""
        return aggregate(values, mask, self.loss_config.loss_agg, reduction,
                         max_response_length=self.loss_config.max_response_length)

    # ---- helpers -------------------------------------------------------------------------
    def _padding_row(self, current_version: int) -> Rollout:
        """A one-token prompt with an empty response: its mask is all zero, so it adds nothing to
        the loss, the counts or the gradient, but its forward/backward joins the collectives."""
        return Rollout(prompt_ids=[self.pad_id], response_ids=[], old_log_probs=torch.zeros(0), reward=0.0,
                       advantage=0.0, version=current_version, group_id=-1, extras={"padding": True})

    def _tensors(self, chunk: list[Rollout], current_version: int) -> dict:
        batch = collate([r.prompt_ids for r in chunk], [r.response_ids for r in chunk], self.pad_id)
        return {"batch": batch, "mask": batch.response_mask, "T": batch.response_ids.shape[1],
                "advantages": torch.tensor([r.advantage for r in chunk], dtype=torch.float32),
                "staleness": torch.tensor([r.staleness(current_version) for r in chunk], dtype=torch.long)}

    def _old_log_probs(self, chunk: list[Rollout], log_probs: torch.Tensor, width: int) -> torch.Tensor:
        """Stored behaviour log-probs; fresh rollouts without them (only in the first optimiser
        step's mini-batch, at the sampling weights: module docstring) take this forward's."""
        for r, row in zip(chunk, log_probs.detach().float().cpu()):
            if r.old_log_probs is None:
                r.old_log_probs = row[:len(r.response_ids)].clone()
        return pad_right([r.old_log_probs for r in chunk], width)

    @torch.no_grad()
    def _global_ratio_mean(self, micro: list[list[Rollout]], current_version: int) -> float:
        sums = torch.zeros(2, dtype=torch.float64)  # Σ m·ρ, Σ m
        for chunk in micro:
            tensors = self._tensors(chunk, current_version)
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
                                          temperature=self.config.temperature,
                                          compute_dtype=self.engine.compute_dtype)
        return log_probs


def by_length(rollouts: list[Rollout]) -> list[Rollout]:
    """`rollouts` by total length (prompt + response), ties in the given order: consecutive
    micro-batches then hold similar lengths and pad little."""
    return sorted(rollouts, key=lambda r: len(r.prompt_ids) + len(r.response_ids))


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
