"""Per-position reward for the built-in sequence task (``r2vpo_ascend.data.sequence_task``)."""

from __future__ import annotations

import re
from typing import Any

from r2vpo_ascend.rewards.base import GoldAnswerReward

_NUMBER = re.compile(r"-?\d+")


class SequenceReward(GoldAnswerReward):
    """The share of the answer's numbers the completion gets right, position by position, over
    max(len(answer), len(completion)) numbers: ``"4 0 3"`` for ``"4 0 3"`` scores 1, ``"4 0 2"``
    2/3, ``"4 0"`` 2/3, ``"4 0 3 1"`` 3/4 (extra numbers cost too), no number 0.

    Partial credit because the task's answers are 8 numbers long: an exact-match reward is
    almost always 0 for a partly trained policy (no signal), this one moves with each token.
    The trainer's accuracy (share of completions scoring > 0.5) then counts completions with
    more than half the numbers right; ``eval/reward_mean`` is the mean share of right numbers.
    """

    __name__ = "sequence"

    def score(self, completion: str, gold: Any) -> float:
        got, want = _NUMBER.findall(completion), _NUMBER.findall(str(gold))
        width = max(len(got), len(want))
        return sum(a == b for a, b in zip(got, want)) / width if width else 0.0
