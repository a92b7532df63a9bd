"""`NativeEngine`: the `TrainingEngine` (engines/base.py) in plain PyTorch.

One process on the CPU or one device, or data parallel over torchrun processes (every rank
holds the whole model; gradients are summed by bucketed all-reduces before the step).
"""

from __future__ import annotations

import copy

import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

import device
from r2vpo_ascend.engines.base import adamw_kernel, build_optimizer, config_lr_schedule, sum_over_ranks
from r2vpo_ascend.models.dtypes import COMPUTE_DTYPES
from r2vpo_ascend.trainer.batch import TokenBatch
from r2vpo_ascend.trainer.config import R2VPOConfig
from r2vpo_ascend.trainer.logprobs import response_log_probs


GRAD_BUCKET_NUMEL = 1 << 25  # 32M elements: 64 MiB in bf16, 128 MiB in float32


class NativeEngine:
    """Plain PyTorch: the model on `backend.device`, AdamW, a warm-up/decay schedule, grad clipping.

    With several processes each rank keeps a full replica; `step` sums the gradients over
    ranks (bucketed all-reduces) so replicas stay identical.
    """

    def __init__(self, model: torch.nn.Module, config: R2VPOConfig, backend, dtype: torch.dtype,
                 dist: device.DistInfo | None = None):
        self.backend = backend
        self.rank = dist.rank if dist else 0
        self.world_size = dist.world_size if dist else 1
        self.model = model.to(device=backend.device, dtype=dtype)
        self.model.train()
        self.config = config
        self.compute_dtype = COMPUTE_DTYPES[config.mixed_precision]  # autocast dtype of every forward, or None
        self._adamw_impl = adamw_kernel(self.model)
        self.optimizer = build_optimizer(self.model, config, kernel=self._adamw_impl)
        self.scheduler = config_lr_schedule(self.optimizer, config)

    def log_probs(self, batch: TokenBatch, *, temperature: float, with_entropy: bool = False):
        return response_log_probs(self.model, batch.to(self.backend.device), temperature=temperature,
                                  with_entropy=with_entropy, compute_dtype=self.compute_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        """Clip, step, advance the schedule, clear grads; returns the pre-clip gradient norm."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.world_size > 1:
            self._sum_gradients_over_ranks(params)
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

    def _sum_gradients_over_ranks(self, params: list[torch.nn.Parameter]) -> None:
        """One all-reduce per bucket of same-dtype gradients, so the flat copy never holds more
        than GRAD_BUCKET_NUMEL elements, whatever the model size."""
        for grads in _buckets([p.grad for p in params], GRAD_BUCKET_NUMEL):
            flat = device.all_reduce_sum(_flatten_dense_tensors(grads))
            for grad, summed in zip(grads, _unflatten_dense_tensors(flat, grads)):
                grad.copy_(summed)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return sum_over_ranks(values, self.backend, self.world_size)

    def frozen_copy(self) -> torch.nn.Module:
        """The KL reference policy: a frozen copy of the current (initial) weights."""
        return copy.deepcopy(self.model).eval().requires_grad_(False)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the kernel is this machine's choice, not the checkpoint's
            group.update(self._adamw_impl)
        self.scheduler.load_state_dict(state["scheduler"])

    def save_pretrained(self, directory) -> None:
        """The model in Hugging Face format; rank 0 writes (every replica is the same)."""
        if self.rank == 0:
            self.model.save_pretrained(directory)


def _buckets(tensors: list[torch.Tensor], max_numel: int) -> list[list[torch.Tensor]]:
    """`tensors` grouped by dtype, each group cut into consecutive runs of at most `max_numel`
    elements (a tensor larger than that gets a bucket of its own)."""
    by_dtype: dict[torch.dtype, list[list[torch.Tensor]]] = {}
    for t in tensors:
        runs = by_dtype.setdefault(t.dtype, [[]])
        if runs[-1] and sum(x.numel() for x in runs[-1]) + t.numel() > max_numel:
            runs.append([])
        runs[-1].append(t)
    return [run for runs in by_dtype.values() for run in runs]
