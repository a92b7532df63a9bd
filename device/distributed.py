"""Process-group set-up for torchrun-style launches, with bounded collective timeouts.

Every helper here is safe in a single process: with no `WORLD_SIZE` in the environment,
`init_distributed` creates no group and the collectives return their input unchanged.

Timeouts: `timeout_s` is the process-group timeout. On gloo (CPU) a collective that waits
longer raises; on NCCL the watchdog aborts it and, with `TORCH_NCCL_ASYNC_ERROR_HANDLING`
at its default (3: tear the process down), the process exits; on HCCL the torch_npu watchdog
does the same (`HCCL_ASYNC_ERROR_HANDLING`, default 1). Either way a dead rank makes the job
fail in bounded time instead of hanging. On Ascend, HCCL's own device-side limit
`HCCL_EXEC_TIMEOUT` should stay below `timeout_s` so that HCCL reports the failing
operation first (see device/ascend_env.py and docs/ascend.md).
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Any
from datetime import timedelta

import torch
import torch.distributed as dist

from device.backend import Backend, _int_env


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and writes checkpoints."""
        return self.rank == 0


def init_distributed(backend: Backend, timeout_s: float = 1800) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Without WORLD_SIZE (or
    with WORLD_SIZE=1) this is a single process: no group is created. In both cases the
    accelerator of LOCAL_RANK becomes the current device. Calling it again returns the
    existing group's info.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
    if dist.is_available() and dist.is_initialized():
        return dist_info()

    world_size = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    local_rank = _int_env("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size} are inconsistent: need 0 <= RANK < WORLD_SIZE")

    if backend.name == "npu":
        # torch_npu registers the "hccl" process-group backend when it is imported.
        importlib.import_module("torch_npu")
        _warn_if_hccl_timeout_not_below(timeout_s)
    backend.set_device(local_rank)
    if world_size == 1:
        return DistInfo(rank=0, world_size=1, local_rank=local_rank)

    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed support")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} but {' and '.join(missing)} not set: launch with torchrun "
            "(it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or export them yourself"
        )
    dist.init_process_group(
        backend=backend.dist_backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def destroy_distributed() -> None:
    """Leave the process group if there is one; always safe to call."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def dist_info() -> DistInfo:
    """This process's place in the job (rank 0 of 1 when no group is initialised)."""
    local_rank = _int_env("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)
    return DistInfo(rank=0, world_size=1, local_rank=local_rank)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place, and return it (unchanged without a group)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order; `[obj]` without a group.

    Used for small host-side data (rollouts for the replicated replay buffer, RNG states
    for checkpoints). Tensors inside are sent as they are: pass CPU tensors (as the callers
    do) so that every rank can unpickle them whatever its device.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _warn_if_hccl_timeout_not_below(timeout_s: float) -> None:
    # torch_npu recommends a process-group timeout above HCCL_CONNECT_TIMEOUT / HCCL_EXEC_TIMEOUT,
    # so that HCCL's own, more specific, error is the one reported.
    for name in ("HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT"):
        raw = os.environ.get(name, "")
        # HCCL_EXEC_TIMEOUT=0 means "never" on Atlas A2.
        if raw.isdigit() and (int(raw) >= timeout_s or (name == "HCCL_EXEC_TIMEOUT" and int(raw) == 0)):
            warnings.warn(
                f"{name}={raw} s is not below the process-group timeout ({timeout_s:g} s): a hung "
                "collective will be reported by the watchdog rather than by HCCL; lower it or raise "
                "timeout_s",
                RuntimeWarning,
                stacklevel=3,
            )
