"""Shared inputs for the loss tests (test_losses.py, test_loss_library.py, test_loss_contract.py)."""

import torch

F64 = torch.float64


def make_batch(batch=5, seq=7, seed=0, spread=0.3, adv_per_token=False):
    g = torch.Generator().manual_seed(seed)
    old = -2.0 * torch.rand(batch, seq, generator=g, dtype=F64)
    log_probs = (old + spread * torch.randn(batch, seq, generator=g, dtype=F64)).requires_grad_()
    mask = torch.rand(batch, seq, generator=g) > 0.35
    mask[:, 0] = True
    shape = (batch, seq) if adv_per_token else (batch,)
    advantages = torch.randn(*shape, generator=g, dtype=F64)
    return log_probs, old, advantages, mask


def grad_of(loss, leaf):
    (grad,) = torch.autograd.grad(loss, leaf)
    return grad


def split(out):
    """``(loss, metrics)`` of a PolicyLossOutput, for tests that look at both."""
    return out.loss, out.metrics()
