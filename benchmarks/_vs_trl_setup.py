"""The shared set-up of benchmarks/bench_vs_trl.py and benchmarks/profile_step.py: the model,
the prompts and the learning rate both trainers get.

`name` "tiny": the random-init tiny model with the character tokenizer and the built-in
arithmetic prompts (default arithmetic config). `name` "smollm2-135m-instruct": the real
pretrained model (the preset; its fp32 conversion cached, docs/real_model.md) with its own
tokenizer, and the task of configs/smollm2_math.yaml: its arithmetic problems asked through the
model's chat template with that config's prompt template.
"""

from __future__ import annotations

from pathlib import Path

LR = 1e-5
MODELS = ("tiny", "smollm2-135m-instruct")
REAL_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "smollm2_math.yaml"


def _records(seed: int, tokenizer=None, name: str = "tiny") -> list[dict]:
    """The training prompts (with their `answer` column) for model `name`."""
    from r2vpo_ascend import R2VPOConfig
    from r2vpo_ascend.models.tokenizer import build_char_tokenizer
    from r2vpo_ascend.trainer.setup import config_records

    if name == "tiny":
        return config_records(R2VPOConfig(seed=seed, eval_every=0), build_char_tokenizer(), split="train")
    config = R2VPOConfig.from_yaml(REAL_CONFIG, [f"seed={seed}"])
    return config_records(config, tokenizer, split="train")


def _model(seed: int, name: str = "tiny"):
    from r2vpo_ascend.models.tiny import build_tiny_model
    from r2vpo_ascend.models.tokenizer import build_char_tokenizer

    if name == "tiny":
        tokenizer = build_char_tokenizer()
        return build_tiny_model(tokenizer, seed=seed), tokenizer
    import torch

    from r2vpo_ascend.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(name, dtype=torch.float32, seed=seed)


def max_prompt_length(name: str) -> int:
    """Our trainer's prompt limit: the config's for the real model, the default otherwise."""
    from r2vpo_ascend import R2VPOConfig

    return (R2VPOConfig.from_yaml(REAL_CONFIG) if name != "tiny" else R2VPOConfig()).max_prompt_length
