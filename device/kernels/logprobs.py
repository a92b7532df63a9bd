"""Per-token log-probs log π(y_t | ·) from final hidden states and the LM head.

    log_probs = token_log_probs(hidden_states, lm_head.weight, labels)            # [N]
    log_probs, entropy = token_log_probs(h, w, labels, return_entropy=True)      # [N], [N]

The full `[N, V]` logits (153k vocabulary: 5 GB in float32 for 8k tokens) are never built:
the logits are computed tile by tile in float32, only `[N]` statistics are saved, and the
backward recomputes each tile (logprobs_chunked.py). One implementation per backend, picked by
`hidden_states.device.type`:

    cpu  → the plain PyTorch chunked implementation (float32 GEMMs; the reference)
    cuda → same algorithm, GEMMs in the input dtype with float32 output (logprobs_cuda.py)
    npu  → same algorithm on torch_npu ops, GEMMs in the input dtype (logprobs_npu.py)

`impl="naive"` is the full-logits reference, `log_softmax(h @ Wᵀ / T).gather(y)`, kept for
tests and benchmarks; `impl="chunked"` forces the plain chunked implementation anywhere.
"""

from __future__ import annotations

import torch

from device.kernels.logprobs_chunked import ChunkPlan, chunked_log_probs, make_plan

_MiB = 1 << 20
# CPU: budget for the buffers that grow with the vocabulary tile (float32 logits tile, etc.).
# On a 2-core Xeon (shared, noisy): 8 MiB tiles cost ~25% more CPU time (smaller GEMMs);
# 32-256 MiB were within noise of each other. docs/performance.md has the measurements.
CPU_TILE_BYTES = 64 * _MiB
IMPLS = ("auto", "chunked", "naive")

Result = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def token_log_probs(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    lm_head_bias: torch.Tensor | None = None,
    impl: str = "auto",
    vocab_chunk_size: int | None = None,
) -> Result:
    """log_softmax(z)[label] with z = (h Wᵀ + b) / T, without materialising the `[N, V]` logits.

    hidden_states `[..., H]` (any float dtype), lm_head_weight `[V, H]`, labels `[...]` (int),
    lm_head_bias `[V]` or None. Returns float32 log-probs shaped like `labels` (float64 for
    float64 inputs), and with `return_entropy` also the entropy H = logsumexp(z) − Σ softmax(z)·z.
    Positions where `labels == ignore_index` give 0 (log-prob and entropy) and no gradient.
    Differentiable w.r.t. hidden_states, lm_head_weight and lm_head_bias, through both outputs
    (not twice). With a frozen head (weight and bias not requiring grad) and no entropy, the
    forward also computes ∂/∂h's only GEMM, so the backward is elementwise.

    chunk_size: token rows per chunk. vocab_chunk_size: vocabulary columns per tile; None picks
    it from a per-backend memory budget (CPU: CPU_TILE_BYTES). impl: "auto" (by device type),
    "chunked" (the plain PyTorch chunked implementation on any device) or "naive" (full logits).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {', '.join(IMPLS)}")
    hidden, weight, flat_labels, bias = _check_inputs(
        hidden_states,
        lm_head_weight,
        labels,
        lm_head_bias,
        temperature=temperature,
        chunk_size=chunk_size,
        vocab_chunk_size=vocab_chunk_size,
        ignore_index=ignore_index,
    )
    if impl == "naive":
        log_probs, entropy = _naive(hidden, weight, bias, flat_labels, temperature, ignore_index, return_entropy)
    else:
        log_probs, entropy = _chunked_on_kept_rows(
            hidden, weight, bias, flat_labels, chunk_size, vocab_chunk_size, temperature, ignore_index, return_entropy, impl
        )
    log_probs = log_probs.view(labels.shape)
    return (log_probs, entropy.view(labels.shape)) if return_entropy else log_probs


def chunked_token_log_probs(hidden_states: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor, **kwargs) -> Result:
    """The plain PyTorch chunked implementation on any device (`token_log_probs(..., impl="chunked")`)."""
    return token_log_probs(hidden_states, lm_head_weight, labels, **kwargs, impl="chunked")


def naive_token_log_probs(hidden_states: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor, **kwargs) -> Result:
    """The full-logits reference (`token_log_probs(..., impl="naive")`); memory O(N·V)."""
    kwargs.pop("chunk_size", None)
    kwargs.pop("vocab_chunk_size", None)
    return token_log_probs(hidden_states, lm_head_weight, labels, **kwargs, impl="naive")


def _chunked_on_kept_rows(hidden, weight, bias, labels, chunk_size, vocab_chunk_size, temperature, ignore_index, return_entropy, impl):
    """The chunked implementation; on CPU, rows whose label is ignore_index (prompt, padding)
    are dropped before any GEMM and get their zeros back after. On accelerators they are computed
    and masked instead: finding them would make the host wait for the device."""
    kept = None
    if hidden.device.type == "cpu":
        keep = labels != ignore_index
        if not bool(keep.all()):
            kept = keep.nonzero().squeeze(1)
            hidden, labels = hidden.index_select(0, kept), labels.index_select(0, kept)
    plan = _plan(hidden, weight, chunk_size, vocab_chunk_size, return_entropy, reference=impl == "chunked")
    log_probs, entropy = chunked_log_probs(
        hidden, weight, bias, labels, plan=plan, temperature=temperature, ignore_index=ignore_index, return_entropy=return_entropy
    )
    if kept is None:
        return log_probs, entropy
    n = keep.numel()
    log_probs = log_probs.new_zeros(n).index_copy(0, kept, log_probs)
    if return_entropy:
        entropy = entropy.new_zeros(n).index_copy(0, kept, entropy)
    return log_probs, entropy


def _naive(hidden, weight, bias, labels, temperature, ignore_index, return_entropy):
    """log_softmax(h Wᵀ + b) / T gathered at the labels; GEMM in the weight dtype, softmax in float32."""
    acc = torch.promote_types(weight.dtype, torch.float32)  # float64 stays float64 (gradcheck)
    logits = torch.nn.functional.linear(hidden.to(weight.dtype), weight, bias).to(acc) / temperature
    log_softmax = torch.log_softmax(logits, dim=-1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    zero = torch.zeros((), dtype=acc, device=hidden.device)
    log_probs = torch.where(valid, log_softmax.gather(1, safe.unsqueeze(1)).squeeze(1), zero)
    entropy = torch.empty(0, device=hidden.device)
    if return_entropy:
        entropy = torch.where(valid, -(log_softmax.exp() * log_softmax).sum(dim=-1), zero)
    return log_probs, entropy


def _plan(hidden, weight, chunk_size, vocab_chunk_size, with_entropy, *, reference: bool) -> ChunkPlan:
    """The backend's tiling and GEMM precision for this call."""
    kind = "cpu" if reference else hidden.device.type
    if kind == "cpu":
        options = {"upcast_matmul": True, "tile_bytes": CPU_TILE_BYTES}
    elif kind == "cuda":
        from device.kernels import logprobs_cuda

        options = logprobs_cuda.plan_options(hidden.device)
    elif kind == "npu":
        from device.kernels import logprobs_npu

        options = logprobs_npu.plan_options(hidden.device)
    else:  # another accelerator: the generic chunked path, GEMMs in the input dtype
        options = {"upcast_matmul": False, "tile_bytes": 512 * _MiB}
    return make_plan(
        hidden.shape[0],
        weight.shape[0],
        weight.shape[1],
        weight_dtype=weight.dtype,
        chunk_size=chunk_size,
        vocab_chunk_size=vocab_chunk_size,
        with_entropy=with_entropy,
        **options,
    )


def _check_inputs(hidden, weight, labels, bias, *, temperature, chunk_size, vocab_chunk_size, ignore_index):
    """Validate shapes/dtypes (errors a caller can cause) and flatten to `[N, H]`, `[N]`."""
    if not (hidden.is_floating_point() and weight.is_floating_point()):
        raise TypeError(f"hidden_states and lm_head_weight must be floating point, got {hidden.dtype} and {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"lm_head_weight must be [vocab, hidden], got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden_states [..., {weight.shape[1]}] expected for lm_head_weight {tuple(weight.shape)}, got {tuple(hidden.shape)}")
    if tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal hidden_states shape without the last dim {tuple(hidden.shape[:-1])}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    devices = {t.device for t in (hidden, weight, labels, bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"hidden_states, lm_head_weight, labels and lm_head_bias must be on one device, got {sorted(map(str, devices))}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"lm_head_bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1 or (vocab_chunk_size is not None and vocab_chunk_size < 1):
        raise ValueError(f"chunk_size and vocab_chunk_size must be >= 1, got {chunk_size} and {vocab_chunk_size}")
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1).long()
    if labels.device.type == "cpu":  # elsewhere the check would wait for the device
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= weight.shape[0]))
        if bool(bad.any()):
            first = labels[bad][0].item()
            raise ValueError(f"labels must be in [0, {weight.shape[0]}) or ignore_index={ignore_index}; found {first}")
    return hidden, weight, labels, bias
