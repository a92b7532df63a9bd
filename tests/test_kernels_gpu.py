"""device.kernels.token_log_probs on an accelerator (NVIDIA GPU: the CUDA plan; Ascend NPU: the
NPU plan), each skipped without its hardware.

Values and gradients against the full-logits reference computed in float32 on the same
inputs, and peak device memory against the size of the full logits. Device placement,
synchronisation and memory statistics go through the `device` backend, so one test body
serves every accelerator.
"""

from __future__ import annotations

import pytest
import torch

import device
from device.kernels import naive_token_log_probs, token_log_probs

GIB = 1024**3


def _backend(name: str):
    try:
        return device.get_backend(name)
    except device.BackendUnavailableError as e:
        pytest.skip(f"needs the {name} backend: {e}")


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.cuda), pytest.param("npu", marks=pytest.mark.npu)])
def backend(request):
    return _backend(request.param)


def _case(backend, n, v, h, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(backend.device, dtype)
    weight = (torch.randn(v, h, generator=gen) * 2 / h**0.5).to(backend.device, dtype)
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[::7] = -100
    upstream = torch.randn(2, n, generator=gen)
    return hidden, weight, labels.to(backend.device), upstream.to(backend.device)


def _grads(fn, hidden, weight, labels, upstream, **kwargs):
    leaves = [hidden.detach().requires_grad_(), weight.detach().requires_grad_()]
    lp, ent = fn(*leaves, labels, return_entropy=True, temperature=0.9, **kwargs)
    grads = torch.autograd.grad((lp * upstream[0]).sum() + (ent * upstream[1]).sum(), leaves)
    return [lp.detach(), ent.detach(), *(g.float() for g in grads)]


def test_float32_matches_naive(backend):
    case = _case(backend, 300, 5001, 64, torch.float32)
    got = _grads(token_log_probs, *case, chunk_size=128, vocab_chunk_size=1024)
    want = _grads(naive_token_log_probs, *case)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_bfloat16_is_at_least_as_accurate_as_naive_bfloat16(backend):
    case = _case(backend, 300, 5001, 64, torch.bfloat16)
    exact = _grads(naive_token_log_probs, case[0].float(), case[1].float(), *case[2:])
    naive = _grads(naive_token_log_probs, *case)
    got = _grads(token_log_probs, *case, chunk_size=128, vocab_chunk_size=1024)
    for g, n, e in zip(got, naive, exact):
        assert (g - e).abs().max() <= max(2 * (n - e).abs().max().item(), 1e-3)


def test_peak_memory_is_far_below_the_full_logits(backend):
    n, v, h = 4096, 65536, 256
    hidden, weight, labels, upstream = _case(backend, n, v, h, torch.bfloat16)
    hidden.requires_grad_()
    weight.requires_grad_()
    backend.synchronize()
    backend.reset_peak_memory_stats()
    base = backend.memory_stats()["allocated_gb"] * GIB
    lp = token_log_probs(hidden, weight, labels, chunk_size=1024, vocab_chunk_size=8192)
    torch.autograd.grad((lp * upstream[0]).sum(), (hidden, weight))
    backend.synchronize()
    grads = (hidden.numel() + weight.numel()) * 2
    working = backend.memory_stats()["max_allocated_gb"] * GIB - base - grads
    assert working < n * v * 4 / 8
