"""Ascend NPU plan for the chunked log-probs: GEMMs on the cube unit in the input dtype.

The algorithm is logprobs_chunked.py's and uses only standard torch ops (mm, addmm_, exp_,
sub_, amax, scatter_add_, gather), which torch_npu implements for NPU tensors; the caller has
already imported torch_npu (an NPU tensor cannot exist otherwise), so nothing is imported here.
bf16/fp16 GEMMs accumulate in float32 on the cube unit and their output is converted to float32
before the softmax. Untested on Ascend hardware in this repository (docs/performance.md).
"""

from __future__ import annotations

import torch

_MiB = 1 << 20
NPU_TILE_BYTES = 1024 * _MiB


def plan_options(device: torch.device) -> dict:
    return {"upcast_matmul": False, "tile_bytes": NPU_TILE_BYTES, "low_precision_mm": torch.mm}
