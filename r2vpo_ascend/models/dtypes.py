"""The dtype a model is loaded and trained in, from its name (`auto`: the backend's default)."""

from __future__ import annotations

import torch

from r2vpo_ascend.algos.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, backend) -> torch.dtype:
    """`auto` → `backend.default_dtype` (bf16 on accelerators, fp32 on the CPU); else one of `DTYPES`."""
    if name == "auto":
        return backend.default_dtype
    if name not in DTYPES:
        raise ConfigError(f"dtype must be `auto` or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]
