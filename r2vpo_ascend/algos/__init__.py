"""Pure tensor maths of R²VPO (docs/algorithms.md): tensors in, tensors out; no I/O, no device checks.

- ``losses``      — :func:`r2vpo_loss`, the loss contract (:class:`PolicyLossConfig` in,
                    :class:`PolicyLossOutput` out), the registry and :func:`compute_policy_loss`
- ``clip_losses`` — the baselines ``ppo_clip``, ``clip_higher`` (DAPO), ``gspo``
- ``ratio``       — ρ (token / sequence level), :func:`effective_advantage` and the mergeable
                    :class:`RatioStats` (the accumulator of Σm, Σmρ, Σmρ² over micro-batches and ranks)
- ``aggregation`` — :func:`aggregate` (the four ``loss_agg`` modes) and :class:`LossReduction`
- ``advantages``  — ``grpo``, ``dr_grpo``, ``rloo``
- ``dual``        — :class:`DualController` (λ)
- ``kl``          — k1/k2/k3 KL estimators
- ``numerics``    — :func:`check_finite`, :class:`NonFiniteError`
"""

from .advantages import ADVANTAGE_ESTIMATORS, compute_advantages, register_advantage
from .aggregation import LOSS_AGG_MODES, LossReduction, aggregate
from .clip_losses import clipped_surrogate_loss, ppo_clipped_tokens  # importing it registers the baselines
from .dual import DUAL_MODES, DualController
from .kl import KL_KINDS, kl_penalty
from .losses import (CENTERS, POLICY_LOSSES, PolicyLossConfig, PolicyLossOutput, compute_policy_loss, r2vpo_loss,
                     register_policy_loss)
from .numerics import NonFiniteError, check_finite
from .ratio import RATIO_LEVELS, RatioStats, effective_advantage, policy_ratio, ratio_statistics

__all__ = [
    "ADVANTAGE_ESTIMATORS", "CENTERS", "DUAL_MODES", "KL_KINDS", "LOSS_AGG_MODES", "POLICY_LOSSES", "RATIO_LEVELS",
    "DualController", "LossReduction", "NonFiniteError", "PolicyLossConfig", "PolicyLossOutput", "RatioStats",
    "aggregate", "check_finite", "clipped_surrogate_loss", "compute_advantages", "compute_policy_loss",
    "effective_advantage", "kl_penalty", "policy_ratio", "ppo_clipped_tokens", "r2vpo_loss", "ratio_statistics",
    "register_advantage", "register_policy_loss",
]
