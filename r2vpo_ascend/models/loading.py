"""Resolve the `model` config value into a (model, tokenizer) pair.

`tiny` is the embedded default (in-process tokenizer, random weights); a directory is a
local checkpoint. `trust_remote_code` stays off unless the user turns it on.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from r2vpo_ascend.models.tiny import build_tiny_model
from r2vpo_ascend.models.tokenizer import build_char_tokenizer


class ModelLoadError(ValueError):
    pass


def load_model_and_tokenizer(spec: str, *, tokenizer: str | None = None, trust_remote_code: bool = False,
                             dtype: torch.dtype | None = None, seed: int = 0
                             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if spec == "tiny":
        tok = build_char_tokenizer()
        return build_tiny_model(tok, seed=seed), tok
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ModelLoadError(
            f"config field `model`: {spec!r} is not `tiny` nor an existing checkpoint directory "
            "(weights are loaded from a local path; download them beforehand)")
    if not (path / "config.json").exists():
        raise ModelLoadError(f"config field `model`: {path} has no config.json; is it a Hugging Face checkpoint?")
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer or path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=dtype)
    except ValueError as e:
        if not trust_remote_code and "trust_remote_code" in str(e):
            raise ModelLoadError(f"{path} needs its own modeling code; rerun with trust_remote_code=true "
                                 "if you trust it") from e
        raise
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok
