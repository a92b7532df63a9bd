"""The hardware layer: the only package that names Ascend/NVIDIA specifics.

Everything above it asks this package instead of checking for hardware itself:

    import device
    device.prepare_runtime_env(sleep_mode=cfg.sleep_mode)   # first: runtime variables (Ascend)
    backend = device.current()                             # npu > cuda > cpu, or R2VPO_DEVICE
    info = device.init_distributed(backend, timeout_s=cfg.collective_timeout_s)
    device.apply_fused_patches(backend)                    # fused layers where the backend has them
    model.to(backend.device, dtype=backend.default_dtype)

It imports nothing from `r2vpo_ascend`. `device.kernels` is imported on first use, so a
problem in one kernel module cannot break `import device`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

from device.ascend_env import apply_ascend_env, ascend_env_defaults
from device.backend import (
    BACKEND_NAMES,
    DEVICE_ENV_VAR,
    Backend,
    BackendUnavailableError,
    autocast,
    current,
    get_backend,
    hardware_versions,
    reset_current,
)
from device.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    destroy_distributed,
    dist_info,
    init_distributed,
)

__all__ = [
    "BACKEND_NAMES",
    "DEVICE_ENV_VAR",
    "Backend",
    "BackendUnavailableError",
    "DistInfo",
    "all_gather_objects",
    "all_reduce_sum",
    "apply_ascend_env",
    "apply_fused_patches",
    "ascend_env_defaults",
    "autocast",
    "barrier",
    "current",
    "destroy_distributed",
    "dist_info",
    "get_backend",
    "hardware_versions",
    "init_distributed",
    "prepare_runtime_env",
    "reset_current",
]


def prepare_runtime_env(
    *,
    sleep_mode: bool = False,
    deterministic: bool = False,
    collective_timeout_s: float = 1800,
    overrides: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Set the runtime variables the target hardware needs; return those set.

    Only Ascend has any: applied when `R2VPO_DEVICE=npu`, or when it is unset/auto and
    torch_npu is installed. Call it before `current()` and before the first device operation.
    """
    forced = os.environ.get(DEVICE_ENV_VAR, "").strip().lower()
    targets_ascend = forced == "npu" or (forced in ("", "auto") and importlib.util.find_spec("torch_npu") is not None)
    if not targets_ascend:
        return {}
    return apply_ascend_env(
        overrides, sleep_mode=sleep_mode, deterministic=deterministic, collective_timeout_s=collective_timeout_s
    )


def apply_fused_patches(backend: Backend, ops_module: Any = None) -> list[str]:
    """Route transformers' Llama-family layers through the backend's fused ops, if it has any.

    NPU: torch_npu's RMSNorm, RoPE, SwiGLU and fused attention (device/npu_patches.py).
    Other backends: nothing to do, returns []. `ops_module` replaces torch_npu in tests.
    """
    if backend.name != "npu":
        return []
    from device.npu_patches import apply_npu_patches

    return apply_npu_patches(ops_module=ops_module)


def __getattr__(name: str):
    # Lazy submodule: `device.kernels` is only imported when first used.
    if name == "kernels":
        return importlib.import_module("device.kernels")
    raise AttributeError(f"module 'device' has no attribute {name!r}")
