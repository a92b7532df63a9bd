"""CUDA plan for the chunked log-probs: GEMMs on tensor cores in the input dtype.

The algorithm is logprobs_chunked.py's; what changes on an NVIDIA GPU is the precision of the
GEMMs (bf16/fp16 with float32 accumulation instead of CPU's float32 copies), a larger tile
budget, and — on torch versions whose `torch.mm` takes `out_dtype` — float32 GEMM outputs, so
the logits tile and the ∂h/∂W partial sums are not rounded to bf16 first. Not run on hardware
in this repository's CI (no GPU there); tests/test_kernels_gpu.py runs it where one exists.
"""

from __future__ import annotations

import functools
import warnings

import torch

_MiB = 1 << 20
CUDA_TILE_BYTES = 1024 * _MiB


def plan_options(device: torch.device) -> dict:
    return {"upcast_matmul": False, "tile_bytes": CUDA_TILE_BYTES, "low_precision_mm": _float32_out_mm()}


@functools.lru_cache(maxsize=None)
def _float32_out_mm():
    """`torch.mm(a, b, out_dtype=float32)` when this torch has that overload (`aten::mm.dtype`),
    else `torch.mm` with a one-time warning. Decided from the op schema, not by catching errors."""
    if "dtype" in torch.ops.aten.mm.overloads():
        return functools.partial(torch.mm, out_dtype=torch.float32)
    warnings.warn(
        f"torch {torch.__version__} has no torch.mm(..., out_dtype=torch.float32): the chunked log-probs "
        "round each logits tile (and the ∂h/∂W partial sums) to bf16 before the float32 softmax; a newer "
        "torch keeps them in float32",
        RuntimeWarning,
        stacklevel=2,
    )
    return torch.mm
