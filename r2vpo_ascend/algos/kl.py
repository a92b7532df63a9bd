"""Per-token estimators of KL(π_θ ‖ π_ref) from samples of π_θ (Schulman's k1/k2/k3).

With d = log π_ref − log π_θ at the sampled token:

- ``k1`` = −d                    unbiased, high variance, can be negative
- ``k2`` = d² / 2                biased, low variance, ≥ 0
- ``k3`` = exp(d) − d − 1        unbiased, low variance, ≥ 0 (the default; GRPO's KL term)

The trainer adds β·aggregate(kl_penalty(...), mask, loss_agg) to the loss itself.
"""

from __future__ import annotations

import torch

from .numerics import LOG_RATIO_CLAMP

KL_KINDS = ("k1", "k2", "k3")


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL estimate ``[B, T]`` from ``log_probs`` and ``ref_log_probs`` (both ``[B, T]``).

    For ``k3`` the log-ratio d is clamped to [−20, 20] before exp (overflow safety only).
    Masking is the caller's job (through ``aggregate``).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kl kind must be one of {list(KL_KINDS)}, got {kind!r}")
    if log_probs.shape != ref_log_probs.shape:
        raise ValueError(f"log_probs {tuple(log_probs.shape)} and ref_log_probs {tuple(ref_log_probs.shape)} "
                         "differ in shape")
    log_ratio = ref_log_probs.detach() - log_probs  # d = log π_ref − log π_θ
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(log_ratio) - log_ratio - 1.0
