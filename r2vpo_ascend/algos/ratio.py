"""The policy ratio ρ and its sufficient statistics.

ρ[i,t] = π_θ(y_t | …) / μ(y_t | …) = exp(logp − old_logp)      (docs/algorithms.md "Notation")

:class:`RatioStats` holds sums (not means) so that statistics from micro-batches and ranks
merge by addition: the trainer merges the ``stats`` of every micro-batch's
:class:`~r2vpo_ascend.algos.losses.PolicyLossOutput` and reads the global V̂ for the dual step
from the result. Sums are of (ρ − 1), not ρ: ratios sit near 1, and shifting by 1 avoids the
cancellation of Σρ²/n − (Σρ/n)² in low precision.

:func:`effective_advantage` is R²VPO's A − 2λ(ρ − c), the one place it is computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from .aggregation import LossReduction
from .numerics import safe_exp

RATIO_LEVELS = ("token", "sequence")

# "Eureka" diagnostics look at positive-advantage tokens above PPO's clip bound 1 + 0.2:
# the tokens PPO-clip (ε = 0.2) silences and R²VPO keeps. Fixed, so runs compare.
EUREKA_RATIO_THRESHOLD = 1.2


def policy_ratio(log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor,
                 ratio_level: str = "token") -> torch.Tensor:
    """ρ ``[B, T]`` from log-probs ``[B, T]`` (masked-out entries must already be finite).

    - ``token``:    ρ[i,t] = exp(logp[i,t] − old_logp[i,t])
    - ``sequence``: ρ_i = exp(Σ_t m·(logp − old_logp) / T_i), the geometric mean of the token
      ratios of response i (GSPO), broadcast to its tokens.

    The log-ratio is clamped to [−20, 20] before exp for overflow safety only. Masked-out
    positions hold ρ = 1 (token level) and are ignored by every consumer.
    """
    log_ratio = torch.where(mask, log_probs - old_log_probs, torch.zeros_like(log_probs))
    if ratio_level == "token":
        return safe_exp(log_ratio)
    if ratio_level == "sequence":
        lengths = mask.sum(dim=-1, keepdim=True).clamp(min=1).to(log_ratio.dtype)
        seq_log_ratio = log_ratio.sum(dim=-1, keepdim=True) / lengths  # [B, 1]
        return safe_exp(seq_log_ratio).expand_as(log_ratio)
    raise ValueError(f"ratio_level must be one of {list(RATIO_LEVELS)}, got {ratio_level!r}")


def effective_advantage(advantages: torch.Tensor, ratio: torch.Tensor, center: torch.Tensor | float,
                        lam: float) -> torch.Tensor:
    """R²VPO's effective advantage A − 2λ(ρ − c), ``[B, T]`` (ρ detached): each token's gradient
    is ρ/n times it (docs/algorithms.md). The loss, its metrics and the replay diagnostics all
    call this function."""
    return advantages - 2.0 * float(lam) * (ratio.detach() - center)


@dataclass
class RatioStats:
    """Mergeable sums over the masked tokens of a batch (floats, float64 precision): the public
    way to accumulate (Σm, Σm·ρ, Σm·ρ²) over micro-batches and ranks, and to read V̂ from them.

    ``RatioStats()`` covers no tokens. Accumulate either the ``stats`` of each loss call
    (``total = total.merge(out.stats)``) or raw ratios (``total = total.add(ratio, mask)``);
    once per optimiser step, ``total.all_reduce(reduction)`` sums over ranks (skip it when
    the loss already ran under that reduction: its stats are global); then
    ``total.ratio_var()`` is the global V̂ for :meth:`DualController.update`.

    ``center``: the c of the variance: a number (1 for ``center="one"``, or a precomputed
    global c), or ``None`` for "the mean ρ of whatever these stats cover".
    """

    num_tokens: float = 0.0
    num_seqs: float = 0.0
    sum_dev: float = 0.0                      # Σ m·(ρ − 1)
    sum_dev_sq: float = 0.0                   # Σ m·(ρ − 1)²
    ratio_max: float = float("-inf")
    num_adv_nonzero: float = 0.0              # tokens with A ≠ 0
    num_eff_adv_flipped: float = 0.0          # ... whose effective advantage has the opposite sign
    num_pos_adv: float = 0.0                  # tokens with A > 0
    num_pos_adv_above_clip: float = 0.0       # ... with ρ > EUREKA_RATIO_THRESHOLD
    sum_eff_adv_pos_above_clip: float = 0.0   # Σ effective advantage over those
    num_clipped: float = 0.0                  # tokens whose gradient clipping zeroes (0 for R²VPO)
    num_pos_adv_above_clip_zeroed: float = 0.0  # A > 0, ρ > EUREKA_RATIO_THRESHOLD, gradient zeroed by clipping
    center: float | None = None

    # Order of the sums in the tensors exchanged by all_reduce (see ``from_sums``).
    MOMENT_FIELDS = ("num_tokens", "num_seqs", "sum_dev", "sum_dev_sq")
    DIAGNOSTIC_FIELDS = ("num_adv_nonzero", "num_eff_adv_flipped", "num_pos_adv", "num_pos_adv_above_clip",
                         "sum_eff_adv_pos_above_clip", "num_clipped", "num_pos_adv_above_clip_zeroed")

    @classmethod
    def from_sums(cls, moments: torch.Tensor, diagnostics: torch.Tensor, ratio_max: torch.Tensor,
                  center: float | None) -> "RatioStats":
        """Build from the float64 vectors of :func:`moment_sums`, :func:`diagnostic_sums` and
        :func:`max_ratio` (possibly all-reduced). One host sync."""
        values = torch.cat([moments, diagnostics, ratio_max.reshape(1)]).tolist()
        names = cls.MOMENT_FIELDS + cls.DIAGNOSTIC_FIELDS + ("ratio_max",)
        return cls(**dict(zip(names, values)), center=center)

    def merge(self, other: "RatioStats") -> "RatioStats":
        """Statistics of the union of two disjoint sets of tokens (sums add, max takes max)."""
        if (self.center is None) != (other.center is None) or (
                self.center is not None and not math.isclose(self.center, other.center, rel_tol=1e-9, abs_tol=1e-12)):
            raise ValueError(f"cannot merge RatioStats with different centers {self.center} and {other.center}")
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)
                  if f.name not in ("ratio_max", "center")}
        return RatioStats(**summed, ratio_max=max(self.ratio_max, other.ratio_max), center=self.center)

    def add(self, ratio: torch.Tensor, mask: torch.Tensor) -> "RatioStats":
        """These statistics plus the moments of ``ratio [B, T]`` under ``mask [B, T]`` (a new object)."""
        return self.merge(ratio_statistics(ratio, mask, center=self.center))

    def all_reduce(self, reduction: LossReduction) -> "RatioStats":
        """The statistics over all ranks of ``reduction`` (sums add, the max is the largest):
        one collective. A reduction without ``all_reduce`` returns an equal copy."""
        names = self.MOMENT_FIELDS + self.DIAGNOSTIC_FIELDS
        summed, largest = reduction.sum_and_max(torch.tensor([getattr(self, n) for n in names], dtype=torch.float64),
                                                torch.tensor([self.ratio_max], dtype=torch.float64))
        return RatioStats(**dict(zip(names, summed.tolist())), ratio_max=float(largest[0]), center=self.center)

    @property
    def sum_ratio(self) -> float:
        return self.num_tokens + self.sum_dev

    @property
    def sum_ratio_sq(self) -> float:
        return self.sum_dev_sq + 2.0 * self.sum_dev + self.num_tokens

    def mean(self) -> float:
        """Masked mean of ρ (1.0 when there are no tokens)."""
        return 1.0 + self.sum_dev / self.num_tokens if self.num_tokens > 0 else 1.0

    def center_value(self, center: str | float | None = None) -> float:
        """The c of the variance: ``None`` → the recorded :attr:`center` (the mean if that is
        None too); ``"mean"`` → :meth:`mean`; ``"one"`` → 1; a number → itself."""
        if center is None:
            center = self.center
        if center is None or center == "mean":
            return self.mean()
        if center == "one":
            return 1.0
        if isinstance(center, str):
            raise ValueError(f"center must be 'mean', 'one' or a number, got {center!r}")
        return float(center)

    def ratio_var(self, center: str | float | None = None) -> float:
        """V̂ = Σ m·(ρ − c)² / n with c = :meth:`center_value` (``center``)."""
        if self.num_tokens <= 0:
            return 0.0
        n, shift = self.num_tokens, self.center_value(center) - 1.0  # (ρ − c) = (ρ − 1) − (c − 1)
        return max(0.0, (self.sum_dev_sq - 2.0 * shift * self.sum_dev + n * shift * shift) / n)

    @property
    def ess(self) -> float:
        """Effective sample size (Σρ)² / Σρ² over the tokens (= n when every ρ = 1)."""
        return self.sum_ratio ** 2 / self.sum_ratio_sq if self.sum_ratio_sq > 0 else 0.0

    @property
    def ess_frac(self) -> float:
        return self.ess / self.num_tokens if self.num_tokens > 0 else 0.0

    def to_metrics(self) -> dict[str, float]:
        """The ratio metrics every policy loss reports (stable names, docs/algorithms.md "Metrics")."""
        return {
            "r2vpo/ratio_mean": self.mean(),
            "r2vpo/ratio_var": self.ratio_var(),
            "r2vpo/ratio_max": self.ratio_max if self.num_tokens > 0 else 0.0,
            "r2vpo/eff_adv_flip_frac": _fraction(self.num_eff_adv_flipped, self.num_adv_nonzero),
            "ratio/pos_adv_above_clip_frac": _fraction(self.num_pos_adv_above_clip, self.num_pos_adv),
            "ratio/pos_adv_above_clip_eff_adv_mean": _fraction(self.sum_eff_adv_pos_above_clip,
                                                               self.num_pos_adv_above_clip),
            "clip/frac": _fraction(self.num_clipped, self.num_tokens),
            # counts (not shares) of the eureka tokens, and of those whose gradient the loss zeroes
            "ratio/pos_adv_above_clip_tokens": self.num_pos_adv_above_clip,
            "ratio/pos_adv_above_clip_zeroed_tokens": self.num_pos_adv_above_clip_zeroed,
        }


def _fraction(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


@torch.no_grad()
def moment_sums(ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 ``[4]``: tokens, non-empty sequences, Σ m·(ρ − 1), Σ m·(ρ − 1)² (order of
    ``RatioStats.MOMENT_FIELDS``)."""
    dev = torch.where(mask, ratio.detach() - 1.0, torch.zeros_like(ratio))
    lengths = mask.sum(dim=-1)
    parts = (lengths.sum(), (lengths > 0).sum(), dev.sum(), (dev * dev).sum())
    return torch.stack([p.to(torch.float64) for p in parts])


@torch.no_grad()
def diagnostic_sums(ratio: torch.Tensor, advantages: torch.Tensor, effective_advantage: torch.Tensor,
                    mask: torch.Tensor, clipped: torch.Tensor | None = None) -> torch.Tensor:
    """float64 ``[7]`` in the order of ``RatioStats.DIAGNOSTIC_FIELDS``; all inputs ``[B, T]``.

    A token's effective advantage "flips" when it has the opposite sign of A (strictly:
    a zeroed gradient, as clipping gives, is not a flip).
    """
    ratio, advantages, effective_advantage = ratio.detach(), advantages.detach(), effective_advantage.detach()
    adv_nonzero = mask & (advantages != 0)
    flipped = adv_nonzero & (effective_advantage * advantages < 0)
    pos_adv = mask & (advantages > 0)
    pos_above = pos_adv & (ratio > EUREKA_RATIO_THRESHOLD)
    eff_above = torch.where(pos_above, effective_advantage, torch.zeros_like(effective_advantage))
    zero = torch.zeros((), device=ratio.device)
    num_clipped = (clipped & mask).sum() if clipped is not None else zero
    above_zeroed = (clipped & pos_above).sum() if clipped is not None else zero
    parts = (adv_nonzero.sum(), flipped.sum(), pos_adv.sum(), pos_above.sum(), eff_above.sum(), num_clipped,
             above_zeroed)
    return torch.stack([p.to(torch.float64) for p in parts])


@torch.no_grad()
def max_ratio(ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 ``[1]``: the largest masked ρ (−inf when nothing is masked in)."""
    masked = torch.where(mask, ratio.detach(), torch.full_like(ratio, float("-inf")))
    return masked.amax().reshape(1).to(torch.float64) if masked.numel() else torch.full(
        (1,), float("-inf"), dtype=torch.float64, device=ratio.device)


def ratio_statistics(ratio: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor | None = None,
                     effective_advantage: torch.Tensor | None = None, *, clipped: torch.Tensor | None = None,
                     center: float | None = None) -> RatioStats:
    """Local :class:`RatioStats` of ``ratio [B, T]`` under ``mask [B, T]``.

    ``advantages`` (``[B, T]``) enables the advantage diagnostics; ``effective_advantage``
    defaults to ``advantages`` (no flips). ``center``: see :class:`RatioStats`.
    """
    mask = mask.bool()
    if advantages is None:
        advantages = torch.zeros_like(ratio)
    if effective_advantage is None:
        effective_advantage = advantages
    return RatioStats.from_sums(moment_sums(ratio, mask),
                                diagnostic_sums(ratio, advantages, effective_advantage, mask, clipped),
                                max_ratio(ratio, mask), center)
