"""Training engines: who owns the model, the optimiser and the gradient reduction.

The loop talks to an engine through `TrainingEngine`; `SingleProcessEngine` is one process on
the CPU or one device. Losses reaching `backward` are already normalised by GLOBAL token /
sequence counts (see `algos.LossReduction`), so gradients are summed, never averaged, over
micro-batches and ranks; a data-parallel engine must sum across ranks (or undo its mean).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from r2vpo_ascend.trainer.batch import TokenBatch
from r2vpo_ascend.trainer.config import R2VPOConfig
from r2vpo_ascend.trainer.logprobs import response_log_probs


class TrainingEngine(Protocol):
    model: torch.nn.Module
    rank: int
    world_size: int

    def log_probs(self, batch: TokenBatch, *, temperature: float, with_entropy: bool = False): ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> float: ...
    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


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


class SingleProcessEngine:
    """One process: the model on `backend.device`, AdamW, a warm-up/decay schedule, grad clipping."""

    rank = 0
    world_size = 1

    def __init__(self, model: torch.nn.Module, config: R2VPOConfig, backend, dtype: torch.dtype):
        self.backend = backend
        self.model = model.to(device=backend.device, dtype=dtype)
        self.model.train()
        self.config = config
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.adam_betas),
                                           weight_decay=config.weight_decay)
        total = config.steps * config.updates_per_step
        self.scheduler = make_lr_schedule(self.optimizer, config.lr_scheduler, config.warmup_steps, total)

    def log_probs(self, batch: TokenBatch, *, temperature: float, with_entropy: bool = False):
        return response_log_probs(self.model, batch.to(self.backend.device), temperature=temperature,
                                  with_entropy=with_entropy)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        """Clip, step, advance the schedule, clear grads; returns the pre-clip gradient norm."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.config.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])) if params else torch.zeros(())
        if not torch.isfinite(norm):
            # A non-finite gradient would poison the weights: skip the step and say so.
            self.optimizer.zero_grad(set_to_none=True)
            return float("nan")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
