"""The shared set-up of benchmarks/bench_vs_trl.py and benchmarks/profile_step.py: the tiny
model, the built-in arithmetic prompts and the learning rate both trainers get."""

from __future__ import annotations

LR = 1e-5


def _records(seed: int) -> list[dict]:
    """The built-in arithmetic training prompts (default arithmetic config)."""
    from r2vpo_ascend import R2VPOConfig
    from r2vpo_ascend.models.tokenizer import build_char_tokenizer
    from r2vpo_ascend.trainer.setup import config_records

    return config_records(R2VPOConfig(seed=seed, eval_every=0), build_char_tokenizer(), split="train")


def _model(seed: int):
    from r2vpo_ascend.models.tiny import build_tiny_model
    from r2vpo_ascend.models.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed)
    return model, tokenizer
