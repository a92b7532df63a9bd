"""The embedded default model: openPangu-Embedded's architecture at toy size, random weights.

openPangu-Embedded is a dense Llama-family model (GQA, biases on the attention
projections). `tiny_config` keeps exactly that shape of architecture so every code path
(attention bias, GQA, RoPE, the fused-op patches, vLLM's loader) is exercised in tests
without any download. head_dim is 32 so the CPU build of vLLM accepts it.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


def tiny_config(vocab_size: int, *, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4,
                num_kv_heads: int = 2, intermediate_size: int | None = None, max_positions: int = 512,
                pad_token_id: int = 0, bos_token_id: int = 1, eos_token_id: int = 2) -> LlamaConfig:
    """A Llama config with openPangu-Embedded's features: GQA and attention biases."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        attention_bias=True,
        mlp_bias=False,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )


def build_tiny_model(tokenizer: PreTrainedTokenizerBase, *, seed: int = 0, **config_overrides) -> LlamaForCausalLM:
    """A randomly initialised tiny model sized to `tokenizer`'s vocabulary (deterministic in `seed`)."""
    config = tiny_config(
        len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **config_overrides,
    )
    return seeded_llama(config, tokenizer, seed)


def seeded_llama(config: LlamaConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    """`LlamaForCausalLM(config)` initialised from `seed`, without moving the run's global RNG,
    with the tokenizer's special tokens in its generation config."""
    cpu_rng = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(cpu_rng)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return model
