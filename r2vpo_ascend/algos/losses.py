"""Policy losses: the R²VPO loss and a registry that the clipping baselines share.

R²VPO (R2VPO_SPEC.md "Objective"): maximise E[ρA] subject to Var[ρ] ≤ δ, through the
Lagrangian ℒ(θ, λ) = E[ρA] − λ(V̂ − δ). The primal step minimises

    loss = −agg(ρ·A) + λ·V̂,     V̂ = Σ m·(ρ − c)² / n

whose gradient is a policy gradient with the effective advantage A − 2λ(ρ − c):

    ∂ℒ/∂logp_j = (ρ_j / n)·(A_j − 2λ(ρ_j − c))          (token-mean; tested under autograd)

Every loss in :data:`POLICY_LOSSES` takes ``(log_probs, old_log_probs, advantages,
response_mask, config, *, lam, reduction)`` and returns ``(loss, metrics)``; the metrics come
from one shared helper (:func:`policy_metrics`), so every loss reports the same names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from .aggregation import LOSS_AGG_MODES, LossReduction, aggregate
from .numerics import check_finite
from .ratio import RATIO_LEVELS, RatioStats, diagnostic_sums, max_ratio, moment_sums, policy_ratio
from .robust import PENALTIES, penalty, penalty_slope, truncated_ratio

CENTERS = ("mean", "one")

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, Any]]]
POLICY_LOSSES: dict[str, PolicyLossFn] = {}


@dataclass
class PolicyLossConfig:
    """The knobs a policy loss reads. Any object with these attributes works too (the
    trainer passes its own config); a missing attribute takes the default below.

    Attributes:
        ratio_level: ``token`` (default) or ``sequence`` (GSPO's geometric-mean ratio).
        center: c of V̂: ``mean`` (masked batch mean of ρ, default) or ``one``.
        loss_agg: see :func:`~r2vpo_ascend.algos.aggregation.aggregate`.
        clip_eps_low / clip_eps_high: ε of the clipping baselines. ``None`` = the loss's own
            default: ``ppo_clip`` 0.2/0.2, ``clip_higher`` 0.2/0.28 (DAPO), ``gspo``
            3e-4/4e-4 (GSPO paper). Ignored by ``r2vpo``.
        max_response_length: L of ``seq-mean-token-sum-norm`` (default: the padded width T).
        dual_clip: optional dual-clip bound c > 1 for A < 0 tokens (clipping baselines).
        variance_penalty / penalty_huber_kappa / ratio_grad_cap: R²VPO remedies (see
            :mod:`~r2vpo_ascend.algos.robust`); the defaults are the spec's loss.
    """

    ratio_level: str = "token"
    center: str = "mean"
    loss_agg: str = "token-mean"
    clip_eps_low: float | None = None
    clip_eps_high: float | None = None
    max_response_length: int | None = None
    dual_clip: float | None = None
    variance_penalty: str = "quadratic"
    penalty_huber_kappa: float = 0.5
    ratio_grad_cap: float | None = None

    def __post_init__(self) -> None:
        _check_choice("ratio_level", self.ratio_level, RATIO_LEVELS)
        _check_choice("variance_penalty", self.variance_penalty, PENALTIES)
        _check_choice("center", self.center, CENTERS)
        _check_choice("loss_agg", self.loss_agg, LOSS_AGG_MODES)
        for name in ("clip_eps_low", "clip_eps_high"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"PolicyLossConfig.{name} must be in [0, 1) or None, got {value}")
        if self.max_response_length is not None and self.max_response_length <= 0:
            raise ValueError(f"PolicyLossConfig.max_response_length must be > 0, got {self.max_response_length}")
        if self.dual_clip is not None and not self.dual_clip > 1.0:
            raise ValueError(f"PolicyLossConfig.dual_clip must be > 1 or None, got {self.dual_clip}")


_CONFIG_DEFAULTS = {f: getattr(PolicyLossConfig, f) for f in PolicyLossConfig.__dataclass_fields__}


def config_value(config: Any, name: str) -> Any:
    """``config.name``, or the :class:`PolicyLossConfig` default if absent or None."""
    value = getattr(config, name, None)
    return _CONFIG_DEFAULTS[name] if value is None else value


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator adding a loss to :data:`POLICY_LOSSES` under ``name``."""
    def decorator(loss_fn: PolicyLossFn) -> PolicyLossFn:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = loss_fn
        return loss_fn
    return decorator


def compute_policy_loss(name: str, log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                        response_mask: torch.Tensor, config: Any = None, *, lam: float = 0.0,
                        reduction: LossReduction | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Look up the loss ``name`` in :data:`POLICY_LOSSES` and apply it (shapes as :func:`r2vpo_loss`)."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; registered: {sorted(POLICY_LOSSES)}")
    return POLICY_LOSSES[name](log_probs, old_log_probs, advantages, response_mask,
                               PolicyLossConfig() if config is None else config, lam=lam, reduction=reduction)


# ---------------------------------------------------------------------------------------
# Shared plumbing: validated inputs, ρ and c over the reduction scope, common metrics.
# ---------------------------------------------------------------------------------------
@dataclass
class PolicyBatch:
    """Validated inputs, all ``[B, T]`` in the compute dtype (≥ float32); masked-out entries
    are zero so that garbage there (even NaN) never reaches the loss or its gradient."""

    log_probs: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor  # bool


def prepare_policy_inputs(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                          response_mask: torch.Tensor) -> PolicyBatch:
    """Check shapes and finiteness under the mask; broadcast ``advantages [B]`` to ``[B, T]``."""
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be [batch, seq], got shape {tuple(log_probs.shape)}")
    for name, tensor in (("old_log_probs", old_log_probs), ("response_mask", response_mask)):
        if tensor.shape != log_probs.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(log_probs.shape)} "
                             "like log_probs")
    if advantages.dim() == 1 and advantages.shape[0] == log_probs.shape[0]:
        advantages = advantages.unsqueeze(-1).expand_as(log_probs)
    elif advantages.shape != log_probs.shape:
        raise ValueError(f"advantages must be [batch] or [batch, seq] = {tuple(log_probs.shape)}, "
                         f"got {tuple(advantages.shape)}")
    mask = response_mask.bool()
    for name, tensor in (("log_probs", log_probs), ("old_log_probs", old_log_probs), ("advantages", advantages)):
        check_finite(name, tensor.detach(), mask)
    dtype = torch.promote_types(log_probs.dtype, torch.float32)
    zero = torch.zeros((), dtype=dtype, device=log_probs.device)
    return PolicyBatch(log_probs=torch.where(mask, log_probs.to(dtype), zero),
                       old_log_probs=torch.where(mask, old_log_probs.detach().to(dtype), zero),
                       advantages=torch.where(mask, advantages.detach().to(dtype), zero),
                       mask=mask)


@dataclass
class RatioScope:
    """ρ with the quantities taken over the reduction scope (this batch, or all ranks)."""

    ratio: torch.Tensor           # ρ [B, T], differentiable
    center: torch.Tensor          # c, 0-dim, detached
    center_spec: float | None     # c as RatioStats records it (None = "the mean")
    moments: torch.Tensor         # float64 [4], see RatioStats.MOMENT_FIELDS
    reduction: LossReduction      # with the scope's token/seq counts as default denominators


def ratio_scope(batch: PolicyBatch, ratio_level: str, center: str, reduction: LossReduction | None) -> RatioScope:
    """Compute ρ, then c and the denominators, all-reducing the moment sums when asked."""
    _check_choice("center", center, CENTERS)
    ratio = policy_ratio(batch.log_probs, batch.old_log_probs, batch.mask, ratio_level)
    reduction = reduction or LossReduction()
    moments = moment_sums(ratio, batch.mask)
    if reduction.all_reduce is not None:
        moments = reduction.all_reduce(moments)
        # Unless given, denominators are the counts over all ranks (no host sync: tensors).
        tokens, seqs = reduction.global_tokens, reduction.global_seqs
        reduction = replace(reduction, global_tokens=moments[0] if tokens is None else tokens,
                            global_seqs=moments[1] if seqs is None else seqs)
    if center == "one":
        center_spec = 1.0
    elif reduction.center_value is not None:
        center_spec = float(reduction.center_value)
    else:
        center_spec = None
    if center_spec is None:  # c = masked mean of ρ over the scope = 1 + Σ(ρ − 1)/n
        center_value = 1.0 + moments[2] / moments[0].clamp(min=1.0)
    else:
        center_value = torch.tensor(center_spec, dtype=torch.float64, device=ratio.device)
    return RatioScope(ratio=ratio, center=center_value.to(ratio.dtype).detach(), center_spec=center_spec,
                      moments=moments, reduction=reduction)


def policy_metrics(loss_terms: dict[str, torch.Tensor], scope: RatioScope, batch: PolicyBatch,
                   effective_advantage: torch.Tensor, clipped: torch.Tensor | None, lam: float) -> dict[str, Any]:
    """The metrics every policy loss returns, global over the reduction scope.

    ``loss_terms`` (e.g. ``{"loss/policy": loss}``) are summed over ranks, so they are the
    global values when the denominators are global. ``metrics["_stats"]`` is the
    :class:`RatioStats` of this call, to merge across micro-batches (not for logging).
    """
    reduction = scope.reduction
    diagnostics = diagnostic_sums(scope.ratio, batch.advantages, effective_advantage, batch.mask, clipped)
    losses = torch.stack([value.detach().to(torch.float64).reshape(()) for value in loss_terms.values()])
    summed = torch.cat([diagnostics, losses])
    largest = max_ratio(scope.ratio, batch.mask)
    if reduction.all_reduce is not None:
        summed = reduction.all_reduce(summed)
    if reduction.all_reduce_max is not None:
        largest = reduction.all_reduce_max(largest)
    num_diag = len(RatioStats.DIAGNOSTIC_FIELDS)
    stats = RatioStats.from_sums(scope.moments, summed[:num_diag], largest, scope.center_spec)
    metrics: dict[str, Any] = dict(zip(loss_terms, summed[num_diag:].tolist()))
    metrics.update(stats.to_metrics())
    metrics["r2vpo/lambda"] = float(lam)
    metrics["_stats"] = stats
    return metrics


# ---------------------------------------------------------------------------------------
# R²VPO
# ---------------------------------------------------------------------------------------
def r2vpo_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
               response_mask: torch.Tensor, lam: float, *, ratio_level: str = "token", center: str = "mean",
               loss_agg: str = "token-mean", max_response_length: int | None = None,
               reduction: LossReduction | None = None, variance_penalty: str = "quadratic",
               penalty_huber_kappa: float = 0.5,
               ratio_grad_cap: float | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """R²VPO primal loss  −agg(ρ·A) + λ·V̂  (R2VPO_SPEC.md "Objective").

    With the remedies (:mod:`~r2vpo_ascend.algos.robust`) the penalty is λ·Σm·φ(ρ − c)/n
    (``variance_penalty: huber``) and ρ's gradient weight min(ρ, C) (``ratio_grad_cap``); the
    defaults are the spec's loss exactly.

    Args:
        log_probs: ``[B, T]`` log π_θ of the response tokens (requires grad).
        old_log_probs: ``[B, T]`` log μ under the behaviour policy (no grad).
        advantages: ``[B]`` (per response) or ``[B, T]``.
        response_mask: ``[B, T]``, 1 for response tokens; other entries are ignored, even NaN.
        lam: λ ≥ 0, held constant in the primal step.
        ratio_level: ``token`` or ``sequence`` (see :func:`policy_ratio`).
        center: ``mean`` (c = masked mean of ρ over the global batch, or
            ``reduction.center_value``) or ``one`` (c = 1).
        loss_agg, max_response_length: aggregation of ρ·A (see :func:`aggregate`); V̂ is
            always a token mean.
        reduction: global denominators / all-reduce for micro-batches and ranks.

    Returns:
        ``(loss, metrics)``: 0-dim loss (a partial sum of the global loss under ``reduction``)
        and float metrics, plus ``metrics["_stats"]`` (:class:`RatioStats`).
    """
    lam = _check_lambda(lam)
    batch = prepare_policy_inputs(log_probs, old_log_probs, advantages, response_mask)
    scope = ratio_scope(batch, ratio_level, center, reduction)
    c, adv, mask = scope.center, batch.advantages, batch.mask
    rho = truncated_ratio(scope.ratio, ratio_grad_cap)  # = scope.ratio without a cap

    pg_loss = -aggregate(rho * adv, mask, loss_agg, scope.reduction, max_response_length=max_response_length)
    # V̂ = Σ m·(ρ − c)² / n over the global batch. c is detached: its gradient contribution,
    # −(2/n)·Σ_k m_k(ρ_k − c)·∂c/∂logp_j, is zero because Σ_k m_k(ρ_k − c) = 0 when c is the
    # mean of the same ρ, so the closed form (ρ_j/n)(A_j − 2λ(ρ_j − c)) holds either way.
    ratio_var = aggregate(penalty(rho - c, variance_penalty, penalty_huber_kappa), mask, "token-mean",
                          scope.reduction)
    var_penalty = lam * ratio_var
    loss = pg_loss + var_penalty

    # Effective advantage A − λφ'(ρ − c) (spec: A − 2λ(ρ − c)): each token's gradient ∝ it.
    effective_advantage = adv - lam * penalty_slope(rho.detach() - c, variance_penalty, penalty_huber_kappa)
    metrics = policy_metrics({"loss/policy": loss, "r2vpo/pg_loss": pg_loss, "r2vpo/var_penalty": var_penalty},
                             scope, batch, effective_advantage, None, lam)
    return loss, metrics


@register_policy_loss("r2vpo")
def _r2vpo_policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                       response_mask: torch.Tensor, config: Any, *, lam: float = 0.0,
                       reduction: LossReduction | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    return r2vpo_loss(log_probs, old_log_probs, advantages, response_mask, lam,
                      ratio_level=config_value(config, "ratio_level"), center=config_value(config, "center"),
                      loss_agg=config_value(config, "loss_agg"),
                      max_response_length=config_value(config, "max_response_length"), reduction=reduction,
                      variance_penalty=config_value(config, "variance_penalty"),
                      penalty_huber_kappa=config_value(config, "penalty_huber_kappa"),
                      ratio_grad_cap=config_value(config, "ratio_grad_cap"))


def _check_choice(field_name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{field_name} must be one of {list(choices)}, got {value!r}")


def _check_lambda(lam: float | torch.Tensor) -> float:
    lam = float(lam)
    if not (lam >= 0.0 and lam != float("inf")):
        raise ValueError(f"lam (λ) must be a finite number >= 0, got {lam}")
    return lam
