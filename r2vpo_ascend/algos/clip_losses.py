"""The clipping baselines R²VPO is compared with, in the same registry and with the same
aggregation and metrics (R2VPO_SPEC.md "Baselines in the same loss registry").

    loss = agg( −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) )        (PPO / GRPO)

A token with A > 0 and ρ > 1 + ε_high, or A < 0 and ρ < 1 − ε_low, gets zero gradient: this
is what R²VPO replaces by the smooth effective advantage A − 2λ(ρ − c). The share of such
tokens is ``clip/frac``; their effective advantage in the shared metrics is 0.

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

from typing import Any

import torch

from .aggregation import LossReduction, aggregate
from .losses import config_value, policy_metrics, prepare_policy_inputs, ratio_scope, register_policy_loss

PPO_CLIP_EPS = (0.2, 0.2)
CLIP_HIGHER_EPS = (0.2, 0.28)
GSPO_CLIP_EPS = (3e-4, 4e-4)


def clipped_surrogate_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                           response_mask: torch.Tensor, *, clip_eps_low: float, clip_eps_high: float,
                           ratio_level: str = "token", loss_agg: str = "token-mean", center: str = "mean",
                           max_response_length: int | None = None, dual_clip: float | None = None,
                           lam: float = 0.0, reduction: LossReduction | None = None
                           ) -> tuple[torch.Tensor, dict[str, Any]]:
    """PPO clipped surrogate; shapes as :func:`~r2vpo_ascend.algos.losses.r2vpo_loss`.

    ``dual_clip`` (c > 1): for A < 0 the per-token loss is also capped at −c·A, so tokens
    with ρ > c get zero gradient. ``center`` only affects the reported ``r2vpo/ratio_var``;
    ``lam`` is only reported (``r2vpo/lambda``).
    """
    if not (0.0 <= clip_eps_low < 1.0 and clip_eps_high >= 0.0):
        raise ValueError(f"need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got {clip_eps_low}, {clip_eps_high}")
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 or None, got {dual_clip}")
    batch = prepare_policy_inputs(log_probs, old_log_probs, advantages, response_mask)
    scope = ratio_scope(batch, ratio_level, center, reduction)
    rho, adv = scope.ratio, batch.advantages

    unclipped = -adv * rho
    clipped_obj = -adv * rho.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    per_token = torch.maximum(unclipped, clipped_obj)  # = −min(ρA, clip(ρ)A)
    # Tokens whose gradient the clip zeroes (the clipped branch is the active, constant one).
    clipped = ((adv > 0) & (rho > 1.0 + clip_eps_high)) | ((adv < 0) & (rho < 1.0 - clip_eps_low))
    if dual_clip is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * dual_clip), per_token)
        clipped = clipped | ((adv < 0) & (rho > dual_clip))
    clipped = clipped.detach() & batch.mask

    loss = aggregate(per_token, batch.mask, loss_agg, scope.reduction, max_response_length=max_response_length)
    effective_advantage = torch.where(clipped, torch.zeros_like(adv), adv)
    metrics = policy_metrics({"loss/policy": loss}, scope, batch, effective_advantage, clipped, lam)
    return loss, metrics


def _clip_eps(config: Any, defaults: tuple[float, float]) -> tuple[float, float]:
    """(ε_low, ε_high): the config's value where set (not None), else the loss's default."""
    low, high = getattr(config, "clip_eps_low", None), getattr(config, "clip_eps_high", None)
    return (defaults[0] if low is None else float(low), defaults[1] if high is None else float(high))


def _from_config(config: Any, eps_defaults: tuple[float, float], ratio_level: str | None = None) -> dict[str, Any]:
    clip_eps_low, clip_eps_high = _clip_eps(config, eps_defaults)
    return dict(clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high,
                ratio_level=ratio_level or config_value(config, "ratio_level"),
                loss_agg=config_value(config, "loss_agg"), center=config_value(config, "center"),
                max_response_length=config_value(config, "max_response_length"),
                dual_clip=config_value(config, "dual_clip"))


@register_policy_loss("ppo_clip")
def ppo_clip_loss(log_probs, old_log_probs, advantages, response_mask, config, *, lam=0.0, reduction=None):
    """GRPO's loss: PPO clip with ε = 0.2 on both sides unless the config sets them."""
    return clipped_surrogate_loss(log_probs, old_log_probs, advantages, response_mask,
                                  **_from_config(config, PPO_CLIP_EPS), lam=lam, reduction=reduction)


@register_policy_loss("clip_higher")
def clip_higher_loss(log_probs, old_log_probs, advantages, response_mask, config, *, lam=0.0, reduction=None):
    """DAPO's decoupled clip: ε_low = 0.2, ε_high = 0.28 unless the config sets them."""
    return clipped_surrogate_loss(log_probs, old_log_probs, advantages, response_mask,
                                  **_from_config(config, CLIP_HIGHER_EPS), lam=lam, reduction=reduction)


@register_policy_loss("gspo")
def gspo_loss(log_probs, old_log_probs, advantages, response_mask, config, *, lam=0.0, reduction=None):
    """GSPO: sequence-level ratio exp(mean_t log ρ) with clipping, ε = 3e-4 / 4e-4 by default."""
    return clipped_surrogate_loss(log_probs, old_log_probs, advantages, response_mask,
                                  **_from_config(config, GSPO_CLIP_EPS, ratio_level="sequence"),
                                  lam=lam, reduction=reduction)
