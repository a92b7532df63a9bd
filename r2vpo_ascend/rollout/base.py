"""The rollout protocol: what the trainer needs from a generation engine.

An engine turns tokenised prompts into sampled responses, and can be told that the
policy's weights changed (`sync_weights`) and to free or retake its memory around the
training phase (`sleep`/`wake`; colocated engines such as vLLM use them, HF needs nothing).
An engine that holds nothing besides what `generate` reads can subclass `RolloutEngine` and
inherit the no-op `sync_weights`, `sleep` and `wake` below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from r2vpo_ascend.algos.errors import RolloutError  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False


@dataclass
class Generation:
    """One sampled response. `response_ids` ends with EOS when the model stopped by itself."""

    prompt_ids: list[int]
    response_ids: list[int]
    finished: bool


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, n: int = 1) -> list[list[Generation]]:
        """`n` responses for each prompt: result[i] holds prompt i's responses."""

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights (default: nothing to do)."""

    def sleep(self) -> None:
        """Release memory held for generation, before the training phase (default: none held)."""

    def wake(self) -> None:
        """Retake that memory, before the next rollout (default: none held)."""


def find_eos_ids(model, tokenizer) -> list[int]:
    """EOS ids from the generation config (model object or checkpoint path) and the tokenizer."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    if config is None and isinstance(model, (str, os.PathLike)):
        try:
            from transformers import GenerationConfig
            config = GenerationConfig.from_pretrained(model)
        except (OSError, ValueError):
            config = None
    if config is not None and config.eos_token_id is not None:
        ids = [config.eos_token_id] if isinstance(config.eos_token_id, int) else list(config.eos_token_id)
    tok_eos = getattr(tokenizer, "eos_token_id", None)
    if tok_eos is not None and tok_eos not in ids:
        ids.append(tok_eos)
    if not ids:
        raise RolloutError("neither the generation config nor the tokenizer defines an EOS token")
    return ids
