"""The engine `config.engine` names, above both implementations (engines/native.py, engines/deepspeed.py)."""

from __future__ import annotations

import torch

import device
from r2vpo_ascend.engines.base import TrainingEngine
from r2vpo_ascend.engines.deepspeed import DeepSpeedEngine
from r2vpo_ascend.engines.native import NativeEngine
from r2vpo_ascend.trainer.config import R2VPOConfig


def make_engine(model: torch.nn.Module, config: R2VPOConfig, backend, dtype: torch.dtype,
                dist: device.DistInfo) -> TrainingEngine:
    """`native` (plain PyTorch, data parallel over ranks) or `deepspeed` (ZeRO; DeepSpeed itself
    is imported only when this engine is built)."""
    if config.engine == "deepspeed":
        return DeepSpeedEngine(model, config, backend, dtype, dist)
    return NativeEngine(model, config, backend, dtype, dist)
