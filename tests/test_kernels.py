"""device.kernels.token_log_probs: chunked log-probs/entropy against the full-logits reference (CPU).

Tolerances: float32 inputs match the naive reference to 1e-4 (values and gradients). bf16
inputs are multiplied exactly in float32 on CPU, so values match the float32 reference on the
same bf16 numbers to 1e-4 and gradients differ only by their rounding to bf16 (rtol 2^-8).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from device.kernels import chunked_token_log_probs, naive_token_log_probs, token_log_probs
from device.kernels.logprobs_chunked import MIN_VOCAB_TILE, chunked_log_probs, make_plan
from _tensor_probes import LargestTensor

IGNORE = -100


def _inputs(n, v, h, *, dtype=torch.float32, bias=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * (2.0 / h**0.5)).to(dtype)
    b = torch.randn(v, generator=gen).to(dtype) if bias else None
    labels = torch.randint(0, v, (n,), generator=gen)
    return hidden, weight, b, labels


def _run(fn, hidden, weight, bias, labels, *, return_entropy=False, seed=1, **kwargs):
    """Outputs and gradients of Σ g·log p (+ Σ g_H·H) with random upstream weights g, g_H."""
    leaves = [hidden.detach().requires_grad_(), weight.detach().requires_grad_()]
    if bias is not None:
        leaves.append(bias.detach().requires_grad_())
    out = fn(leaves[0], leaves[1], labels, lm_head_bias=leaves[2] if bias is not None else None, return_entropy=return_entropy, **kwargs)
    outs = out if return_entropy else (out,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outs], list(grads)


def _assert_matches(got, want, *, atol=1e-4, rtol=0.0):
    for g_list, w_list in zip(got, want):
        for g, w in zip(g_list, w_list):
            torch.testing.assert_close(g.float(), w.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize(
    "n, v, h, chunk, vocab_chunk",
    [
        (37, 101, 16, 8, 13),  # N and V not multiples of the tiles, V odd
        (5, 50, 8, 16, None),  # N < chunk, one vocabulary tile
        (1, 7, 4, 1024, 3),  # a single token
        (64, 257, 32, 16, 64),  # N a multiple of the chunk, V = 4·64 + 1
        (48, 96, 16, 48, 96),  # exactly one tile
    ],
)
@pytest.mark.parametrize("with_bias", [False, True])
def test_float32_values_and_gradients_match_naive(n, v, h, chunk, vocab_chunk, with_bias):
    hidden, weight, bias, labels = _inputs(n, v, h, bias=with_bias)
    got = _run(token_log_probs, hidden, weight, bias, labels, chunk_size=chunk, vocab_chunk_size=vocab_chunk)
    want = _run(naive_token_log_probs, hidden, weight, bias, labels)
    _assert_matches(got, want)


@pytest.mark.parametrize("temperature", [0.6, 1.7])
def test_temperature_scales_logits_and_gradients(temperature):
    hidden, weight, bias, labels = _inputs(29, 83, 12, bias=True)
    kwargs = {"temperature": temperature, "return_entropy": True}
    got = _run(token_log_probs, hidden, weight, bias, labels, chunk_size=8, vocab_chunk_size=20, **kwargs)
    want = _run(naive_token_log_probs, hidden, weight, bias, labels, **kwargs)
    _assert_matches(got, want)
    # and the temperature really changes the result
    plain = _run(naive_token_log_probs, hidden, weight, bias, labels, return_entropy=True)
    assert not torch.allclose(got[0][0], plain[0][0], atol=1e-3)


def test_entropy_values_and_gradients_match_naive():
    hidden, weight, bias, labels = _inputs(41, 150, 16, bias=True)
    got = _run(token_log_probs, hidden, weight, bias, labels, return_entropy=True, chunk_size=16, vocab_chunk_size=40)
    want = _run(naive_token_log_probs, hidden, weight, bias, labels, return_entropy=True)
    _assert_matches(got, want)
    entropy = got[0][1]
    assert (entropy >= 0).all() and (entropy <= torch.log(torch.tensor(150.0)) + 1e-5).all()


def test_gradient_through_entropy_alone():
    hidden, weight, _, labels = _inputs(19, 70, 8)
    leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    _, ent = token_log_probs(*leaves, labels, return_entropy=True, chunk_size=4, vocab_chunk_size=16)
    got = torch.autograd.grad(ent.sum(), leaves)
    ref_leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    _, ref_ent = naive_token_log_probs(*ref_leaves, labels, return_entropy=True)
    want = torch.autograd.grad(ref_ent.sum(), ref_leaves)
    _assert_matches([got], [want])


def test_gradcheck_float64_with_entropy_bias_and_temperature():
    hidden, weight, bias, labels = _inputs(6, 11, 3, dtype=torch.float64, bias=True)
    labels[2] = IGNORE

    def fn(h, w, b):
        return token_log_probs(h, w, labels, lm_head_bias=b, temperature=0.8, return_entropy=True, chunk_size=4, vocab_chunk_size=4)

    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    assert torch.autograd.gradcheck(fn, leaves)


def test_ignored_positions_give_zero_value_and_no_gradient():
    hidden, weight, bias, labels = _inputs(24, 60, 8, bias=True)
    ignored = torch.tensor([0, 5, 6, 23])
    labels[ignored] = IGNORE
    (log_probs, entropy), (g_hidden, g_weight, g_bias) = _run(
        token_log_probs, hidden, weight, bias, labels, return_entropy=True, chunk_size=5, vocab_chunk_size=16
    )
    assert (log_probs[ignored] == 0).all() and (entropy[ignored] == 0).all()
    assert (g_hidden[ignored] == 0).all()
    # ∂W and ∂b are those of the kept rows alone
    kept = labels != IGNORE
    want = _run(naive_token_log_probs, hidden[kept], weight, bias, labels[kept], return_entropy=True, seed=99)
    got = _run(token_log_probs, hidden[kept], weight, bias, labels[kept], return_entropy=True, seed=99, chunk_size=5, vocab_chunk_size=16)
    _assert_matches(got, want)
    (full_lp, _), _ = _run(naive_token_log_probs, hidden, weight, bias, labels, return_entropy=True)
    torch.testing.assert_close(log_probs[kept], full_lp[kept], atol=1e-4, rtol=0)


@pytest.mark.parametrize("upcast", [True, False])
def test_kernel_masks_ignored_rows_itself(upcast):
    """On accelerators ignored rows are not dropped before the kernel: its own masking must hold."""
    hidden, weight, bias, labels = _inputs(21, 70, 8, dtype=torch.bfloat16 if not upcast else torch.float32, bias=True)
    labels[[0, 9, 20]] = IGNORE
    plan = make_plan(21, 70, 8, weight_dtype=weight.dtype, chunk_size=8, vocab_chunk_size=16, tile_bytes=1 << 20,
                     upcast_matmul=upcast, with_entropy=True)  # fmt: skip

    def kernel(h, w, y, lm_head_bias, return_entropy, **_):
        return chunked_log_probs(h, w, lm_head_bias, y, plan=plan, temperature=0.9, ignore_index=IGNORE, return_entropy=return_entropy)

    got = _run(kernel, hidden, weight, bias, labels, return_entropy=True)
    want = _run(naive_token_log_probs, hidden, weight, bias, labels, return_entropy=True, temperature=0.9)
    # not upcasting = bf16 GEMMs, as on an accelerator: bf16-level agreement
    _assert_matches(got, want, atol=1e-4 if upcast else 5e-2, rtol=0 if upcast else 2e-2)
    assert not got[0][0][[0, 9, 20]].any() and not got[1][0][[0, 9, 20]].any()


@pytest.mark.parametrize("n", [0, 6])
def test_all_positions_ignored_or_no_tokens(n):
    hidden, weight, bias, _ = _inputs(max(n, 1), 20, 4, bias=True)
    hidden = hidden[:n]
    labels = torch.full((n,), IGNORE)
    (log_probs, entropy), grads = _run(token_log_probs, hidden, weight, bias, labels, return_entropy=True, chunk_size=4)
    assert log_probs.shape == (n,) and not log_probs.any() and not entropy.any()
    assert all(not g.any() for g in grads)


def test_custom_ignore_index_and_labels_on_tile_edges():
    hidden, weight, _, _ = _inputs(8, 64, 8)
    labels = torch.tensor([0, 15, 16, 31, 32, 63, 47, 7])  # tile edges with vocab tiles of 16
    labels_ign = labels.clone()
    labels_ign[1] = 7
    got = _run(token_log_probs, hidden, weight, None, labels_ign, chunk_size=3, vocab_chunk_size=16, ignore_index=7)
    want = _run(naive_token_log_probs, hidden, weight, None, labels_ign, ignore_index=7)
    _assert_matches(got, want)
    assert got[0][0][1] == 0 and got[0][0][7] == 0
    got = _run(token_log_probs, hidden, weight, None, labels, chunk_size=3, vocab_chunk_size=16)
    _assert_matches(got, _run(naive_token_log_probs, hidden, weight, None, labels))


def test_bfloat16_inputs():
    hidden, weight, bias, labels = _inputs(48, 300, 32, dtype=torch.bfloat16, bias=True)
    kwargs = {"temperature": 0.9, "return_entropy": True}
    got = _run(token_log_probs, hidden, weight, bias, labels, chunk_size=16, vocab_chunk_size=64, **kwargs)
    exact = _run(naive_token_log_probs, hidden.float(), weight.float(), bias.float(), labels, **kwargs)
    assert all(g.dtype == torch.bfloat16 for g in got[1])
    assert all(o.dtype == torch.float32 for o in got[0])
    _assert_matches([got[0]], [exact[0]], atol=1e-4)  # exact products of the bf16 values
    _assert_matches([got[1]], [exact[1]], atol=1e-4, rtol=2**-8)  # gradients rounded to bf16


def test_leading_dimensions_are_kept():
    hidden, weight, _, labels = _inputs(12, 40, 8)
    out = token_log_probs(hidden.view(3, 4, 8), weight, labels.view(3, 4), chunk_size=5, return_entropy=True)
    assert out[0].shape == (3, 4) and out[1].shape == (3, 4)
    torch.testing.assert_close(out[0].reshape(-1), naive_token_log_probs(hidden, weight, labels), atol=1e-5, rtol=0)


def test_frozen_head_and_frozen_hidden():
    hidden, weight, _, labels = _inputs(20, 50, 8)
    h = hidden.clone().requires_grad_()
    token_log_probs(h, weight, labels, chunk_size=6, vocab_chunk_size=16).sum().backward()
    h_ref = hidden.clone().requires_grad_()
    naive_token_log_probs(h_ref, weight, labels).sum().backward()
    torch.testing.assert_close(h.grad, h_ref.grad, atol=1e-4, rtol=0)
    w = weight.clone().requires_grad_()
    token_log_probs(hidden, w, labels, chunk_size=6, vocab_chunk_size=16).sum().backward()
    w_ref = weight.clone().requires_grad_()
    naive_token_log_probs(hidden, w_ref, labels).sum().backward()
    torch.testing.assert_close(w.grad, w_ref.grad, atol=1e-4, rtol=0)
    with torch.no_grad():
        assert token_log_probs(hidden, weight, labels).requires_grad is False


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frozen_head_backward_needs_no_matmul(dtype):
    hidden, weight, bias, labels = _inputs(30, 90, 8, dtype=dtype, bias=True)
    labels[4] = IGNORE
    h = hidden.clone().requires_grad_()
    log_probs = token_log_probs(h, weight, labels, lm_head_bias=bias, temperature=1.3, chunk_size=7, vocab_chunk_size=32)
    ops = _OpNames()
    with ops:
        (grad,) = torch.autograd.grad((log_probs * torch.linspace(-1, 2, 30)).sum(), h)
    assert not {"mm", "addmm", "addmm_"} & ops.names
    h_ref = hidden.float().clone().requires_grad_()
    ref = naive_token_log_probs(h_ref, weight.float(), labels, lm_head_bias=bias.float(), temperature=1.3)
    (want,) = torch.autograd.grad((ref * torch.linspace(-1, 2, 30)).sum(), h_ref)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.float(), want, atol=1e-4, rtol=0 if dtype == torch.float32 else 2**-8)


def test_impl_choices_agree_and_default_tiling():
    hidden, weight, _, labels = _inputs(33, 3000, 16)
    want = naive_token_log_probs(hidden, weight, labels, return_entropy=True)
    for got in (
        token_log_probs(hidden, weight, labels, return_entropy=True),  # default plan
        chunked_token_log_probs(hidden, weight, labels, return_entropy=True, chunk_size=7),
        token_log_probs(hidden, weight, labels, return_entropy=True, impl="naive"),
    ):
        _assert_matches([got], [want])


class _OpNames(TorchDispatchMode):
    """Records the names of the aten ops that run (e.g. "mm", "exp_")."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def test_full_logits_are_never_materialised():
    n, v, h, chunk, vocab_chunk = 256, 4096, 16, 64, 512
    hidden, weight, bias, labels = _inputs(n, v, h, bias=True)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    largest = LargestTensor()
    with largest:
        log_probs, entropy = token_log_probs(
            leaves[0], leaves[1], labels, lm_head_bias=leaves[2], return_entropy=True, chunk_size=chunk, vocab_chunk_size=vocab_chunk
        )
        (log_probs.sum() + entropy.sum()).backward()
    # nothing bigger than the weight (its gradient) or one logits tile; the logits are n·v
    assert largest.numel <= max(v * h, chunk * vocab_chunk) < n * v // 4
    # the naive reference does build them: the check can see it
    naive = LargestTensor()
    with naive:
        naive_token_log_probs(*leaves[:2], labels).sum().backward()
    assert naive.numel >= n * v


def test_autograd_saves_only_inputs_and_per_token_stats():
    hidden, weight, bias, labels = _inputs(300, 2000, 16, bias=True)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    inputs = {t.data_ptr() for t in leaves}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        token_log_probs(leaves[0], leaves[1], labels, lm_head_bias=leaves[2], return_entropy=True, chunk_size=64)
    extra = [t for t in saved if t.data_ptr() not in inputs]
    assert saved and all(t.numel() <= labels.numel() for t in extra)


def test_plan_respects_memory_budget():
    plan = make_plan(8192, 153600, 4096, weight_dtype=torch.float32, chunk_size=1024, vocab_chunk_size=None,
                     tile_bytes=64 << 20, upcast_matmul=True, with_entropy=False)  # fmt: skip
    assert plan.rows == 1024 and plan.rows * plan.vocab * 4 <= 64 << 20 and plan.vocab % 64 == 0
    bf16 = make_plan(8192, 153600, 4096, weight_dtype=torch.bfloat16, chunk_size=1024, vocab_chunk_size=None,
                     tile_bytes=64 << 20, upcast_matmul=True, with_entropy=True)  # fmt: skip
    assert bf16.vocab * (2 * 4 * 1024 + 2 * 4 * 4096) <= 64 << 20
    tiny = make_plan(3, 10, 4, weight_dtype=torch.float32, chunk_size=1024, vocab_chunk_size=None,
                     tile_bytes=1, upcast_matmul=True, with_entropy=False)  # fmt: skip
    assert (tiny.rows, tiny.vocab) == (3, 10) and MIN_VOCAB_TILE >= 10


@pytest.mark.parametrize(
    "change, message",
    [
        ({"labels": torch.tensor([0, 1, 50])}, "labels must be in"),
        ({"labels": torch.tensor([0, 1])}, "labels shape"),
        ({"labels": torch.tensor([0.0, 1.0, 2.0])}, "integer"),
        ({"temperature": 0.0}, "temperature"),
        ({"impl": "fast"}, "impl"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"lm_head_bias": torch.zeros(3)}, "lm_head_bias"),
        ({"hidden_states": torch.zeros(3, 5)}, "hidden_states"),
    ],
)
def test_clear_errors_for_bad_arguments(change, message):
    args = {"hidden_states": torch.zeros(3, 4), "lm_head_weight": torch.zeros(50, 4), "labels": torch.tensor([0, 1, 2])}
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        token_log_probs(**args)
