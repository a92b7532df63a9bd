"""Remedies for R²VPO's outlier sensitivity off-policy (issue 11), and the gradient split that
measures it. Pure tensor code; the spec's formulation is the default of every option here.

The mechanism (R2VPO_SPEC.md "What the gradient does"): the token gradient of the spec's loss is

    ∂loss/∂logp_j = (1/n)·(−A_j·ρ_j + λ·φ'(ρ_j − c)·ρ_j),      φ(x) = x²  →  φ'(x) = 2x

so the variance part grows like ρ², and one token at ρ = 55 outweighs hundreds of ordinary ones.
Remedies, each an option (docs/algorithms.md "Remedies"):

- ``variance_penalty: huber`` — φ(x) = x² for |x| ≤ κ, 2κ|x| − κ² beyond (Huber, "Robust
  Estimation of a Location Parameter", 1964): the same penalty near c, a slope bounded by 2κ
  beyond, so an outlier's pull is at most 2λκ·ρ instead of 2λ(ρ − c)·ρ.
- ``ratio_grad_cap: C`` — truncated importance weights (Espeholt et al. 2018, V-trace's ρ̄;
  Yao et al. 2025, TIS): a token's gradient weight is min(ρ, C) instead of ρ. Values (the
  loss, V̂) are unchanged; only the chain-rule factor ρ in both parts is truncated.
- ``dual_variance: winsorized | log_ratio`` — what the dual step reads (not the loss):
  Σm·min((ρ − c)², κ²)/n, or M2PO's second moment of the log-ratio Σm·(log ρ)²/n (Zheng et
  al. 2025, "Prosperity before Collapse: How Far Can Off-Policy RL Reach with Stale Data on
  LLMs?", arXiv 2510.01161), both far less sensitive to single extreme tokens than V̂.
"""

from __future__ import annotations

import math

import torch

PENALTIES = ("quadratic", "huber")
DUAL_VARIANCES = ("spec", "winsorized", "log_ratio")
TOP_FRACTION = 0.01  # the "largest |ρ − c|" tokens whose share of the gradient is reported


def penalty(dev: torch.Tensor, kind: str = "quadratic", kappa: float = 0.5) -> torch.Tensor:
    """φ(ρ − c) per token (differentiable in ``dev``)."""
    if kind == "quadratic":
        return dev * dev
    if kind == "huber":
        absolute = dev.abs()
        return torch.where(absolute <= kappa, dev * dev, 2.0 * kappa * absolute - kappa * kappa)
    raise ValueError(f"variance_penalty must be one of {list(PENALTIES)}, got {kind!r}")


def penalty_slope(dev: torch.Tensor, kind: str = "quadratic", kappa: float = 0.5) -> torch.Tensor:
    """φ'(ρ − c): 2(ρ − c), or for ``huber`` the same clipped to ±2κ."""
    if kind == "quadratic":
        return 2.0 * dev
    if kind == "huber":
        return 2.0 * dev.clamp(-kappa, kappa)
    raise ValueError(f"variance_penalty must be one of {list(PENALTIES)}, got {kind!r}")


def penalized_effective_advantage(advantages: torch.Tensor, ratio: torch.Tensor, center: torch.Tensor | float,
                                  lam: float, kind: str, kappa: float) -> torch.Tensor:
    """A − λ·φ'(ρ − c), detached: the effective advantage under a non-quadratic penalty (for
    ``quadratic`` it is :func:`~r2vpo_ascend.algos.ratio.effective_advantage`, A − 2λ(ρ − c))."""
    return advantages.detach() - float(lam) * penalty_slope(ratio.detach() - center, kind, kappa)


def truncated_ratio(ratio: torch.Tensor, cap: float | None) -> torch.Tensor:
    """ρ with the value of ρ and the gradient of min(ρ, C)·∂logπ (``cap`` None: ρ itself).

    ∂ρ/∂logp = ρ; the returned tensor has ∂/∂logp = ρ·min(1, C/ρ) = min(ρ, C).
    """
    if cap is None:
        return ratio
    weight = (cap / ratio.detach().clamp(min=1e-30)).clamp(max=1.0)
    detached = ratio.detach()
    return detached + (ratio - detached) * weight


@torch.no_grad()
def dual_variance_sums(ratio: torch.Tensor, mask: torch.Tensor, center: float, kind: str,
                       clip: float = 1.0) -> torch.Tensor:
    """float64 ``[2]``: (Σ m·v, Σ m) of the dual step's per-token variance term v (to all-reduce).

    ``kind``: ``spec`` v = (ρ − c)², ``winsorized`` v = min((ρ − c)², clip²), ``log_ratio``
    v = (log ρ)².
    """
    mask = mask.bool()
    ratio = torch.where(mask, ratio.detach().to(torch.float64), torch.ones((), dtype=torch.float64))
    if kind == "spec":
        values = (ratio - center) ** 2
    elif kind == "winsorized":
        values = (ratio - center).clamp(-clip, clip) ** 2
    elif kind == "log_ratio":
        values = torch.log(ratio.clamp(min=1e-300)) ** 2
    else:
        raise ValueError(f"dual_variance must be one of {list(DUAL_VARIANCES)}, got {kind!r}")
    return torch.stack([(values * mask).sum(), mask.sum().to(torch.float64)])


@torch.no_grad()
def gradient_split(ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *, lam: float,
                   center: float, penalty_kind: str = "quadratic", kappa: float = 0.5,
                   cap: float | None = None, top_fraction: float = TOP_FRACTION) -> dict[str, float]:
    """Per-token split of ∂loss/∂logπ into its advantage and variance parts (token-mean R²VPO).

    advantage part a_j = A_j·w_j, variance part v_j = λ·φ'(ρ_j − c)·w_j, with w_j = min(ρ_j, C)
    (= ρ_j without a cap); token j's gradient is (−a_j + v_j)/n. Returns

    - ``adv_abs`` = Σ|a|/n, ``var_abs`` = Σ|v|/n, ``var_share`` = Σ|v| / (Σ|a| + Σ|v|);
    - ``top_share``: share of Σ|−a + v| carried by the ⌈top_fraction·n⌉ tokens with the largest
      |ρ − c|; ``top_var_share``: their share of Σ|v|;
    - ``tokens`` = n.

    ``advantages`` is ``[B]`` or ``[B, T]``; empty masks give zeros.
    """
    mask = mask.bool()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(ratio)
    rho = ratio.detach().to(torch.float64)[mask]
    adv = advantages.detach().to(torch.float64)[mask]
    n = rho.numel()
    if n == 0:
        return {"adv_abs": 0.0, "var_abs": 0.0, "var_share": 0.0, "top_share": 0.0, "top_var_share": 0.0,
                "tokens": 0.0}
    weight = rho if cap is None else rho.clamp(max=cap)
    dev = rho - center
    adv_part = adv * weight
    var_part = float(lam) * penalty_slope(dev, penalty_kind, kappa) * weight
    total = (var_part - adv_part).abs()
    adv_sum, var_sum = float(adv_part.abs().sum()), float(var_part.abs().sum())
    k = max(1, math.ceil(top_fraction * n))
    top = torch.topk(dev.abs(), k).indices
    total_sum = float(total.sum())
    return {
        "adv_abs": adv_sum / n,
        "var_abs": var_sum / n,
        "var_share": var_sum / (adv_sum + var_sum) if adv_sum + var_sum > 0 else 0.0,
        "top_share": float(total[top].sum()) / total_sum if total_sum > 0 else 0.0,
        "top_var_share": float(var_part[top].abs().sum()) / var_sum if var_sum > 0 else 0.0,
        "tokens": float(n),
    }
