"""Chunked per-token log-probs: the plain-PyTorch implementation every backend runs.

The logits z = (h Wᵀ + b) / T are never held for all tokens and the whole vocabulary at once.
Both passes walk the same tiles — vocabulary tiles outside, row chunks inside — and hold one
float32 `[rows, vocab_tile]` buffer at a time:

forward   z_tile → running max m, running Σ e^{z−m} (online logsumexp), the label's logit, and
          for the entropy Σ e^{z−m}(z−m); saves only `[N]` statistics (lse, entropy).
backward  recomputes z_tile, turns it *in place* into G = ∂L/∂z:
              G_k = g (δ_{k,y} − p_k) − g_H p_k (log p_k + H)
          (g, g_H: upstream gradients of log p_y and of the entropy H; ∂H/∂z_k = −p_k(z_k − Σp z)
          and z_k − Σp z = log p_k + H), then  ∂h += G W / T,  ∂W_tile += Gᵀ (h / T),  ∂b_tile += Σ G / T.

Vocabulary-outer order means each weight tile is read (and, on CPU with bf16 weights, cast to
float32) once per pass, and each tile of ∂W is finished before the next begins, so no
`[V, H]` float32 accumulator exists even for bf16 weights.

`ChunkPlan.upcast_matmul` picks how low-precision inputs are multiplied: True (CPU) casts the
tiles to float32 and runs float32 GEMMs — exact products of the bf16 values, and on CPUs
without bf16 matrix units as fast; False (accelerators) runs the GEMMs in the input dtype and
converts each logits tile to float32 before the softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

# A tile is at least this many vocabulary columns: smaller GEMMs lose efficiency.
MIN_VOCAB_TILE = 256


@dataclass(frozen=True)
class ChunkPlan:
    """How the `[N, V]` logits are cut into tiles, and how the GEMMs run.

    rows: token rows per chunk; vocab: vocabulary columns per tile; upcast_matmul: see module doc;
    low_precision_mm: `a @ b` for bf16/fp16 operands when not upcasting (a backend may return
    float32 straight from the GEMM; default `torch.mm`).
    """

    rows: int
    vocab: int
    upcast_matmul: bool
    low_precision_mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.mm


def make_plan(
    num_tokens: int,
    vocab_size: int,
    hidden_size: int,
    *,
    weight_dtype: torch.dtype,
    chunk_size: int,
    vocab_chunk_size: int | None,
    tile_bytes: int,
    upcast_matmul: bool,
    with_entropy: bool,
    low_precision_mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.mm,
) -> ChunkPlan:
    """Rows = `chunk_size` (at most N); vocabulary tile from `tile_bytes` unless given.

    The budget covers every buffer whose size grows with the tile: the float32 logits (two
    with entropy) and, for low-precision weights, the float32 ∂W-tile accumulator `[tile, H]`
    plus the float32 weight tile (upcasting) or the low-precision copy of ∂z (not upcasting).
    """
    rows = max(1, min(chunk_size, num_tokens))
    if vocab_chunk_size is None:
        bytes_per_column = 4 * rows * (2 if with_entropy else 1)
        if weight_dtype not in (torch.float32, torch.float64):
            bytes_per_column += 4 * hidden_size + (4 * hidden_size if upcast_matmul else 2 * rows)
        limit = max(MIN_VOCAB_TILE, tile_bytes // bytes_per_column)
        tile = math.ceil(vocab_size / math.ceil(vocab_size / limit))  # even tiles within the limit
        if 64 * math.ceil(tile / 64) <= limit:  # a multiple of 64 columns where the budget allows
            tile = 64 * math.ceil(tile / 64)
    else:
        tile = vocab_chunk_size
    tile = max(1, min(tile, vocab_size))
    return ChunkPlan(rows=rows, vocab=tile, upcast_matmul=upcast_matmul, low_precision_mm=low_precision_mm)


@dataclass(frozen=True)
class _Options:
    plan: ChunkPlan
    temperature: float
    ignore_index: int
    return_entropy: bool
    # Frozen LM head (only ∂h needed, no entropy): the forward also accumulates E_p[W] = Σ p_k W_k
    # ([N, H]) so the backward is ∂h = g (W_y − E_p[W]) / T with no GEMM and no recompute.
    hidden_grad_in_forward: bool = False


class _Tiles:
    """The tiles of one call and the scratch buffers they reuse (allocated once per pass)."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, opts: _Options):
        self.hidden, self.weight, self.bias, self.opts = hidden, weight, bias, opts
        self.plan = opts.plan
        self.inv_t = 1.0 / opts.temperature
        n, v, dev = hidden.shape[0], weight.shape[0], hidden.device
        self.row_ranges = [(s, min(n, s + self.plan.rows)) for s in range(0, n, self.plan.rows)]
        self.vocab_ranges = [(s, min(v, s + self.plan.vocab)) for s in range(0, v, self.plan.vocab)]
        # float32, or float64 when an input is float64 (so gradcheck can run in double precision)
        self.acc_dtype = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)
        self._logits = torch.empty(self.plan.rows * self.plan.vocab, dtype=self.acc_dtype, device=dev)
        # Copies are only needed where an operand is not in the GEMM dtype already, or h/T ≠ h.
        self._h_buf = None
        if hidden.dtype != self.mm_dtype or self.inv_t != 1.0:
            self._h_buf = torch.empty(self.plan.rows, hidden.shape[1], dtype=self.mm_dtype, device=dev)
        self._w_buf = None
        if weight.dtype != self.mm_dtype:
            self._w_buf = torch.empty(self.plan.vocab, weight.shape[1], dtype=self.mm_dtype, device=dev)

    @property
    def mm_dtype(self) -> torch.dtype:
        return self.acc_dtype if self.plan.upcast_matmul else self.weight.dtype

    def scratch(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Another flat buffer the size of the logits tile."""
        return torch.empty_like(self._logits, dtype=dtype or self.acc_dtype)

    def scaled_hidden(self, r0: int, r1: int) -> torch.Tensor:
        """h[r0:r1] / T in the GEMM dtype (a view when nothing needs converting)."""
        h = self.hidden[r0:r1]
        if self._h_buf is None:
            return h
        out = self._h_buf[: r1 - r0].copy_(h)
        return out.mul_(self.inv_t) if self.inv_t != 1.0 else out

    def weight_tile(self, v0: int, v1: int) -> torch.Tensor:
        w = self.weight[v0:v1]
        if self._w_buf is None:
            return w
        return self._w_buf[: v1 - v0].copy_(w)

    def logits_tile(self, h_scaled: torch.Tensor, w_tile: torch.Tensor, v0: int, v1: int) -> torch.Tensor:
        """z = (h Wᵀ + b) / T for one tile in the accumulation dtype, in the reused buffer."""
        out = tile_view(self._logits, h_scaled.shape[0], v1 - v0)
        if w_tile.dtype == self.acc_dtype:
            torch.mm(h_scaled, w_tile.t(), out=out)
        else:  # GEMM in the input dtype (accelerators), softmax in float32
            out.copy_(self.plan.low_precision_mm(h_scaled, w_tile.t()))
        if self.bias is not None:
            out.add_(self.bias[v0:v1].to(self.acc_dtype), alpha=self.inv_t)
        return out


def tile_view(flat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A contiguous `[rows, cols]` view at the start of a flat buffer (GEMM `out=` and
    elementwise ops run fastest on contiguous memory, also for the last, smaller tile)."""
    return flat[: rows * cols].view(rows, cols)


def _label_columns(labels: torch.Tensor, v0: int, v1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(column of each row's label inside tile [v0, v1), clamped; whether it is inside)."""
    local = labels - v0
    inside = (local >= 0) & (local < v1 - v0)
    return local.clamp_(0, v1 - v0 - 1).unsqueeze(1), inside


class ChunkedTokenLogProbs(torch.autograd.Function):
    """log p(label) (and entropy) per row, with a tile-recomputing backward. See the module doc."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, opts: _Options):
        tiles = _Tiles(hidden, weight, bias, opts)
        n, dev, acc = hidden.shape[0], hidden.device, tiles.acc_dtype
        valid = labels != opts.ignore_index
        safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
        run_max = torch.full((n,), -math.inf, dtype=acc, device=dev)  # m
        run_sum = torch.zeros(n, dtype=acc, device=dev)  # S = Σ e^{z−m}
        run_ent = torch.zeros(n, dtype=acc, device=dev) if opts.return_entropy else None  # Σ e^{z−m}(z−m)
        label_logit = torch.zeros(n, dtype=acc, device=dev)
        scratch = tiles.scratch() if opts.return_entropy else None
        expected_w = low = None  # Σ_k e^{z_k−m} W_k, rebased like S; divided by S at the end
        if opts.hidden_grad_in_forward:
            expected_w = torch.zeros(n, hidden.shape[1], dtype=acc, device=dev)
            low = tiles.scratch(tiles.mm_dtype) if tiles.mm_dtype != acc else None

        for v0, v1 in tiles.vocab_ranges:
            w_tile = tiles.weight_tile(v0, v1)
            for r0, r1 in tiles.row_ranges:
                z = tiles.logits_tile(tiles.scaled_hidden(r0, r1), w_tile, v0, v1)
                col, inside = _label_columns(safe_labels[r0:r1], v0, v1)
                label_logit[r0:r1] = torch.where(inside, z.gather(1, col).squeeze(1), label_logit[r0:r1])

                old_max = run_max[r0:r1]
                new_max = torch.maximum(old_max, z.amax(dim=1))
                shift = torch.where(torch.isneginf(new_max), torch.zeros_like(new_max), new_max)
                rescale = torch.exp(old_max - shift)  # 0 on the first tile (old_max = -inf)
                z.sub_(shift.unsqueeze(1))  # u = z − m'
                if run_ent is None:
                    tile_sum = z.exp_().sum(dim=1)
                    if expected_w is not None:
                        rows = expected_w[r0:r1].mul_(rescale.unsqueeze(1))
                        e = z if low is None else tile_view(low, r1 - r0, v1 - v0).copy_(z)
                        _accumulate_mm(rows, e, w_tile, first=False, plan=tiles.plan)
                else:
                    q = torch.exp(z, out=tile_view(scratch, r1 - r0, v1 - v0))
                    tile_sum = q.sum(dim=1)
                    tile_qu = q.mul_(z).sum(dim=1)  # Σ e^u u
                    # rebase the old sum to m': e^{m−m'} (Σ e^{z−m}(z−m) + (m−m') S)
                    carried = rescale * (run_ent[r0:r1] + (old_max - shift) * run_sum[r0:r1])
                    run_ent[r0:r1] = torch.where(rescale > 0, carried, torch.zeros_like(carried)) + tile_qu
                run_sum[r0:r1] = rescale * run_sum[r0:r1] + tile_sum
                run_max[r0:r1] = shift

        log_sum = run_sum.log()
        lse = run_max + log_sum
        zero = torch.zeros((), dtype=acc, device=dev)
        log_probs = torch.where(valid, label_logit - lse, zero)
        if run_ent is not None:  # H = lse − Σ p z = log S − Σ e^{z−m}(z−m) / S
            entropy = torch.where(valid, log_sum - run_ent / run_sum, zero)
        else:
            entropy = torch.empty(0, dtype=acc, device=dev)

        ctx.opts = opts
        ctx.hidden_dtype = hidden.dtype
        if expected_w is not None:
            expected_w.div_(run_sum.unsqueeze(1))
            ctx.save_for_backward(weight, safe_labels, valid, expected_w)
        else:
            ctx.save_for_backward(hidden, weight, bias, safe_labels, valid, lse, entropy)
        ctx.set_materialize_grads(False)
        if run_ent is None:
            ctx.mark_non_differentiable(entropy)
        return log_probs, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_log_probs, grad_entropy):
        if ctx.opts.hidden_grad_in_forward:
            return _hidden_grad_from_forward(ctx, grad_log_probs)
        hidden, weight, bias, labels, valid, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        if (grad_log_probs is None and grad_entropy is None) or not (need_h or need_w or need_b):
            return None, None, None, None, None
        tiles = _Tiles(hidden, weight, bias, ctx.opts)
        n, hsize, dev, acc = hidden.shape[0], hidden.shape[1], hidden.device, tiles.acc_dtype
        zero = torch.zeros((), dtype=acc, device=dev)
        g = torch.where(valid, grad_log_probs.to(acc), zero) if grad_log_probs is not None else torch.zeros(n, dtype=acc, device=dev)
        g_ent = coef = scratch = None
        if grad_entropy is not None and entropy.numel() > 0:
            g_ent = torch.where(valid, grad_entropy.to(acc), zero)
            coef = g + g_ent * entropy  # G = g δ − p (g + g_H H + g_H log p)
            scratch = tiles.scratch()

        grad_h = torch.empty(n, hsize, dtype=acc, device=dev) if need_h else None  # sums over tiles
        grad_w = (torch.empty_like(weight) if n > 0 else torch.zeros_like(weight)) if need_w else None  # no rows: no tiles
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=dev) if need_b else None
        # ∂W of a tile sums over row chunks: straight into grad_w when it has the accumulation
        # dtype, else into an accumulation-dtype tile copied out when the tile is done.
        w_acc = torch.empty(tiles.plan.vocab, hsize, dtype=acc, device=dev) if need_w and weight.dtype != acc else None
        g_low = tiles.scratch(tiles.mm_dtype) if tiles.mm_dtype != acc else None  # ∂z for low-precision GEMMs

        for ti, (v0, v1) in enumerate(tiles.vocab_ranges):
            w_tile = tiles.weight_tile(v0, v1)
            for ri, (r0, r1) in enumerate(tiles.row_ranges):
                h_scaled = tiles.scaled_hidden(r0, r1)
                z = tiles.logits_tile(h_scaled, w_tile, v0, v1)
                z.sub_(lse[r0:r1].unsqueeze(1))  # log p
                if g_ent is None:
                    z.exp_().mul_(g[r0:r1].neg().unsqueeze(1))  # −g p
                else:
                    p = torch.exp(z, out=tile_view(scratch, r1 - r0, v1 - v0))
                    z.mul_(g_ent[r0:r1].neg().unsqueeze(1)).sub_(coef[r0:r1].unsqueeze(1)).mul_(p)
                col, inside = _label_columns(labels[r0:r1], v0, v1)
                z.scatter_add_(1, col, torch.where(inside, g[r0:r1], zero).unsqueeze(1))  # + g δ_{k,y}
                grad_z = z if g_low is None else tile_view(g_low, r1 - r0, v1 - v0).copy_(z)  # ∂L/∂z

                if need_b:
                    grad_b[v0:v1] += z.sum(dim=0)
                if need_h:
                    _accumulate_mm(grad_h[r0:r1], grad_z, w_tile, first=ti == 0, plan=tiles.plan)
                if need_w:
                    target = w_acc[: v1 - v0] if w_acc is not None else grad_w[v0:v1]
                    _accumulate_mm(target, grad_z.t(), h_scaled, first=ri == 0, plan=tiles.plan)
            if w_acc is not None:
                grad_w[v0:v1].copy_(w_acc[: v1 - v0])

        inv_t = tiles.inv_t  # z = (h Wᵀ + b)/T: ∂h and ∂b carry 1/T; ∂W used h/T already
        if grad_h is not None:
            grad_h = (grad_h.mul_(inv_t) if inv_t != 1.0 else grad_h).to(hidden.dtype)
        if grad_b is not None:
            grad_b = grad_b.mul_(inv_t).to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None


def _hidden_grad_from_forward(ctx, grad_log_probs):
    """∂h = g (W_y − Σ_k p_k W_k) / T from what the forward saved (frozen LM head)."""
    weight, labels, valid, expected_w = ctx.saved_tensors
    if grad_log_probs is None:
        return None, None, None, None, None
    g = torch.where(valid, grad_log_probs.to(expected_w.dtype), torch.zeros((), dtype=expected_w.dtype, device=valid.device))
    grad_h = weight.index_select(0, labels).to(expected_w.dtype).sub_(expected_w).mul_((g / ctx.opts.temperature).unsqueeze(1))
    return grad_h.to(ctx.hidden_dtype), None, None, None, None


def _accumulate_mm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, first: bool, plan: ChunkPlan) -> None:
    """out = a @ b (first) or out += a @ b; operands in `out`'s dtype, or both low precision."""
    if a.dtype == out.dtype:
        if first:
            torch.mm(a, b, out=out)
        else:
            out.addmm_(a, b)
    elif first:
        out.copy_(plan.low_precision_mm(a, b))
    else:
        out.add_(plan.low_precision_mm(a, b))


def chunked_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    plan: ChunkPlan,
    temperature: float,
    ignore_index: int,
    return_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the autograd function on 2-D hidden `[N, H]`, weight `[V, H]`, labels `[N]`."""
    frozen_head = not weight.requires_grad and not (bias is not None and bias.requires_grad)
    opts = _Options(
        plan=plan,
        temperature=float(temperature),
        ignore_index=int(ignore_index),
        return_entropy=return_entropy,
        hidden_grad_in_forward=torch.is_grad_enabled() and hidden.requires_grad and frozen_head and not return_entropy,
    )
    return ChunkedTokenLogProbs.apply(hidden, weight, bias, labels, opts)
