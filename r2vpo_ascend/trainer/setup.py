"""The run's config mapped onto the layers below: prompt records (data/) and the reward
function (rewards/). The functions there take explicit arguments; these say which config
fields feed them."""

from __future__ import annotations

from typing import Callable

from r2vpo_ascend.data import ArithmeticSplits, prompt_records, with_prompts
from r2vpo_ascend.data.heldout import load_split, shares_one_file
from r2vpo_ascend.rewards import resolve_reward_fn
from r2vpo_ascend.trainer.config import R2VPOConfig


def arithmetic_splits(config: R2VPOConfig) -> ArithmeticSplits:
    """The built-in task's pool and split (`data_seed`, default `seed`, fixes both)."""
    return ArithmeticSplits(dataset_size=config.dataset_size, eval_size=config.eval_size,
                            seed=config.seed if config.data_seed is None else config.data_seed,
                            max_digits=config.arithmetic_max_digits, ops=tuple(config.arithmetic_ops),
                            num_terms=config.arithmetic_terms, eval_split=config.eval_split,
                            sequence_length=config.sequence_length)


def arithmetic_split(config: R2VPOConfig, split: str) -> list[dict]:
    """`split` (`train` or `eval`) of the built-in task (`arithmetic` or `sequence`), without prompts."""
    source = config.dataset if split == "train" else (config.eval_dataset or config.dataset)
    return arithmetic_splits(config).records(split, task=source if source == "sequence" else "arithmetic")


def config_records(config: R2VPOConfig, tokenizer, *, split: str) -> list[dict]:
    """Records with a `prompt` string plus every dataset column (`answer`, ...), for `split`.

    No `eval_dataset` and one local file that serves both splits: the held-out rows are a
    seeded slice carved from it and training gets the rest (data/heldout.py), so evaluation
    never scores training rows."""
    train = split == "train"
    if config.dataset != "arithmetic" and config.eval_dataset is None \
            and shares_one_file(config.dataset, config.dataset_split):
        rows = load_split(config.dataset, split=split, train_split=config.dataset_split,
                          eval_size=config.eval_size, seed=config.seed if config.data_seed is None else config.data_seed,
                          carve=True, problem_key=config.problem_key, answer_key=config.answer_key)
        return with_prompts(rows, tokenizer, template=config.prompt_template, system_prompt=config.system_prompt)
    return prompt_records(config.dataset if train else (config.eval_dataset or config.dataset), tokenizer,
                          split=split, template=config.prompt_template, system_prompt=config.system_prompt,
                          arithmetic=arithmetic_splits(config), problem_key=config.problem_key,
                          answer_key=config.answer_key, file_split=config.dataset_split if train else "test",
                          limit=None if train else config.eval_size)


def config_reward_fn(config: R2VPOConfig) -> Callable[..., list[float]]:
    return resolve_reward_fn(config.reward, dataset=config.dataset, verify_timeout_s=config.verify_timeout_s,
                             format_reward_weight=config.format_reward_weight)
