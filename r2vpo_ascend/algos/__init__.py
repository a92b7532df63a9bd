"""Pure tensor maths of R²VPO (R2VPO_SPEC.md): tensors in, tensors out; no I/O, no device checks.

- ``losses``      — :func:`r2vpo_loss`, the policy-loss registry and :func:`compute_policy_loss`
- ``clip_losses`` — the baselines ``ppo_clip``, ``clip_higher`` (DAPO), ``gspo``
- ``ratio``       — ρ (token / sequence level) and the mergeable :class:`RatioStats`
- ``aggregation`` — :func:`aggregate` (the four ``loss_agg`` modes) and :class:`LossReduction`
- ``advantages``  — ``grpo``, ``dr_grpo``, ``rloo``
- ``dual``        — :class:`DualController` (λ)
- ``kl``          — k1/k2/k3 KL estimators
- ``numerics``    — :func:`check_finite`, :class:`NonFiniteError`
"""

from .advantages import ADVANTAGE_ESTIMATORS, compute_advantages, register_advantage
from .aggregation import LOSS_AGG_MODES, LossReduction, aggregate
from .clip_losses import clipped_surrogate_loss  # importing it registers ppo_clip, clip_higher, gspo
from .dual import DUAL_MODES, DualController
from .kl import KL_KINDS, kl_penalty
from .losses import (CENTERS, POLICY_LOSSES, PolicyLossConfig, compute_policy_loss, r2vpo_loss,
                     register_policy_loss)
from .numerics import NonFiniteError, check_finite
from .ratio import RATIO_LEVELS, RatioStats, policy_ratio, ratio_statistics, ratio_step_metrics

__all__ = [
    "ADVANTAGE_ESTIMATORS", "CENTERS", "DUAL_MODES", "KL_KINDS", "LOSS_AGG_MODES", "POLICY_LOSSES", "RATIO_LEVELS",
    "DualController", "LossReduction", "NonFiniteError", "PolicyLossConfig", "RatioStats",
    "aggregate", "check_finite", "clipped_surrogate_loss", "compute_advantages", "compute_policy_loss",
    "kl_penalty", "policy_ratio", "r2vpo_loss", "ratio_statistics", "ratio_step_metrics", "register_advantage",
    "register_policy_loss",
]
