"""Policy losses: the R²VPO loss, the loss contract and a registry the clipping baselines share.

R²VPO (docs/algorithms.md "Objective"): maximise E[ρA] subject to Var[ρ] ≤ δ, through the
Lagrangian ℒ(θ, λ) = E[ρA] − λ(V̂ − δ). The primal step minimises

    loss = −agg(ρ·A) + λ·V̂,     V̂ = Σ m·(ρ − c)² / n

whose gradient is a policy gradient with the effective advantage A − 2λ(ρ − c)
(:func:`~r2vpo_ascend.algos.ratio.effective_advantage`):

    ∂ℒ/∂logp_j = (ρ_j / n)·(A_j − 2λ(ρ_j − c))          (token-mean; tested under autograd)

The contract: every loss in :data:`POLICY_LOSSES` takes ``(log_probs, old_log_probs,
advantages, response_mask, config: PolicyLossConfig, *, lam, reduction)`` and returns a
:class:`PolicyLossOutput`; the output is built by one helper (:func:`policy_output`), so every
loss reports the same names. :class:`PolicyLossConfig` is the one place the loss settings are
validated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch

from .aggregation import LOSS_AGG_MODES, LossReduction, aggregate
from .errors import ConfigError
from .numerics import check_finite
from .ratio import (RATIO_LEVELS, RatioStats, diagnostic_sums, effective_advantage, max_ratio, moment_sums,
                    policy_ratio)
from .registry import lookup, register
from .robust import PENALTIES, penalized_effective_advantage, penalty, truncated_ratio

CENTERS = ("mean", "one")


@dataclass(frozen=True)
class PolicyLossConfig:
    """The settings a policy loss reads, validated on construction (:class:`ConfigError`).

    The trainer builds it from its config with ``R2VPOConfig.policy_loss_config()``.

    Attributes:
        ratio_level: ``token`` (default) or ``sequence`` (GSPO's geometric-mean ratio).
        center: c of V̂: ``mean`` (masked batch mean of ρ, default) or ``one``.
        loss_agg: see :func:`~r2vpo_ascend.algos.aggregation.aggregate`.
        clip_eps_low / clip_eps_high: ε of the clipping baselines. ``None`` = the loss's own
            default: ``ppo_clip`` 0.2/0.2, ``clip_higher`` 0.2/0.28 (DAPO), ``gspo``
            3e-4/4e-4 (GSPO paper). Ignored by ``r2vpo``.
        max_response_length: L of ``seq-mean-token-sum-norm`` (Dr. GRPO): a constant of the
            run (the trainer uses ``max_new_tokens``). ``None``: the padded width T of the
            batch given, allowed only without global denominators (see :func:`aggregate`).
        dual_clip: optional dual-clip bound c > 1 for A < 0 tokens (clipping baselines).
        variance_penalty / penalty_huber_kappa / ratio_grad_cap: R²VPO remedies (issue 11,
            :mod:`~r2vpo_ascend.algos.robust`); the defaults are the spec's loss exactly.
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
        for name, choices in (("ratio_level", RATIO_LEVELS), ("center", CENTERS), ("loss_agg", LOSS_AGG_MODES),
                              ("variance_penalty", PENALTIES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"`{name}`: {getattr(self, name)!r} is not one of {list(choices)}")
        if self.clip_eps_low is not None and not 0.0 <= self.clip_eps_low < 1.0:
            raise ConfigError(f"`clip_eps_low` must be in [0, 1) or null, got {self.clip_eps_low}")
        if self.clip_eps_high is not None and not (0.0 <= self.clip_eps_high and math.isfinite(self.clip_eps_high)):
            raise ConfigError(f"`clip_eps_high` must be >= 0 and finite, or null, got {self.clip_eps_high}")
        length = self.max_response_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ConfigError(f"`max_response_length` must be an int >= 1 or null, got {length!r}")
        if self.dual_clip is not None and not (self.dual_clip > 1.0 and math.isfinite(self.dual_clip)):
            raise ConfigError(f"`dual_clip` must be > 1 and finite, or null, got {self.dual_clip}")
        if not (self.penalty_huber_kappa > 0 and math.isfinite(self.penalty_huber_kappa)):
            raise ConfigError(f"`penalty_huber_kappa` must be > 0 and finite, got {self.penalty_huber_kappa}")
        if self.ratio_grad_cap is not None and not (self.ratio_grad_cap >= 1 and math.isfinite(self.ratio_grad_cap)):
            raise ConfigError(f"`ratio_grad_cap` must be >= 1 and finite, or null, got {self.ratio_grad_cap}")

    def clip_eps(self, defaults: tuple[float, float]) -> tuple[float, float]:
        """(ε_low, ε_high): the configured values where set, else a loss's ``defaults``."""
        return (defaults[0] if self.clip_eps_low is None else float(self.clip_eps_low),
                defaults[1] if self.clip_eps_high is None else float(self.clip_eps_high))


@dataclass(frozen=True)
class PolicyLossOutput:
    """What every policy loss returns.

    Attributes:
        loss: the 0-dim differentiable loss (under a :class:`LossReduction` with global
            denominators: this call's partial sum of the global loss).
        terms: float values of the loss terms, ``loss/policy`` and the loss's own parts (R²VPO:
            ``r2vpo/pg_loss``, ``r2vpo/var_penalty``), summed over the reduction's ranks.
            Partial sums too: they add up over micro-batches.
        stats: the :class:`RatioStats` of this call (global over ranks under ``all_reduce``);
            merge them over micro-batches, read V̂ with ``.ratio_var()``.
        ratio: ρ ``[B, T]``, detached (1 on masked-out tokens at token level).
    """

    loss: torch.Tensor
    terms: dict[str, float]
    stats: RatioStats
    ratio: torch.Tensor

    def metrics(self) -> dict[str, float]:
        """Floats for logging: the terms and ``stats.to_metrics()`` (docs/algorithms.md "Metrics")."""
        return {**self.terms, **self.stats.to_metrics()}


PolicyLossFn = Callable[..., PolicyLossOutput]
POLICY_LOSSES: dict[str, PolicyLossFn] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator adding a loss with the contract's signature to :data:`POLICY_LOSSES` under ``name``."""
    return register(POLICY_LOSSES, name, "policy loss")


def compute_policy_loss(name: str, log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                        response_mask: torch.Tensor, config: PolicyLossConfig | None = None, *, lam: float = 0.0,
                        reduction: LossReduction | None = None) -> PolicyLossOutput:
    """Look up the loss ``name`` in :data:`POLICY_LOSSES` and apply it (shapes as :func:`r2vpo_loss`)."""
    loss_fn = lookup(POLICY_LOSSES, name, "policy loss")
    if config is None:
        config = PolicyLossConfig()
    elif not isinstance(config, PolicyLossConfig):
        raise TypeError(f"compute_policy_loss: config must be a PolicyLossConfig, got {type(config).__name__} "
                        "(the trainer's R2VPOConfig gives one with .policy_loss_config())")
    return loss_fn(log_probs, old_log_probs, advantages, response_mask, config, lam=lam, reduction=reduction)


# ---------------------------------------------------------------------------------------
# Shared plumbing: validated inputs, ρ and c over the reduction scope, the common output.
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
    ratio = policy_ratio(batch.log_probs, batch.old_log_probs, batch.mask, ratio_level)
    reduction = reduction or LossReduction()
    moments = moment_sums(ratio, batch.mask)
    if reduction.all_reduce is not None:
        moments = reduction.sum(moments)
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


def policy_output(terms: dict[str, torch.Tensor], scope: RatioScope, batch: PolicyBatch,
                  effective_adv: torch.Tensor, clipped: torch.Tensor | None) -> PolicyLossOutput:
    """The :class:`PolicyLossOutput` of every policy loss, global over the reduction scope.

    ``terms`` (``{"loss/policy": loss, ...}``, the loss first) are summed over ranks with the
    diagnostic counts and the largest ρ, in one collective.
    """
    diagnostics = diagnostic_sums(scope.ratio, batch.advantages, effective_adv, batch.mask, clipped)
    losses = torch.stack([value.detach().to(torch.float64).reshape(()) for value in terms.values()])
    summed, largest = scope.reduction.sum_and_max(torch.cat([diagnostics, losses]), max_ratio(scope.ratio, batch.mask))
    num_diag = len(RatioStats.DIAGNOSTIC_FIELDS)
    stats = RatioStats.from_sums(scope.moments, summed[:num_diag], largest, scope.center_spec)
    return PolicyLossOutput(loss=terms["loss/policy"], terms=dict(zip(terms, summed[num_diag:].tolist())),
                            stats=stats, ratio=scope.ratio.detach())


# ---------------------------------------------------------------------------------------
# R²VPO
# ---------------------------------------------------------------------------------------
def r2vpo_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
               response_mask: torch.Tensor, lam: float, *, ratio_level: str = "token", center: str = "mean",
               loss_agg: str = "token-mean", max_response_length: int | None = None,
               reduction: LossReduction | None = None, variance_penalty: str = "quadratic",
               penalty_huber_kappa: float = 0.5, ratio_grad_cap: float | None = None) -> PolicyLossOutput:
    """R²VPO primal loss  −agg(ρ·A) + λ·V̂  (docs/algorithms.md "Objective").

    With the remedies (:mod:`~r2vpo_ascend.algos.robust`) the penalty is λ·Σm·φ(ρ − c)/n
    (``variance_penalty: huber``) and ρ's gradient weight min(ρ, C) (``ratio_grad_cap``); the
    defaults are the spec's loss exactly.

    Args:
        log_probs: ``[B, T]`` log π_θ of the response tokens (requires grad).
        old_log_probs: ``[B, T]`` log μ under the behaviour policy (no grad).
        advantages: ``[B]`` (per response) or ``[B, T]``.
        response_mask: ``[B, T]``, 1 for response tokens; other entries are ignored, even NaN.
        lam: λ ≥ 0, held constant in the primal step.
        ratio_level, center, loss_agg, max_response_length: the :class:`PolicyLossConfig`
            fields (validated there); V̂ is always a token mean.
        reduction: global denominators / all-reduce for micro-batches and ranks.

    Returns:
        A :class:`PolicyLossOutput`: ``.loss`` to backpropagate, ``.stats.ratio_var()`` for
        the dual step, ``.metrics()`` to log.
    """
    config = PolicyLossConfig(ratio_level=ratio_level, center=center, loss_agg=loss_agg,
                              max_response_length=max_response_length, variance_penalty=variance_penalty,
                              penalty_huber_kappa=penalty_huber_kappa, ratio_grad_cap=ratio_grad_cap)
    return _r2vpo_policy_loss(log_probs, old_log_probs, advantages, response_mask, config, lam=lam,
                              reduction=reduction)


@register_policy_loss("r2vpo")
def _r2vpo_policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                       response_mask: torch.Tensor, config: PolicyLossConfig, *, lam: float = 0.0,
                       reduction: LossReduction | None = None) -> PolicyLossOutput:
    lam = _check_lambda(lam)
    batch = prepare_policy_inputs(log_probs, old_log_probs, advantages, response_mask)
    scope = ratio_scope(batch, config.ratio_level, config.center, reduction)
    c, adv, mask = scope.center, batch.advantages, batch.mask
    rho = truncated_ratio(scope.ratio, config.ratio_grad_cap)  # = scope.ratio without a cap

    pg_loss = -aggregate(rho * adv, mask, config.loss_agg, scope.reduction,
                         max_response_length=config.max_response_length)
    # V̂ = Σ m·(ρ − c)² / n over the global batch. c is detached: its gradient contribution,
    # −(2/n)·Σ_k m_k(ρ_k − c)·∂c/∂logp_j, is zero because Σ_k m_k(ρ_k − c) = 0 when c is the
    # mean of the same ρ, so the closed form (ρ_j/n)(A_j − 2λ(ρ_j − c)) holds either way.
    # (With `variance_penalty: huber` the argument needs φ = x²: c is held fixed, see robust.py.)
    ratio_var = aggregate(penalty(rho - c, config.variance_penalty, config.penalty_huber_kappa), mask, "token-mean",
                          scope.reduction)
    var_penalty = lam * ratio_var
    loss = pg_loss + var_penalty
    if config.variance_penalty == "quadratic":
        eff_adv = effective_advantage(adv, rho, c, lam)
    else:
        eff_adv = penalized_effective_advantage(adv, rho, c, lam, config.variance_penalty, config.penalty_huber_kappa)
    return policy_output({"loss/policy": loss, "r2vpo/pg_loss": pg_loss, "r2vpo/var_penalty": var_penalty},
                         scope, batch, eff_adv, None)


def _check_lambda(lam: float | torch.Tensor) -> float:
    lam = float(lam)
    if not (lam >= 0.0 and lam != float("inf")):
        raise ValueError(f"lam (λ) must be a finite number >= 0, got {lam}")
    return lam
