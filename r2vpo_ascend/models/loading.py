"""Resolve the `model` config value into a (model, tokenizer) pair.

`tiny` is the embedded default (in-process tokenizer, random weights), `pangu-tiny` the same
with openPangu-Embedded's exact architecture; a directory is a local checkpoint (openPangu-Embedded
ones are mapped onto LlamaForCausalLM unless `trust_remote_code`, see models/pangu.py); a preset
name (models/presets.py) says where to download the weights. `trust_remote_code` stays off
unless the user turns it on.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from r2vpo_ascend.models.tiny import build_tiny_model
from r2vpo_ascend.models.tokenizer import build_char_tokenizer
from r2vpo_ascend.algos.errors import ModelLoadError  # noqa: F401  (re-exported)


def load_model_and_tokenizer(spec: str, *, tokenizer: str | None = None, trust_remote_code: bool = False,
                             dtype: torch.dtype | None = None, seed: int = 0
                             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if spec in ("tiny", "pangu-tiny"):
        from r2vpo_ascend.models.pangu import build_pangu_tiny_model
        tok = build_char_tokenizer()
        return (build_tiny_model if spec == "tiny" else build_pangu_tiny_model)(tok, seed=seed), tok
    path = Path(spec).expanduser()
    if not path.is_dir():
        from r2vpo_ascend.models.presets import get_preset
        preset = get_preset(spec)
        if preset is not None:
            raise ModelLoadError(
                f"config field `model`: {spec!r} is a preset, not weights: download {preset.hf_repo_id} beforehand "
                f"(e.g. `huggingface-cli download {preset.hf_repo_id} --local-dir <dir>`) and pass that directory")
        raise ModelLoadError(
            f"config field `model`: {spec!r} is not `tiny`, `pangu-tiny` nor an existing checkpoint directory "
            "(weights are loaded from a local path; download them beforehand)")
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
    from r2vpo_ascend.models.pangu import load_local_checkpoint
    loaded = load_local_checkpoint(path, trust_remote_code=trust_remote_code, dtype=dtype)
    model = loaded.model
    if os.environ.get("RANK", "0") == "0":
        print(f"[model] {loaded.message}", flush=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok
