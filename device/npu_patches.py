"""Route transformers' Llama-family layers through torch_npu's fused operators.

What is replaced (class- and module-level, so every model built afterwards uses it):

| op          | replaced                                     | fused call                                    |
|-------------|----------------------------------------------|-----------------------------------------------|
| "rms_norm"  | `<Family>RMSNorm.forward`                    | `npu_rms_norm(x, weight, epsilon)[0]`         |
| "rope"      | module function `apply_rotary_pos_emb`       | `npu_rotary_mul(x, cos, sin)` for q and k     |
| "swiglu"    | `<Family>MLP.forward` (silu MLPs only)       | `npu_swiglu(cat([gate, up], -1), dim=-1)`     |
| "attention" | the "sdpa" entry of transformers' attention  | `npu_fusion_attention(q, k, v, heads, "BNSD", |
|             | registry (`AttentionInterface`)              | atten_mask, scale, keep_prob, sparse_mode)[0]`|

Each patched function falls back to the original for inputs outside what the fused call
here covers (dtype mismatch, non-silu MLP, sliding windows, float masks, ...), so patching
never changes a model's results beyond floating-point rounding. Applying is the caller's
decision (the NPU backend; see `device.apply_fused_patches`); `ops_module` is injectable so
that the glue can be tested on CPU against a plain-torch stand-in (device/npu_reference_ops.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import torch

# Our op name -> the torch_npu function it needs.
OP_FUNCTIONS = {
    "rms_norm": "npu_rms_norm",
    "rope": "npu_rotary_mul",
    "swiglu": "npu_swiglu",
    "attention": "npu_fusion_attention",
}
SUPPORTED_OPS = tuple(OP_FUNCTIONS)
# transformers model types whose modeling file has the Llama layer code (class prefix).
MODEL_FAMILIES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}

# (owner, attribute, original value), in the order patched; restored in reverse.
_INHERITED = object()  # the attribute came from a base class: restore by deleting the override
_saved: list[tuple[Any, str, Any]] = []
_saved_sdpa: Callable | None = None
# The compressed causal mask that sparse_mode 2/3 expect (2048x2048, True = masked), per device.
_causal_masks: dict[torch.device, torch.Tensor] = {}


def apply_npu_patches(
    ops: Iterable[str] = SUPPORTED_OPS,
    ops_module: Any = None,
    model_types: Iterable[str] = tuple(MODEL_FAMILIES),
) -> list[str]:
    """Patch the given ops onto the Llama-family layers; return what was patched.

    ops_module: the provider of `npu_rms_norm`, `npu_rotary_mul`, `npu_swiglu`,
        `npu_fusion_attention` (default: `torch_npu`).
    Calling it again first removes the previous patches.
    """
    ops = tuple(ops)
    unknown = sorted(set(ops) - set(SUPPORTED_OPS))
    if unknown:
        raise ValueError(f"unknown fused op(s) {unknown}: choose from {list(SUPPORTED_OPS)}")
    unknown_models = sorted(set(model_types) - set(MODEL_FAMILIES))
    if unknown_models:
        raise ValueError(f"unknown model type(s) {unknown_models}: patchable are {list(MODEL_FAMILIES)}")
    if ops_module is None:
        try:
            ops_module = importlib.import_module("torch_npu")
        except Exception as exc:
            raise RuntimeError(
                f"fused NPU ops need torch_npu, which failed to import ({type(exc).__name__}: {exc}); "
                "see docs/ascend.md"
            ) from exc
    missing = [OP_FUNCTIONS[op] for op in ops if not hasattr(ops_module, OP_FUNCTIONS[op])]
    if missing:
        raise RuntimeError(
            f"{getattr(ops_module, '__name__', ops_module)} has no {', '.join(missing)}: upgrade torch-npu, "
            "or leave those ops out of `ops`"
        )

    remove_npu_patches()
    patched: list[str] = []
    for model_type in model_types:
        modeling = _import_modeling(model_type)
        if modeling is None:
            continue
        prefix = MODEL_FAMILIES[model_type]
        if "rms_norm" in ops:
            norm = getattr(modeling, f"{prefix}RMSNorm")
            _replace(norm, "forward", _fused_rms_norm_forward(ops_module, norm.forward))
            patched.append(f"{model_type}.rms_norm")
        if "rope" in ops:
            _replace(modeling, "apply_rotary_pos_emb", _fused_rope(ops_module, modeling.apply_rotary_pos_emb))
            patched.append(f"{model_type}.rope")
        if "swiglu" in ops:
            mlp = getattr(modeling, f"{prefix}MLP")
            _replace(mlp, "forward", _fused_swiglu_forward(ops_module, mlp.forward))
            patched.append(f"{model_type}.swiglu")
    if "attention" in ops:
        _patch_sdpa(ops_module)
        patched.append("attention.sdpa")
    return patched


def remove_npu_patches() -> None:
    """Undo `apply_npu_patches` (safe to call when nothing is patched)."""
    global _saved_sdpa
    while _saved:
        owner, name, original = _saved.pop()
        if original is _INHERITED:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
    if _saved_sdpa is not None:
        from transformers import AttentionInterface

        AttentionInterface.register("sdpa", _saved_sdpa)
        _saved_sdpa = None


def _import_modeling(model_type: str):
    try:
        return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    except ImportError:
        return None  # an older/newer transformers without this model family


def _replace(owner: Any, name: str, value: Any) -> None:
    _saved.append((owner, name, vars(owner).get(name, _INHERITED)))
    setattr(owner, name, value)


def _fused_rms_norm_forward(ops: Any, original: Callable) -> Callable:
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dtype != self.weight.dtype:
            return original(self, hidden_states)  # the op needs gamma in the input's dtype
        return ops.npu_rms_norm(hidden_states, self.weight, epsilon=self.variance_epsilon)[0]

    return forward


def _fused_rope(ops: Any, original: Callable) -> Callable:
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        """q, k: [batch, heads, seq, head_dim]; cos, sin: [batch, seq, head_dim]."""
        batch, heads, seq = q.shape[:3] if q.dim() == 4 else (0, 0, 0)
        # The op's documented limits for this layout: B, N < 1000, and not B*N > 8*S (decoding).
        fits = q.dim() == 4 and unsqueeze_dim == 1 and max(batch, heads) < 1000 and batch * heads <= 8 * seq
        if not fits or cos.shape[-1] != q.shape[-1] or cos.dtype != q.dtype:
            return original(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
        cos = cos.unsqueeze(unsqueeze_dim)  # [batch, 1, seq, head_dim]: the op's "B1SD" layout
        sin = sin.unsqueeze(unsqueeze_dim)
        return ops.npu_rotary_mul(q, cos, sin), ops.npu_rotary_mul(k, cos, sin)

    return apply_rotary_pos_emb


def _fused_swiglu_forward(ops: Any, original: Callable) -> Callable:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(getattr(self, "config", None), "hidden_act", None) not in ("silu", "swish"):
            return original(self, x)
        gate_up = torch.cat((self.gate_proj(x), self.up_proj(x)), dim=-1)  # op computes silu(gate) * up
        return self.down_proj(ops.npu_swiglu(gate_up, dim=-1))

    return forward


def _patch_sdpa(ops: Any) -> None:
    # Registering on the class updates the mapping shared by every AttentionInterface instance.
    global _saved_sdpa
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    _saved_sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    AttentionInterface.register("sdpa", _fused_attention(ops, _saved_sdpa))


def _fused_attention(ops: Any, original: Callable) -> Callable:
    # Features that this call does not express: leave them to the original implementation.
    unsupported = ("position_bias", "sliding_window", "cache", "s_aux")

    def attention_forward(
        module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
    ):
        """query: [batch, heads, q_len, head_dim]; key, value: [batch, kv_heads, kv_len, head_dim].

        Returns ([batch, q_len, heads, head_dim], None) like transformers' sdpa function.
        """
        mask_is_float = attention_mask is not None and attention_mask.dtype != torch.bool
        if mask_is_float or kwargs.get("output_attentions") or any(kwargs.get(k) is not None for k in unsupported):
            return original(
                module, query, key, value, attention_mask,
                dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs,
            )
        q_len = query.shape[2]
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        atten_mask, sparse_mode = None, 0
        if attention_mask is not None:
            atten_mask = ~attention_mask  # transformers: True = attend; the op: True = masked out
            # A query row with nothing to attend to (left padding) has no defined softmax; let it
            # attend everywhere instead: its output is padding, never read, but stays finite.
            atten_mask = atten_mask & ~atten_mask.all(dim=-1, keepdim=True)
        elif causal and q_len > 1:
            # Same as transformers' sdpa: without a mask, a longer (static) cache is cut to q_len.
            key, value = key[:, :, :q_len], value[:, :, :q_len]
            # Square after the cut, so left-up (2) and right-down (3) causal alignment agree.
            atten_mask, sparse_mode = _causal_mask(query.device), 2
        output = ops.npu_fusion_attention(
            query,
            key,
            value,
            query.shape[1],
            input_layout="BNSD",
            atten_mask=atten_mask,
            scale=scale,
            keep_prob=1.0 - dropout,  # the caller passes dropout=0 in eval mode
            sparse_mode=sparse_mode,
        )[0]
        return output.transpose(1, 2).contiguous(), None

    return attention_forward


def _causal_mask(device: torch.device) -> torch.Tensor:
    if device not in _causal_masks:
        _causal_masks[device] = torch.triu(torch.ones(2048, 2048, dtype=torch.bool, device=device), diagonal=1)
    return _causal_masks[device]
