"""Probes shared by the kernel and update tests: the largest tensor of a computation, and the
gradient each optimiser step of a trainer sees."""

import torch
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def record_step_grads(trainer) -> list[torch.Tensor]:
    """Wrap `trainer.engine.step`: the returned list gets the flattened accumulated gradient
    each optimiser step sees, just before it steps."""
    grads: list[torch.Tensor] = []
    step = trainer.engine.step

    def recording_step():
        grads.append(torch.cat([p.grad.detach().flatten() for p in trainer.engine.model.parameters()]))
        return step()
    trainer.engine.step = recording_step
    return grads
