"""The built-in sequence task (`dataset: sequence`): responses of ≥ 16 tokens for the tiny model.

The arithmetic tasks answer in 1–3 tokens, where policy ratios barely move off-policy; this
one answers with a whole sequence, so every token of a long response can drift:

    "next 3 9 2 0 7 5 1 8="  →  "4 0 3 1 8 6 2 9"     (each digit plus one, mod 10)

With `sequence_length` 8 the answer is 15 characters + EOS = 16 tokens (the char tokenizer
has one token per character). Graded by :class:`r2vpo_ascend.rewards.sequence.SequenceReward`
(the share of the 8 numbers right, position by position; "accuracy" = more than half right).
Deterministic given ``seed``.

Why this mapping (measured with the tiny model, SFT lr 3e-3, batch 64, 200 held-out problems,
greedy): running sums (carry), running sums mod 10, pairwise sums mod 10 and "add k to every
digit" all stayed at 0% exact accuracy after 300 SFT steps, too hard to give RL a signal;
the successor map is learnt token by token: exact accuracy 95.5% after 40 SFT steps, 0% after
25, where 21% of the digits are right (40 problems) and every answer has the right format. So
the study uses 25 SFT steps and a per-digit reward: a partly trained policy, a dense signal, and
16-token answers whose every token RL has to move.
"""

from __future__ import annotations

import random

SEQUENCE_DATASET = "sequence"   # the `dataset` value that selects this task
MIN_SEQUENCE_LENGTH = 2


def make_successor_dataset(n: int, *, seed: int, length: int = 8) -> list[dict]:
    """``n`` problems ``{"problem": "next 3 9 2=", "answer": "4 0 3", "id": ..., "task": "successor"}``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if length < MIN_SEQUENCE_LENGTH:
        raise ValueError(f"length must be >= {MIN_SEQUENCE_LENGTH}, got {length}")
    rng = random.Random(seed)
    records = []
    for index in range(n):
        values = [rng.randint(0, 9) for _ in range(length)]
        records.append({"problem": "next " + " ".join(map(str, values)) + "=",
                        "answer": " ".join(str((v + 1) % 10) for v in values),
                        "id": f"successor-{seed}-{index}", "task": "successor"})
    return records
