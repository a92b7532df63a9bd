"""Prompt records for training and evaluation: the built-in task's splits, dataset files, prompts.

A record is a dict with a `prompt` string plus every dataset column (`problem`, `answer`, ...).
Everything is passed explicitly; the trainer maps its config onto these arguments
(trainer/setup.py) and `r2vpo eval` its command line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from r2vpo_ascend.algos.errors import ConfigError
from r2vpo_ascend.data.arithmetic import make_arithmetic_dataset
from r2vpo_ascend.data.loading import load_problems
from r2vpo_ascend.data.prompts import ARITHMETIC_TEMPLATE, build_prompt
from r2vpo_ascend.data.sequence_task import SEQUENCE_DATASET, make_successor_dataset

BUILT_IN_TASKS = ("arithmetic", SEQUENCE_DATASET)  # generated in-process, split by ArithmeticSplits


@dataclass(frozen=True)
class ArithmeticSplits:
    """Disjoint train / held-out splits of the built-in task, drawn from ONE pool of distinct
    problems so that both follow the same distribution (filtering training problems out of a
    second sample would leave a held-out set short of the easy, often-repeated problems).

    The shuffled pool is cut as [test (eval_size) | train (dataset_size) | validation (eval_size)].
    `records("eval")` returns the slice `eval_split` names (`test` or `validation`); the
    validation slice comes after the other two, so asking for it changes neither of them (a
    tuning run on validation trains on exactly the problems of the final run). The pool and
    the split depend on `seed` only (the config's `data_seed`, default `seed`).

    The defaults are `R2VPOConfig`'s (tests/test_eval.py checks they agree), so `r2vpo eval
    --bench arithmetic` scores the held-out split a default training run evaluates on.

    The built-in `sequence` task (data/sequence_task.py, `sequence_length` digits) is split the
    same way: `records(split, task="sequence")`.
    """

    dataset_size: int = 2000
    eval_size: int = 128
    seed: int = 0
    max_digits: int = 2
    ops: tuple[str, ...] = ("+", "-")
    num_terms: int = 2
    eval_split: str = "test"
    sequence_length: int = 8

    def records(self, split: str, task: str = "arithmetic") -> list[dict]:
        wanted = self.dataset_size + self.eval_size
        if task == SEQUENCE_DATASET:
            pool = make_successor_dataset(4 * wanted, seed=self.seed, length=self.sequence_length)
        else:
            pool = make_arithmetic_dataset(4 * wanted, seed=self.seed, max_digits=self.max_digits,
                                           ops=list(self.ops), num_terms=self.num_terms)
        distinct = list({r["problem"]: r for r in pool}.values())
        random.Random(self.seed).shuffle(distinct)
        validation = split != "train" and self.eval_split == "validation"
        needed = wanted + (self.eval_size if validation else 0)
        if len(distinct) < needed:
            raise ConfigError(f"the arithmetic task has only {len(distinct)} distinct problems with "
                              f"arithmetic_max_digits={self.max_digits}, arithmetic_terms={self.num_terms} "
                              f"and ops={list(self.ops)}; "
                              f"lower dataset_size + eval_size ({wanted})"
                              + (f" (+ eval_size again for eval_split=validation: {needed})" if validation else ""))
        # The held-out slices are reserved whether or not this run evaluates, so the training
        # problems never include them (a later `r2vpo eval` on the same pool stays held out).
        eval_size = self.eval_size
        if split == "train":
            return distinct[eval_size:eval_size + self.dataset_size]
        if validation:
            return distinct[wanted:wanted + eval_size]
        return distinct[:eval_size]


def with_prompts(records: list[dict], tokenizer, *, template: str | None, system_prompt: str | None) -> list[dict]:
    """Each record with a `prompt`: its own `prompt` column if it has one, else its `problem`
    rendered with the tokenizer's chat template (or `template`)."""
    return [dict(r, prompt=r["prompt"] if "prompt" in r else
                 build_prompt(tokenizer, r["problem"], system_prompt=system_prompt, template=template))
            for r in records]


def prompt_records(source: str, tokenizer, *, split: str, template: str | None = None,
                   system_prompt: str | None = None, arithmetic: ArithmeticSplits | None = None,
                   problem_key: str = "problem", answer_key: str = "answer", file_split: str = "test",
                   limit: int | None = None) -> list[dict]:
    """Records with a `prompt` for `split` (`train` or `eval`) of `source`.

    `source == "arithmetic"`: the slice of `arithmetic` (default `ArithmeticSplits()`), its
    prompts the bare expression unless `template` says otherwise. Otherwise `source` is a
    built-in benchmark, a data file/directory or a hub name, read through `load_problems`
    (`file_split`, at most `limit` problems)."""
    if source in BUILT_IN_TASKS:
        records = (arithmetic or ArithmeticSplits()).records(split, task=source)
        template = template or ARITHMETIC_TEMPLATE
    else:
        records = load_problems(source, problem_key=problem_key, answer_key=answer_key, split=file_split, limit=limit)
    return with_prompts(records, tokenizer, template=template, system_prompt=system_prompt)


def as_records(dataset, name: str) -> list[dict]:
    """A user-given dataset (list of dicts or a `datasets.Dataset`) as records; it needs a `prompt` column."""
    records = [dict(r) for r in dataset]
    if not records:
        raise ConfigError(f"`{name}` is empty")
    if "prompt" not in records[0]:
        raise ConfigError(f"`{name}` needs a `prompt` column; it has {sorted(records[0])}")
    return records
