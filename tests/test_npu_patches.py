"""The fused-op patches for Llama-family layers, checked on CPU against a plain-torch stand-in.

`ReferenceNpuOps` implements the documented semantics of the four fused ops, so these tests
check our glue (which functions are replaced, argument order, tensor layouts, masks, the
fallbacks and the clean restore), not the hardware kernels.
Lines that must name the hardware carry the `# hw-ok` pragma (tests/test_hardware_names.py).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama import modeling_llama

import device
from device import npu_patches as fused  # hw-ok
from device.npu_reference_ops import ReferenceNpuOps  # hw-ok

OP_NAMES = fused.OP_FUNCTIONS  # our op name -> the fused function's name
apply_patches, remove_patches = fused.apply_npu_patches, fused.remove_npu_patches  # hw-ok


class CountingOps(ReferenceNpuOps):
    """The stand-in, counting calls, so a test fails if a patch is silently not used."""

    def __init__(self):
        self.calls = {name: 0 for name in OP_NAMES.values()}
        for name in OP_NAMES.values():
            setattr(self, name, self._counted(name, getattr(ReferenceNpuOps, name)))

    def _counted(self, name, op):
        def call(*args, **kwargs):
            self.calls[name] += 1
            return op(*args, **kwargs)

        return call


@pytest.fixture(autouse=True)
def always_restore():
    yield
    remove_patches()


def tiny_llama(attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    """openPangu-like in miniature: GQA (4 query / 2 kv heads) and biases on the attention."""
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
        max_position_embeddings=64,
        rms_norm_eps=1e-2,  # large enough that passing the wrong epsilon would show
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm weights, so a wrong gamma would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 128, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0  # left padding in the second row
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.mark.parametrize("with_padding", [False, True], ids=["causal", "padded"])
def test_patched_forward_matches_unpatched(with_padding):
    model, inputs = tiny_llama(), batch()
    if not with_padding:
        inputs.pop("attention_mask")
    valid = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
    with torch.no_grad():
        expected = model(**inputs).logits
        ops = CountingOps()
        patched = apply_patches(ops_module=ops)
        actual = model(**inputs).logits
    assert {"llama.rms_norm", "llama.rope", "llama.swiglu", "attention.sdpa"} <= set(patched)
    # 2 layers: 2 norms each + the final norm; rope on q and k; one MLP and one attention each.
    assert ops.calls == {OP_NAMES["rms_norm"]: 5, OP_NAMES["rope"]: 4, OP_NAMES["swiglu"]: 2, OP_NAMES["attention"]: 2}
    torch.testing.assert_close(actual[valid], expected[valid], atol=1e-5, rtol=0)


def test_gradients_match_through_the_patches():
    model, inputs = tiny_llama(), batch()
    # Label t is predicted from position t-1: drop labels at padding and right after it, so that
    # no padding position's output (undefined: it attends to nothing) enters the loss.
    padding = inputs["attention_mask"] == 0
    follows_padding = torch.nn.functional.pad(padding[:, :-1], (1, 0))
    labels = inputs["input_ids"].masked_fill(padding | follows_padding, -100)

    def grads():
        model.zero_grad()
        model(**inputs, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    expected = grads()
    apply_patches(ops_module=ReferenceNpuOps)
    actual = grads()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generation_with_kv_cache_is_unchanged(cache):
    # A static cache is longer than the prompt: the unmasked causal prefill must cut it (as sdpa does).
    model, inputs = tiny_llama(), batch()
    prompt = {"input_ids": inputs["input_ids"][:, :8]}
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "cache_implementation": cache}
    expected = model.generate(**prompt, **settings)
    ops = CountingOps()
    apply_patches(ops_module=ops)
    actual = model.generate(**prompt, **settings)
    assert torch.equal(actual, expected)
    assert ops.calls[OP_NAMES["attention"]] > 2  # prefill and the single-token decode steps


def test_remove_restores_the_original_functions():
    def current_functions():
        llama = modeling_llama
        return llama.LlamaRMSNorm.forward, llama.LlamaMLP.forward, llama.apply_rotary_pos_emb

    originals = current_functions()
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward
    apply_patches(ops_module=ReferenceNpuOps)
    assert modeling_llama.apply_rotary_pos_emb is not originals[2]
    assert AttentionInterface()["sdpa"] is not sdpa_attention_forward  # every registry instance sees it
    apply_patches(ops_module=ReferenceNpuOps)  # re-applying replaces, does not stack
    remove_patches()
    remove_patches()  # safe twice
    assert current_functions() == originals
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward


def test_only_the_requested_ops_are_patched():
    ops = CountingOps()
    assert apply_patches(ops=("rms_norm",), ops_module=ops, model_types=("llama",)) == ["llama.rms_norm"]
    with torch.no_grad():
        tiny_llama()(**batch())
    assert ops.calls[OP_NAMES["rms_norm"]] == 5 and ops.calls[OP_NAMES["attention"]] == 0
    with pytest.raises(ValueError, match="unknown fused op"):
        apply_patches(ops=("flash",), ops_module=ops)
    with pytest.raises(ValueError, match="unknown model type"):
        apply_patches(ops_module=ops, model_types=("gpt2",))
    with pytest.raises(RuntimeError, match="upgrade"):
        apply_patches(ops_module=object())


def test_unsupported_inputs_fall_back_to_the_original_code():
    model, inputs = tiny_llama(attn_implementation="eager"), batch()
    with torch.no_grad():
        expected = model(**inputs).logits
        model.model.layers[0].mlp.config.hidden_act = "gelu"  # not a SwiGLU MLP any more
        expected_gelu = model(**inputs).logits
        ops = CountingOps()
        apply_patches(ops_module=ops)
        actual_gelu = model(**inputs).logits
        model.model.layers[0].mlp.config.hidden_act = "silu"
        actual = model(**inputs).logits
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(actual_gelu[valid], expected_gelu[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(actual[valid], expected[valid], atol=1e-5, rtol=0)
    assert ops.calls[OP_NAMES["attention"]] == 0  # eager attention is not routed through the registry


def test_reference_stand_in_follows_the_documented_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8)
    cos, sin = torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    ops = CountingOps()
    torch.testing.assert_close(getattr(ops, OP_NAMES["rope"])(x, cos, sin), x * cos + rotated * sin)
    swiglu = getattr(ops, OP_NAMES["swiglu"])
    torch.testing.assert_close(swiglu(x), torch.nn.functional.silu(x[..., :half]) * x[..., half:])
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 5, 8)
    compressed = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)
    attention = getattr(ops, OP_NAMES["attention"])
    bottom_right = attention(q, k, k, 2, "BNSD", atten_mask=compressed, scale=0.5, sparse_mode=3)[0]
    explicit = torch.arange(5)[None, :] > torch.arange(3)[:, None] + 2
    full = attention(q, k, k, 2, "BNSD", atten_mask=explicit, scale=0.5, sparse_mode=0)[0]
    torch.testing.assert_close(bottom_right, full)
    torch.testing.assert_close(
        full, torch.nn.functional.scaled_dot_product_attention(q, k, k, attn_mask=~explicit, scale=0.5)
    )


def test_fused_patches_are_a_no_op_off_the_ascend_backend():
    assert device.apply_fused_patches(device.get_backend("cpu")) == []
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward
