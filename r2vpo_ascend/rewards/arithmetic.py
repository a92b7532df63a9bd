"""Exact-match integer reward for the built-in arithmetic tasks (``r2vpo_ascend.data.arithmetic``)."""

from __future__ import annotations

import re
from typing import Any

from r2vpo_ascend.rewards.base import GoldAnswerReward

# A sign belongs to the number only when it does not follow a word character or ")": "5-3" holds 5 and 3.
_INTEGER = re.compile(r"(?:(?<![\w)])[-+])?\d+")
_ANSWER_MARKER = re.compile(r"answer\s*:", re.IGNORECASE)


def extract_final_integer(completion: str) -> str | None:
    """The completion's final integer answer, as written (sign kept), or None.

    Order of preference: the first integer after the last ``Answer:``; else the first
    integer after the last ``=``; else the last integer anywhere in the completion.
    """
    markers = list(_ANSWER_MARKER.finditer(completion))
    if markers:
        match = _INTEGER.search(completion, markers[-1].end())
        if match:
            return match.group()
    equals = completion.rfind("=")
    if equals >= 0:
        match = _INTEGER.search(completion, equals + 1)
        if match:
            return match.group()
    matches = _INTEGER.findall(completion)
    return matches[-1] if matches else None


def _as_int(text: Any) -> int | None:
    try:
        return int(str(text).strip())
    except ValueError:
        return None


class ArithmeticReward(GoldAnswerReward):
    """1.0 when the completion's final integer (``extract_final_integer``) equals the ``answer`` column, else 0.0.

    In-process and fast: no worker pool. Answers compare as integers (``"+19"`` and ``"019"``
    match ``"19"``); a gold answer that is not an integer compares as a stripped string.
    """

    __name__ = "arithmetic"

    def score(self, completion: str, gold: Any) -> float:
        predicted = extract_final_integer(completion)
        if predicted is None:
            return 0.0
        gold_int = _as_int(gold)
        if gold_int is None:
            return 1.0 if predicted == str(gold).strip() else 0.0
        return 1.0 if _as_int(predicted) == gold_int else 0.0
