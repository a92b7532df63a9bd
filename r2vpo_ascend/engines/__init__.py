"""Training engines: who owns the model, the optimiser and the gradient reduction.

`base` holds the `TrainingEngine` protocol and what every engine shares (the AdamW builder,
the learning-rate schedule, the sum over ranks); `native` (plain PyTorch) and `deepspeed`
(DeepSpeed ZeRO, imported only when used) implement it; `factory.make_engine` picks one.
"""

from r2vpo_ascend.engines.base import (TrainingEngine, adamw_kernel, build_adamw, build_optimizer,
                                       make_lr_schedule, sum_over_ranks)
from r2vpo_ascend.engines.factory import make_engine
from r2vpo_ascend.engines.native import NativeEngine

__all__ = ["NativeEngine", "TrainingEngine", "adamw_kernel", "build_adamw", "build_optimizer", "make_engine",
           "make_lr_schedule", "sum_over_ranks"]
