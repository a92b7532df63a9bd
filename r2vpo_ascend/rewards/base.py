"""The reward-function contract and the check applied to every reward a function returns.

A reward function has the TRL-like signature

    reward_fn(prompts: list[str], completions: list[str], **columns) -> list[float]

where each dataset column (e.g. ``answer``) arrives as a keyword list aligned with
``completions`` (one entry per completion, so a prompt sampled G times repeats its
answer G times).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
import numbers
from typing import Any, Protocol, Sequence
from r2vpo_ascend.algos.errors import RewardError  # noqa: F401  (re-exported)

# A completion counts as correct (solved) when its reward is above this: the trainer's
# `reward/solved_frac`, the held-out `eval/accuracy` and `r2vpo eval`'s avg@n / pass@n.
CORRECT_THRESHOLD = 0.5


class RewardFn(Protocol):
    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]: ...


def validate_rewards(rewards: Any, n_expected: int, source_name: str) -> list[float]:
    """Check that ``rewards`` holds exactly ``n_expected`` finite numbers; return them as floats.

    Accepts a list/tuple, or anything with ``tolist()`` (numpy arrays, torch tensors).
    Raises ``RewardError`` naming ``source_name`` and the first offending index.
    """
    if hasattr(rewards, "tolist") and not isinstance(rewards, (list, tuple)):
        rewards = rewards.tolist()
    if isinstance(rewards, (str, bytes)) or not isinstance(rewards, Sequence):
        raise RewardError(
            f"reward function {source_name!r} must return a list of {n_expected} numbers, "
            f"got {type(rewards).__name__}"
        )
    if len(rewards) != n_expected:
        raise RewardError(
            f"reward function {source_name!r} returned {len(rewards)} rewards for "
            f"{n_expected} completions (expected one reward per completion)"
        )
    checked: list[float] = []
    for index, value in enumerate(rewards):
        if not isinstance(value, numbers.Real):  # bools are accepted as 1.0 / 0.0
            raise RewardError(
                f"reward function {source_name!r} returned a non-number at index {index}: "
                f"{value!r} ({type(value).__name__}); expected a finite float"
            )
        value = float(value)
        if math.isnan(value):
            raise RewardError(f"reward function {source_name!r} returned NaN at index {index}")
        if math.isinf(value):
            raise RewardError(f"reward function {source_name!r} returned {value} at index {index}")
        checked.append(value)
    return checked


def column_for(columns: dict[str, Any], key: str, n_expected: int, source_name: str) -> list[Any]:
    """Fetch dataset column ``key`` from a reward call's keyword columns and check its length."""
    if key not in columns or columns[key] is None:
        present = ", ".join(sorted(columns)) or "none"
        raise RewardError(
            f"reward function {source_name!r} needs the dataset column {key!r} as a keyword "
            f"argument (columns passed: {present})"
        )
    values = list(columns[key])
    if len(values) != n_expected:
        raise RewardError(
            f"reward function {source_name!r}: column {key!r} has {len(values)} entries for "
            f"{n_expected} completions (expected one per completion)"
        )
    return values


class GoldAnswerReward(ABC):
    """A reward that scores each completion against its row's gold answer (the `answer_key`
    column), one completion at a time: subclasses define `__name__` and `score`."""

    __name__ = "gold_answer"

    def __init__(self, *, answer_key: str = "answer"):
        self.answer_key = answer_key

    @abstractmethod
    def score(self, completion: str, gold: Any) -> float:
        """One completion's reward against its gold answer."""

    def __call__(self, prompts: list[str] | None, completions: list[str], **columns: Any) -> list[float]:
        golds = column_for(columns, self.answer_key, len(completions), self.__name__)
        return [self.score(str(completion), gold) for completion, gold in zip(completions, golds)]
