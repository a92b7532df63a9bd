"""Turn config values into the objects the loop uses: prompt records, reward function, dtype."""

from __future__ import annotations

import random
from typing import Callable

import torch

from r2vpo_ascend.data import build_prompt, load_problems, make_arithmetic_dataset
from r2vpo_ascend.data.sequence_task import SEQUENCE_DATASET, make_successor_dataset
from r2vpo_ascend.rewards import get_reward_fn
from r2vpo_ascend.trainer.config import ConfigError, R2VPOConfig

ARITHMETIC_TEMPLATE = "{problem}"  # the embedded task's prompts are the bare expression, e.g. "12+7="

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(config: R2VPOConfig, backend) -> torch.dtype:
    return backend.default_dtype if config.dtype == "auto" else _DTYPES[config.dtype]


def prompt_records(config: R2VPOConfig, tokenizer, *, split: str) -> list[dict]:
    """Records with a `prompt` string plus every dataset column (`answer`, ...), for `split`."""
    source = config.dataset if split == "train" else (config.eval_dataset or config.dataset)
    if source in ("arithmetic", SEQUENCE_DATASET):  # built-in generated tasks
        records = arithmetic_split(config, split)
        template = config.prompt_template or ARITHMETIC_TEMPLATE
    else:
        records = load_problems(source, problem_key=config.problem_key, answer_key=config.answer_key,
                                split=config.dataset_split if split == "train" else "test",
                                limit=None if split == "train" else config.eval_size)
        template = config.prompt_template
    return with_prompts(records, tokenizer, template=template, system_prompt=config.system_prompt)


def with_prompts(records: list[dict], tokenizer, *, template: str | None, system_prompt: str | None) -> list[dict]:
    """Each record with a `prompt`: its own `prompt` column if it has one, else its `problem`
    rendered with the tokenizer's chat template (or `template`)."""
    return [dict(r, prompt=r["prompt"] if "prompt" in r else
                 build_prompt(tokenizer, r["problem"], system_prompt=system_prompt, template=template))
            for r in records]


def arithmetic_split(config: R2VPOConfig, split: str) -> list[dict]:
    """Disjoint train / held-out splits of the built-in task, drawn from ONE pool of distinct
    problems so that both follow the same distribution (filtering training problems out of a
    second sample would leave a held-out set short of the easy, often-repeated problems).

    The shuffled pool is cut as [test (eval_size) | train (dataset_size) | validation (eval_size)].
    `split="eval"` returns the slice `config.eval_split` names (`test` or `validation`); the
    validation slice comes after the other two, so asking for it changes neither of them (a
    tuning run on validation trains on exactly the problems of the final run). The pool and
    the split depend on `data_seed` (default `seed`) only."""
    wanted = config.dataset_size + config.eval_size
    seed = config.seed if config.data_seed is None else config.data_seed
    if (config.dataset if split == "train" else (config.eval_dataset or config.dataset)) == SEQUENCE_DATASET:
        pool = make_successor_dataset(4 * wanted, seed=seed, length=config.sequence_length)
    else:
        pool = make_arithmetic_dataset(4 * wanted, seed=seed, max_digits=config.arithmetic_max_digits,
                                       ops=config.arithmetic_ops, num_terms=config.arithmetic_terms)
    distinct = list({r["problem"]: r for r in pool}.values())
    random.Random(seed).shuffle(distinct)
    validation = split != "train" and config.eval_split == "validation"
    needed = wanted + (config.eval_size if validation else 0)
    if len(distinct) < needed:
        raise ConfigError(f"the arithmetic task has only {len(distinct)} distinct problems with "
                          f"arithmetic_max_digits={config.arithmetic_max_digits}, arithmetic_terms={config.arithmetic_terms} "
                          f"and ops={config.arithmetic_ops}; "
                          f"lower dataset_size + eval_size ({wanted})"
                          + (f" (+ eval_size again for eval_split=validation: {needed})" if validation else ""))
    # The held-out slices are reserved whether or not this run evaluates, so the training
    # problems never include them (a later `r2vpo eval` on the same pool stays held out).
    eval_size = config.eval_size
    if split == "train":
        return distinct[eval_size:eval_size + config.dataset_size]
    if validation:
        return distinct[wanted:wanted + eval_size]
    return distinct[:eval_size]


def resolve_reward_fn(config: R2VPOConfig) -> Callable[..., list[float]]:
    name = config.reward
    if name == "auto":
        name = {"arithmetic": "arithmetic", SEQUENCE_DATASET: "sequence"}.get(config.dataset, "math_verify")
    if name == "math_verify":
        return get_reward_fn(name, timeout_s=config.verify_timeout_s, format_weight=config.format_reward_weight)
    return get_reward_fn(name)
