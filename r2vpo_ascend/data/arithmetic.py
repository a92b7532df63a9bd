"""Built-in synthetic tasks for the embedded default model: short integer problems with exact answers.

Problems are prompts that the model continues directly (``"12+7="`` → ``"19"``), graded by
``r2vpo_ascend.rewards.ArithmeticReward``. Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import random
from typing import Sequence

from r2vpo_ascend.data.prompts import ARITHMETIC_TEMPLATE, fill_template

ARITHMETIC_OPS = ("+", "-", "*")
SEQUENCE_TASKS = ("multi_step", "reverse")


def _random_operand(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _evaluate(operands: Sequence[int], ops: Sequence[str]) -> int:
    """Value of ``operands[0] ops[0] operands[1] ...`` with the usual precedence (* before + and -)."""
    terms, signs = [operands[0]], [1]
    for op, value in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= value
        else:
            terms.append(value)
            signs.append(1 if op == "+" else -1)
    return sum(sign * term for sign, term in zip(signs, terms))


def _check_digits(min_digits: int, max_digits: int) -> None:
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got min_digits={min_digits}, max_digits={max_digits}")


def make_arithmetic_dataset(
    n: int,
    *,
    seed: int,
    min_digits: int = 1,
    max_digits: int = 2,
    ops: Sequence[str] = ("+", "-"),
    num_terms: int = 2,
) -> list[dict]:
    """``n`` problems like ``{"problem": "12+7=", "answer": "19", "id": "arith-<seed>-<i>"}``.

    Each of the ``num_terms`` operands has a digit count drawn uniformly from
    ``[min_digits, max_digits]`` (1-digit operands include 0); each operator is drawn from
    ``ops`` (a subset of ``+ - *``; ``*`` binds tighter). Answers may be negative.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _check_digits(min_digits, max_digits)
    if num_terms < 2:
        raise ValueError(f"num_terms must be >= 2, got {num_terms}")
    if not ops or any(op not in ARITHMETIC_OPS for op in ops):
        raise ValueError(f"ops must be a non-empty subset of {ARITHMETIC_OPS}, got {tuple(ops)}")
    rng = random.Random(seed)
    records = []
    for index in range(n):
        operands = [_random_operand(rng, min_digits, max_digits) for _ in range(num_terms)]
        chosen_ops = [rng.choice(tuple(ops)) for _ in range(num_terms - 1)]
        text = str(operands[0]) + "".join(op + str(v) for op, v in zip(chosen_ops, operands[1:]))
        records.append(
            {"problem": text + "=", "answer": str(_evaluate(operands, chosen_ops)), "id": f"arith-{seed}-{index}"}
        )
    return records


def make_sequence_dataset(
    n: int,
    *,
    seed: int,
    task: str = "multi_step",
    min_digits: int = 1,
    max_digits: int = 2,
    length: int = 6,
) -> list[dict]:
    """A harder symbolic variant, for experiments beyond the default task.

    - ``task="multi_step"``: ``"a*b+c="`` with operands of ``min_digits``..``max_digits``
      digits; the answer needs a multiplication and a carry-propagating addition.
    - ``task="reverse"``: ``"reverse 38271="`` → ``"17283"``: reverse a string of ``length``
      digits (first and last digits are non-zero, so the answer is a plain integer).

    Records carry ``problem``, ``answer``, ``id`` and ``task``; deterministic given ``seed``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if task not in SEQUENCE_TASKS:
        raise ValueError(f"unknown sequence task {task!r}; choose one of {SEQUENCE_TASKS}")
    rng = random.Random(seed)
    records = []
    for index in range(n):
        if task == "multi_step":
            _check_digits(min_digits, max_digits)
            a, b, c = (_random_operand(rng, min_digits, max_digits) for _ in range(3))
            problem, answer = f"{a}*{b}+{c}=", str(a * b + c)
        else:
            if length < 2:
                raise ValueError(f"length must be >= 2 for task 'reverse', got {length}")
            digits = [rng.randint(1, 9)] + [rng.randint(0, 9) for _ in range(length - 2)] + [rng.randint(1, 9)]
            text = "".join(map(str, digits))
            problem, answer = f"reverse {text}=", text[::-1]
        records.append({"problem": problem, "answer": answer, "id": f"{task}-{seed}-{index}", "task": task})
    return records


def arithmetic_sft_pairs(dataset: Sequence[dict], *, template: str = ARITHMETIC_TEMPLATE) -> list[tuple[str, str]]:
    """``(prompt, completion)`` pairs for the SFT warm start: ``(template with the problem, answer)``.

    The completion is the bare answer; the caller appends the end-of-text token.
    """
    return [(fill_template(template, record["problem"]), str(record["answer"])) for record in dataset]
