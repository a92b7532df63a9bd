"""Numerical guards shared by the losses: finite checks under a mask and overflow-safe exp.

A NaN in a masked-out (padding) position is not an error: padding log-probs are often
garbage. The losses therefore check finiteness only under the response mask and replace
masked-out entries with zeros (``torch.where``) before any ``exp``, so garbage there can
reach neither the loss nor its gradient.
"""

from __future__ import annotations

import torch
from .errors import NonFiniteError  # noqa: F401  (re-exported)

# Log-ratios are clamped to [-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP] before exp: exp(20) ≈ 4.9e8
# is finite in float32 (and its square, 2.4e17, too). This is overflow safety, NOT a trust
# region: no ratio in a normal range (|log ρ| < 20) is affected.
LOG_RATIO_CLAMP = 20.0


def check_finite(name: str, tensor: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Raise :class:`NonFiniteError` if ``tensor`` has NaN/inf where ``mask`` is true.

    Args:
        name: what the tensor is (``"log_probs"``), used in the message.
        tensor: any shape.
        mask: optional bool tensor broadcastable to ``tensor``; entries where it is False
            are ignored (e.g. padding).
    """
    bad = ~torch.isfinite(tensor)
    if mask is not None:
        bad = bad & mask
    num_bad = int(bad.sum().item())
    if num_bad == 0:
        return
    num_nan = int((torch.isnan(tensor) & bad).sum().item())
    total = int(mask.expand_as(tensor).sum().item()) if mask is not None else tensor.numel()
    where = " under the response mask" if mask is not None else ""
    raise NonFiniteError(
        f"`{name}` has {num_bad} non-finite entries{where} ({num_nan} NaN, {num_bad - num_nan} inf) "
        f"out of {total} checked, shape {tuple(tensor.shape)}"
    )


def safe_exp(log_value: torch.Tensor) -> torch.Tensor:
    """exp(clamp(x, −20, 20)): the overflow-safe exp used for every ratio (see LOG_RATIO_CLAMP)."""
    return torch.exp(log_value.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
