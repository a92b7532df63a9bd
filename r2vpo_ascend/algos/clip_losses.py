"""The clipping baselines R²VPO is compared with, in the same registry and with the same
aggregation and metrics (docs/algorithms.md "Registry and baselines").

    loss = agg( −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) )        (PPO / GRPO)

A token with A > 0 and ρ > 1 + ε_high, or A < 0 and ρ < 1 − ε_low, gets zero gradient: this
is what R²VPO replaces by the smooth effective advantage A − 2λ(ρ − c). The share of such
tokens is ``clip/frac``; their effective advantage in the shared metrics is 0. One function,
:func:`ppo_clipped_tokens`, says which tokens these are (the replay diagnostics use it too).

Default ε when the config leaves them ``None``:

| loss          | ratio                     | ε_low | ε_high | source                       |
|---------------|---------------------------|-------|--------|------------------------------|
| ``ppo_clip``  | config ``ratio_level``    | 0.2   | 0.2    | PPO / GRPO                   |
| ``clip_higher`` | config ``ratio_level``  | 0.2   | 0.28   | DAPO ("clip-higher")         |
| ``gspo``      | sequence (always)         | 3e-4  | 4e-4   | GSPO paper (arXiv 2507.18071) |

A value set in the config (``clip_eps_low`` / ``clip_eps_high`` not None) always wins.
GSPO's paper aggregates per sequence: use ``loss_agg: seq-mean-token-mean`` to match it.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .aggregation import LossReduction, aggregate
from .losses import (PolicyBatch, PolicyLossConfig, PolicyLossOutput, policy_output, prepare_policy_inputs,
                     ratio_scope, register_policy_loss)

PPO_CLIP_EPS = (0.2, 0.2)
CLIP_HIGHER_EPS = (0.2, 0.28)
GSPO_CLIP_EPS = (3e-4, 4e-4)


def ppo_clipped_tokens(ratio: torch.Tensor, advantages: torch.Tensor, clip_eps_low: float,
                       clip_eps_high: float) -> torch.Tensor:
    """Bool ``[B, T]``: tokens whose gradient PPO's clip zeroes, A > 0 with ρ > 1 + ε_high or
    A < 0 with ρ < 1 − ε_low (the clipped branch is then the active, constant one)."""
    return (((advantages > 0) & (ratio > 1.0 + clip_eps_high))
            | ((advantages < 0) & (ratio < 1.0 - clip_eps_low)))


def clipped_surrogate_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                           response_mask: torch.Tensor, *, clip_eps_low: float, clip_eps_high: float,
                           ratio_level: str = "token", loss_agg: str = "token-mean", center: str = "mean",
                           max_response_length: int | None = None, dual_clip: float | None = None,
                           reduction: LossReduction | None = None) -> PolicyLossOutput:
    """PPO clipped surrogate; shapes and output as :func:`~r2vpo_ascend.algos.losses.r2vpo_loss`,
    settings as the :class:`PolicyLossConfig` fields of the same names (validated there).

    ``dual_clip`` (c > 1): for A < 0 the per-token loss is also capped at −c·A, so tokens
    with ρ > c get zero gradient. ``center`` only affects the reported ``r2vpo/ratio_var``.
    """
    config = PolicyLossConfig(ratio_level=ratio_level, center=center, loss_agg=loss_agg,
                              clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high,
                              max_response_length=max_response_length, dual_clip=dual_clip)
    batch = prepare_policy_inputs(log_probs, old_log_probs, advantages, response_mask)
    return _clipped(batch, config, (clip_eps_low, clip_eps_high), reduction)


def _clipped(batch: PolicyBatch, config: PolicyLossConfig, eps: tuple[float, float],
             reduction: LossReduction | None) -> PolicyLossOutput:
    clip_eps_low, clip_eps_high = eps
    scope = ratio_scope(batch, config.ratio_level, config.center, reduction)
    rho, adv = scope.ratio, batch.advantages

    unclipped = -adv * rho
    clipped_obj = -adv * rho.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    per_token = torch.maximum(unclipped, clipped_obj)  # = −min(ρA, clip(ρ)A)
    clipped = ppo_clipped_tokens(rho, adv, clip_eps_low, clip_eps_high)
    if config.dual_clip is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * config.dual_clip), per_token)
        clipped = clipped | ((adv < 0) & (rho > config.dual_clip))
    clipped = clipped.detach() & batch.mask

    loss = aggregate(per_token, batch.mask, config.loss_agg, scope.reduction,
                     max_response_length=config.max_response_length)
    effective_adv = torch.where(clipped, torch.zeros_like(adv), adv)
    return policy_output({"loss/policy": loss}, scope, batch, effective_adv, clipped)


def _registered(log_probs, old_log_probs, advantages, response_mask, config: PolicyLossConfig,
                defaults: tuple[float, float], reduction: LossReduction | None, **overrides) -> PolicyLossOutput:
    if overrides:
        config = replace(config, **overrides)
    batch = prepare_policy_inputs(log_probs, old_log_probs, advantages, response_mask)
    return _clipped(batch, config, config.clip_eps(defaults), reduction)


@register_policy_loss("ppo_clip")
def ppo_clip_loss(log_probs, old_log_probs, advantages, response_mask, config, *, lam=0.0, reduction=None):
    """GRPO's loss: PPO clip with ε = 0.2 on both sides unless the config sets them (λ unused)."""
    return _registered(log_probs, old_log_probs, advantages, response_mask, config, PPO_CLIP_EPS, reduction)


@register_policy_loss("clip_higher")
def clip_higher_loss(log_probs, old_log_probs, advantages, response_mask, config, *, lam=0.0, reduction=None):
    """DAPO's decoupled clip: ε_low = 0.2, ε_high = 0.28 unless the config sets them (λ unused)."""
    return _registered(log_probs, old_log_probs, advantages, response_mask, config, CLIP_HIGHER_EPS, reduction)


@register_policy_loss("gspo")
def gspo_loss(log_probs, old_log_probs, advantages, response_mask, config, *, lam=0.0, reduction=None):
    """GSPO: sequence-level ratio exp(mean_t log ρ) with clipping, ε = 3e-4 / 4e-4 by default (λ unused)."""
    return _registered(log_probs, old_log_probs, advantages, response_mask, config, GSPO_CLIP_EPS, reduction,
                       ratio_level="sequence")
