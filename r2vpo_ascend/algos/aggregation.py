"""Loss aggregation over tokens and sequences, and the global denominators used when a batch
is split over micro-batches (gradient accumulation) and ranks (data parallelism).

One function, :func:`aggregate`, turns a per-token quantity ``values [B, T]`` into the scalar
loss term; every policy loss (R²VPO and the clipping baselines) and the trainer's KL and
entropy terms use it, so the four modes mean exactly the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ConfigError

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")

AllReduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LossReduction:
    """How to turn one micro-batch's loss into a partial sum of the global loss, and the one
    path by which sums and maxima cross ranks.

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
        all_reduce: sums a 1-D float64 tensor element-wise across ranks and returns the
            result; makes c, V̂, the denominators and all metrics global. ``None``: one process.
        world_size, rank: this process's place among the ranks ``all_reduce`` spans. Maxima
            travel in the same collective as the sums (each rank writes its own slot of a
            zero vector, the sum of the slots is then every rank's value), so a rank must know
            its slot: required with ``all_reduce`` on several ranks.
    """

    global_tokens: float | torch.Tensor | None = None
    global_seqs: float | torch.Tensor | None = None
    center_value: float | None = None
    all_reduce: AllReduce | None = None
    world_size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        for field_name in ("global_tokens", "global_seqs"):
            value = getattr(self, field_name)
            if value is not None and not isinstance(value, torch.Tensor) and not value > 0:
                raise ConfigError(f"LossReduction.{field_name} must be > 0 or None, got {value}")
        if not (isinstance(self.world_size, int) and self.world_size >= 1 and 0 <= self.rank < self.world_size):
            raise ConfigError(f"LossReduction needs world_size >= 1 and 0 <= rank < world_size, "
                              f"got world_size={self.world_size}, rank={self.rank}")
        if self.world_size > 1 and self.all_reduce is None:
            raise ConfigError(f"LossReduction(world_size={self.world_size}) needs `all_reduce` (a sum over ranks)")

    @classmethod
    def from_process_group(cls, group=None, **kwargs) -> "LossReduction":
        """A reduction over a ``torch.distributed`` process group (default: the world), for
        integrations that hold one; ``kwargs`` are the other fields. One process (or no
        initialised group): no collective at all."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return cls(**kwargs)

        def all_reduce(values: torch.Tensor) -> torch.Tensor:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM, group=group)
            return values
        return cls(all_reduce=all_reduce, world_size=dist.get_world_size(group), rank=dist.get_rank(group), **kwargs)

    @property
    def is_local(self) -> bool:
        """True when nothing reaches beyond the batch given (no global counts, no all-reduce)."""
        return self.global_tokens is None and self.global_seqs is None and self.all_reduce is None

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (1-D float64) summed over ranks; themselves in one process."""
        return values if self.all_reduce is None else self.all_reduce(values)

    def sum_and_max(self, sums: torch.Tensor, maxima: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sums`` summed and ``maxima`` maximised over ranks, in ONE collective (1-D float64 each)."""
        if self.all_reduce is None:
            return sums, maxima
        slots = torch.zeros(self.world_size, maxima.numel(), dtype=maxima.dtype, device=maxima.device)
        slots[self.rank] = maxima
        reduced = self.all_reduce(torch.cat([sums, slots.reshape(-1)]))
        return reduced[:sums.numel()], reduced[sums.numel():].view(self.world_size, -1).amax(dim=0)


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
      (Dr. GRPO). L is a constant of the run, not of the batch: it must be given whenever
      ``reduction`` is (a micro-batch's padded width would make the accumulated loss
      depend on the split); with a local ``reduction`` (or none) it defaults to T, the
      padded width.

    Sequences with no response token are not counted in S. (``loss_agg`` is validated by
    :class:`~r2vpo_ascend.algos.losses.PolicyLossConfig`; an unknown mode here is a
    programming error.)
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
    if max_response_length is None:
        if reduction is not None and not reduction.is_local:
            raise ConfigError("loss_agg `seq-mean-token-sum-norm` (Dr. GRPO) under a LossReduction needs "
                              "max_response_length: each micro-batch's own padded width would change the "
                              "normaliser from one micro-batch to the next")
        max_response_length = values.shape[-1]
    return masked_values.sum() / (num_seqs * max_response_length)


def _denominator(reduction: LossReduction | None, field_name: str, local_count: torch.Tensor) -> torch.Tensor | float:
    """The global count from ``reduction`` if set, else the local count (at least 1, so an
    empty batch gives a zero loss rather than NaN)."""
    value = getattr(reduction, field_name) if reduction is not None else None
    if value is None:
        return local_count.clamp(min=1)
    return value if isinstance(value, torch.Tensor) else float(value)
