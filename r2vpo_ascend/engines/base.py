"""What every training engine shares: the protocol, the optimiser, the schedule, the rank sum.

The loop talks to an engine through `TrainingEngine`; `engines/native.py` (plain PyTorch,
data parallel over torchrun processes) and `engines/deepspeed.py` (DeepSpeed ZeRO) implement
it, and `engines/factory.py` picks one from the config.

Losses reaching `backward` are already normalised by GLOBAL token / sequence counts (see
`algos.LossReduction`), so gradients are SUMMED, never averaged, over micro-batches and
ranks; an engine whose framework averages over ranks must undo that mean.
"""

from __future__ import annotations

import math
from typing import Iterable, Protocol

import torch

import device
from r2vpo_ascend.trainer.batch import TokenBatch
from r2vpo_ascend.trainer.config import R2VPOConfig


class TrainingEngine(Protocol):
    model: torch.nn.Module
    rank: int
    world_size: int
    compute_dtype: torch.dtype | None  # torch.autocast dtype of the forwards (config `mixed_precision`), or None

    def log_probs(self, batch: TokenBatch, *, temperature: float, with_entropy: bool = False): ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> float: ...  # the pre-clip gradient norm; NaN when a non-finite step was skipped
    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor: ...
    def state_dict(self) -> dict: ...  # collective with several processes: call on every rank
    def load_state_dict(self, state: dict) -> None: ...
    def save_pretrained(self, directory) -> None: ...  # collective: the full model, rank 0 writes
    def frozen_copy(self) -> torch.nn.Module: ...  # the KL reference: the initial weights, frozen

    @property
    def lr(self) -> float: ...  # the current learning rate (logged every step)


def build_adamw(params: Iterable[torch.nn.Parameter], *, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.01,
                kernel: dict | None = None) -> torch.optim.AdamW:
    """The one place an AdamW is built (RL engines and the supervised warm start).

    `kernel` picks the implementation (`fused` / `foreach`, see `adamw_kernel`); None keeps
    torch's default. The defaults of `betas` and `weight_decay` are torch's own."""
    return torch.optim.AdamW(list(params), lr=lr, betas=tuple(betas), weight_decay=weight_decay, **(kernel or {}))


def build_optimizer(model: torch.nn.Module, config: R2VPOConfig, *, kernel: dict | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters with the config's `lr`, `adam_betas`, `weight_decay`."""
    return build_adamw((p for p in model.parameters() if p.requires_grad), lr=config.lr, betas=config.adam_betas,
                       weight_decay=config.weight_decay, kernel=kernel)


def adamw_kernel(model: torch.nn.Module) -> dict:
    """AdamW's implementation: the fused kernel for weights on the CPU (one kernel over all
    parameters instead of a Python loop over them, ~2x faster steps for small models; the
    same update rule), torch's own default elsewhere."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    return {"fused": True, "foreach": None} if on_cpu else {"fused": None, "foreach": None}


def make_lr_schedule(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int):
    """Linear warm-up for `warmup` optimiser steps, then constant / linear decay / cosine decay to 0."""
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return 1.0 - progress
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def config_lr_schedule(optimizer: torch.optim.Optimizer, config: R2VPOConfig):
    """`make_lr_schedule` over the run's optimiser steps (`steps` x `ppo_epochs` x `updates_per_step`)."""
    return make_lr_schedule(optimizer, config.lr_scheduler, config.warmup_steps,
                            config.steps * config.ppo_epochs * config.updates_per_step)


def sum_over_ranks(values: torch.Tensor, backend, world_size: int) -> torch.Tensor:
    """Sum over ranks (identity in one process), through the backend's device; returns a tensor
    on `values`' device."""
    if world_size == 1:
        return values
    return device.all_reduce_sum(values.to(backend.device)).to(values.device)
