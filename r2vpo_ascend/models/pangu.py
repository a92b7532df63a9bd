"""openPangu-Embedded checkpoints without their own modeling code: mapped onto transformers' Llama.

The checkpoints ship `configuration_openpangu_dense.py` / `modeling_openpangu_dense.py`, where
`PanguEmbeddedForCausalLM` *is* `LlamaForCausalLM` except for one switch: the config's `bias`
puts biases on the q/k/v/o projections (the MLP has none). Parameter names are Llama's
(`model.layers.N.self_attn.q_proj.bias`, ...). That modeling file also imports Ascend's PyTorch
extension at import time, so it cannot run anywhere else. Hence, unless the user turns on
`trust_remote_code`, we build a `LlamaConfig` from the checkpoint's config.json (same field
names and meanings; `bias` → `attention_bias`, `mlp_bias=False`), refuse any field Llama has no
equivalent for, and load the safetensors weights into `LlamaForCausalLM` strictly (every
tensor used, none missing). `models.loading.load_local_checkpoint` picks this path or another.

`build_pangu_tiny_model`: the same architecture at toy size with random weights (`model=pangu-tiny`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from r2vpo_ascend.algos.errors import ModelLoadError
from r2vpo_ascend.models.tiny import seeded_llama

logger = logging.getLogger(__name__)

PANGU_ARCHITECTURE = "PanguEmbeddedForCausalLM"
# model_type values seen in published openPangu-Embedded config files.
PANGU_MODEL_TYPES = ("PanguEmbedded", "openpangu_dense", "pangu_embedded")

# config.json fields with the same name and meaning in LlamaConfig (PanguEmbeddedModel is LlamaModel).
_SAME_MEANING = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
    "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings",
    "rope_theta", "rope_scaling", "rope_parameters", "attention_dropout",
)
# Bookkeeping fields that do not change the computation.
_METADATA = ("architectures", "model_type", "auto_map", "transformers_version", "torch_dtype", "dtype",
             "_name_or_path", "name_or_path", "_attn_implementation", "attn_implementation")

# PanguEmbeddedConfig's defaults (configuration_openpangu_dense.py): what the checkpoint's own code
# uses for a field its config.json leaves out. Several differ from LlamaConfig's (rope_theta 1e4,
# rms_norm_eps 1e-6, no biases, 2048 positions), so a missing field is filled from here, not by Llama.
PANGU_CONFIG_DEFAULTS: dict[str, Any] = {
    "vocab_size": 153376, "hidden_size": 4096, "intermediate_size": 12800, "num_hidden_layers": 34,
    "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu", "max_position_embeddings": 32768,
    "initializer_range": 0.02, "rms_norm_eps": 1e-5, "use_cache": True, "pad_token_id": 0, "bos_token_id": 1,
    "eos_token_id": 45892, "tie_word_embeddings": False, "rope_theta": 16000000.0, "bias": True,
    "attention_dropout": 0.0,
}

def is_pangu_embedded(config: dict[str, Any]) -> bool:
    """Whether a config.json dict describes an openPangu-Embedded (dense) model."""
    return PANGU_ARCHITECTURE in (config.get("architectures") or []) or config.get("model_type") in PANGU_MODEL_TYPES


def llama_config_from_pangu(config: dict[str, Any], *, source: str = "config.json") -> LlamaConfig:
    """A `LlamaConfig` computing exactly what PanguEmbeddedForCausalLM computes for `config`.

    Fields the file leaves out take PanguEmbeddedConfig's defaults, as the checkpoint's own code
    would. Raises ModelLoadError naming the field when one has no Llama equivalent (or
    contradicts the architecture), instead of silently dropping it.
    """
    unknown = sorted(k for k in config if k not in _SAME_MEANING + _METADATA
                     + ("bias", "attention_bias", "mlp_bias", "pretraining_tp"))
    if unknown:
        raise ModelLoadError(
            f"{source}: field(s) {unknown} have no LlamaConfig equivalent, so this checkpoint cannot be loaded "
            "through the Llama mapping without changing what it computes; set trust_remote_code=true to run "
            "the checkpoint's own modeling code (Ascend only), or remove the field if you know it is inert")
    bias = bool(config.get("bias", PANGU_CONFIG_DEFAULTS["bias"]))  # what the q/k/v/o projections use
    if "attention_bias" in config and bool(config["attention_bias"]) != bias:
        raise ModelLoadError(f"{source}: `attention_bias`={config['attention_bias']} disagrees with `bias`={bias} "
                             "(openPangu's attention uses `bias`, default true, for q/k/v/o)")
    if config.get("mlp_bias"):
        raise ModelLoadError(f"{source}: `mlp_bias`=true, but openPangu-Embedded's MLP has no biases "
                             "(gate/up/down are built with bias=False); this is not an openPangu-Embedded checkpoint")
    if config.get("pretraining_tp", 1) not in (None, 1):
        raise ModelLoadError(f"{source}: `pretraining_tp`={config['pretraining_tp']} is not supported (expected 1)")
    defaulted = {k: v for k, v in PANGU_CONFIG_DEFAULTS.items() if k not in config and k != "bias"
                 and not (k == "rope_theta" and "rope_parameters" in config)}
    if defaulted:
        logger.info("%s: %s not set, using openPangu-Embedded's defaults", source, ", ".join(sorted(defaulted)))
    config = {**defaulted, **config}
    values = {k: config[k] for k in _SAME_MEANING if k in config}
    if isinstance(values.get("rope_scaling"), dict) and "type" in values["rope_scaling"]:
        values["rope_scaling"] = {("rope_type" if k == "type" else k): v for k, v in values["rope_scaling"].items()}
    return LlamaConfig(**values, attention_bias=bias, mlp_bias=False, architectures=["LlamaForCausalLM"])


def read_config_json(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {file}: {e}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{file} must hold a JSON object")
    return config


def load_pangu_as_llama(path: Path, config: dict[str, Any], *, dtype: torch.dtype | None = None) -> LlamaForCausalLM:
    """The checkpoint's safetensors weights in `LlamaForCausalLM`; every tensor must match, none be missing."""
    llama_config = llama_config_from_pangu(config, source=str(path / "config.json"))
    if not (any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists()):
        raise ModelLoadError(f"{path} has no .safetensors weights; the Llama mapping reads safetensors only "
                             "(convert the checkpoint, or set trust_remote_code=true)")
    try:
        model, info = LlamaForCausalLM.from_pretrained(path, config=llama_config, dtype=dtype,
                                                       output_loading_info=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"loading {path} as LlamaForCausalLM failed: {e}") from e
    problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems or info.get("error_msgs"):
        detail = "; ".join(f"{k}: {v[:6]}{' ...' if len(v) > 6 else ''}" for k, v in problems.items())
        raise ModelLoadError(f"{path}: the weights do not match the mapped Llama architecture "
                             f"({detail or info['error_msgs']}); is it an openPangu-Embedded checkpoint? "
                             "trust_remote_code=true uses its own code")
    return model


# ---- the tiny stand-in ----------------------------------------------------------------------
def pangu_tiny_config(vocab_size: int, *, pad_token_id: int = 0, bos_token_id: int = 1,
                      eos_token_id: int = 2) -> dict[str, Any]:
    """A config.json dict in openPangu-Embedded's own field names, at toy size (head_dim 32)."""
    return {
        "architectures": [PANGU_ARCHITECTURE], "model_type": "PanguEmbedded", "bias": True,
        "vocab_size": vocab_size, "hidden_size": 128, "intermediate_size": 320, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
        "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 16000000.0,
        "initializer_range": 0.02, "attention_dropout": 0.0, "tie_word_embeddings": False, "use_cache": True,
        "pad_token_id": pad_token_id, "bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
    }


def build_pangu_tiny_model(tokenizer, *, seed: int = 0) -> LlamaForCausalLM:
    """Random-weight openPangu-Embedded architecture at toy size, built through the Llama mapping."""
    config = llama_config_from_pangu(pangu_tiny_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                       bos_token_id=tokenizer.bos_token_id,
                                                       eos_token_id=tokenizer.eos_token_id), source="pangu-tiny")
    return seeded_llama(config, tokenizer, seed)
