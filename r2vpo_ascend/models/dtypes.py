"""The dtype a model is loaded and trained in, from its name (`auto`: the backend's default)."""

from __future__ import annotations

import torch

from r2vpo_ascend.algos.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# config field `mixed_precision` (validated there) -> the torch.autocast dtype of the forwards, None: no autocast
COMPUTE_DTYPES = {"no": None, "bf16": torch.bfloat16}


def resolve_dtype(name: str, backend, *, mixed_precision: str = "no") -> torch.dtype:
    """`auto` → `backend.default_dtype` (bf16 on accelerators, fp32 on the CPU), or float32 when
    `mixed_precision` computes in bf16 over float32 weights; else one of `DTYPES`."""
    if name == "auto":
        return torch.float32 if mixed_precision != "no" else backend.default_dtype
    if name not in DTYPES:
        raise ConfigError(f"dtype must be `auto` or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]
