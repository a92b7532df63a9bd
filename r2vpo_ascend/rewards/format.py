"""Format reward: does a completion end with a final ``\\boxed{...}`` answer?"""

from __future__ import annotations

from typing import Any

_BOXED = "\\boxed"


def last_boxed_content(text: str) -> str | None:
    """Return the content of the last ``\\boxed{...}`` in ``text``, or None if there is none or its braces never close.

    Escaped braces (``\\{``, ``\\}``) inside the box are literal characters, not grouping.
    """
    start = text.rfind(_BOXED + "{")
    if start < 0:
        return None
    pos = start + len(_BOXED) + 1
    depth = 1
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            pos += 2  # skip the escaped character (\{, \}, \\)
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + len(_BOXED) + 1 : pos]
        pos += 1
    return None


def format_reward(completions: list[str], **unused_columns: Any) -> list[float]:
    """1.0 for each completion whose last ``\\boxed{...}`` is balanced and non-empty, else 0.0."""
    scores = []
    for completion in completions:
        content = last_boxed_content(completion)
        scores.append(1.0 if content is not None and content.strip() else 0.0)
    return scores


class FormatReward:
    """``format_reward`` with the uniform reward signature ``(prompts, completions, **columns)``."""

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return format_reward(completions)
