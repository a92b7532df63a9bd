"""Loss aggregation over tokens and sequences, and the global denominators used when a batch
is split over micro-batches (gradient accumulation) and ranks (data parallelism).

One function, :func:`aggregate`, turns a per-token quantity ``values [B, T]`` into the scalar
loss term; every policy loss (R²VPO and the clipping baselines) and the trainer's KL term use
it, so the four modes mean exactly the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")

AllReduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LossReduction:
    """How to turn one micro-batch's loss into a partial sum of the global loss.

    With ``reduction=None`` a loss is computed over the batch it is given. With a
    ``LossReduction``, denominators are global so that SUMMING the returned losses (and
    therefore gradients) over all micro-batches and ranks gives the loss of the whole batch.

    Attributes:
        global_tokens: number of response tokens in the whole batch (all micro-batches, all
            ranks): the denominator of ``token-mean`` and of V̂. ``None``: the count over
            the reduction scope (this micro-batch, summed over ranks if ``all_reduce``).
        global_seqs: number of non-empty responses in the whole batch: the denominator of the
            ``seq-mean-*`` modes. ``None``: as for ``global_tokens``.
        center_value: a precomputed global centre c of the ratio variance (e.g. from a
            no-grad pass over all micro-batches). Only used with ``center="mean"``.
        all_reduce: sums a 1-D float64 tensor (on the loss's device) element-wise across
            ranks and returns the result; makes c, V̂, the denominators and all metrics
            global. ``None``: single process.
        all_reduce_max: the same with max instead of sum (for ``r2vpo/ratio_max``); if
            ``None`` the max is local to this rank.
    """

    global_tokens: float | torch.Tensor | None = None
    global_seqs: float | torch.Tensor | None = None
    center_value: float | None = None
    all_reduce: AllReduce | None = None
    all_reduce_max: AllReduce | None = None

    def __post_init__(self) -> None:
        for field_name in ("global_tokens", "global_seqs"):
            value = getattr(self, field_name)
            if value is not None and not isinstance(value, torch.Tensor) and not value > 0:
                raise ValueError(f"LossReduction.{field_name} must be > 0 or None, got {value}")


def sequence_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Number of response tokens per sequence, ``[B]`` (int64), from a bool mask ``[B, T]``."""
    return mask.sum(dim=-1)


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    loss_agg: str = "token-mean",
    reduction: LossReduction | None = None,
    *,
    max_response_length: int | None = None,
) -> torch.Tensor:
    """Aggregate per-token ``values [B, T]`` under ``mask [B, T]`` into a scalar.

    Masked-out entries are replaced by 0 with ``torch.where`` (NaN there is ignored).
    With n = number of masked tokens, S = number of non-empty sequences, T_i = tokens of
    sequence i (n and S taken from ``reduction`` when it gives them):

    - ``token-mean``:              Σ_{i,t} m·v / n                       (DAPO; default)
    - ``seq-mean-token-mean``:     Σ_i (Σ_t m·v / T_i) / S               (original GRPO)
    - ``seq-mean-token-sum``:      Σ_i Σ_t m·v / S
    - ``seq-mean-token-sum-norm``: Σ_{i,t} m·v / (S · L), L = ``max_response_length``
      (default: T, the padded width)                                     (Dr. GRPO)

    Sequences with no response token are not counted in S.
    """
    if loss_agg not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg must be one of {list(LOSS_AGG_MODES)}, got {loss_agg!r}")
    if values.shape != mask.shape:
        raise ValueError(f"aggregate: values {tuple(values.shape)} and mask {tuple(mask.shape)} differ in shape")
    mask = mask.bool()
    masked_values = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    lengths = sequence_lengths(mask)

    if loss_agg == "token-mean":
        num_tokens = _denominator(reduction, "global_tokens", lengths.sum())
        return masked_values.sum() / num_tokens

    num_seqs = _denominator(reduction, "global_seqs", (lengths > 0).sum())
    if loss_agg == "seq-mean-token-mean":
        per_seq_mean = masked_values.sum(dim=-1) / lengths.clamp(min=1).to(values.dtype)
        return per_seq_mean.sum() / num_seqs
    if loss_agg == "seq-mean-token-sum":
        return masked_values.sum() / num_seqs
    # seq-mean-token-sum-norm (Dr. GRPO): a constant length normaliser, no per-sequence length bias.
    length_norm = values.shape[-1] if max_response_length is None else max_response_length
    if not length_norm > 0:
        raise ValueError(f"max_response_length must be > 0, got {max_response_length}")
    return masked_values.sum() / (num_seqs * length_norm)


def _denominator(reduction: LossReduction | None, field_name: str, local_count: torch.Tensor) -> torch.Tensor | float:
    """The global count from ``reduction`` if set, else the local count (at least 1, so an
    empty batch gives a zero loss rather than NaN)."""
    value = getattr(reduction, field_name) if reduction is not None else None
    if value is None:
        return local_count.clamp(min=1)
    return value if isinstance(value, torch.Tensor) else float(value)
