"""Turn config values into the objects the loop uses: prompt records, reward function, dtype."""

from __future__ import annotations

from typing import Callable

import torch

from r2vpo_ascend.data import build_prompt, load_problems, make_arithmetic_dataset
from r2vpo_ascend.rewards import get_reward_fn
from r2vpo_ascend.trainer.config import ConfigError, R2VPOConfig

ARITHMETIC_TEMPLATE = "{problem}"  # the embedded task's prompts are the bare expression, e.g. "12+7="

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(config: R2VPOConfig, backend) -> torch.dtype:
    return backend.default_dtype if config.dtype == "auto" else _DTYPES[config.dtype]


def prompt_records(config: R2VPOConfig, tokenizer, *, split: str) -> list[dict]:
    """Records with a `prompt` string plus every dataset column (`answer`, ...), for `split`."""
    source = config.dataset if split == "train" else (config.eval_dataset or config.dataset)
    if source == "arithmetic":
        if split == "train":
            records = make_arithmetic_dataset(config.dataset_size, seed=config.seed,
                                              max_digits=config.arithmetic_max_digits, ops=config.arithmetic_ops)
        else:  # a disjoint held-out split: other seed, training problems removed
            seen = {r["problem"] for r in make_arithmetic_dataset(config.dataset_size, seed=config.seed,
                                                                    max_digits=config.arithmetic_max_digits,
                                                                    ops=config.arithmetic_ops)}
            pool = make_arithmetic_dataset(4 * config.eval_size + len(seen), seed=config.seed + 7919,
                                           max_digits=config.arithmetic_max_digits, ops=config.arithmetic_ops)
            records = [r for r in pool if r["problem"] not in seen][:config.eval_size]
            if len(records) < config.eval_size:
                raise ConfigError(f"`eval_size` {config.eval_size} is more than the held-out arithmetic problems "
                                  f"left ({len(records)}); lower eval_size or dataset_size")
        template = config.prompt_template or ARITHMETIC_TEMPLATE
    else:
        records = load_problems(source, problem_key=config.problem_key, answer_key=config.answer_key,
                                split=config.dataset_split if split == "train" else "test",
                                limit=None if split == "train" else config.eval_size)
        template = config.prompt_template
    return [dict(r, prompt=r["prompt"] if "prompt" in r else
                 build_prompt(tokenizer, r["problem"], system_prompt=config.system_prompt, template=template))
            for r in records]


def resolve_reward_fn(config: R2VPOConfig) -> Callable[..., list[float]]:
    name = config.reward
    if name == "auto":
        name = "arithmetic" if config.dataset == "arithmetic" else "math_verify"
    if name == "math_verify":
        return get_reward_fn(name, timeout_s=config.verify_timeout_s, format_weight=config.format_reward_weight)
    return get_reward_fn(name)
