"""Code that runs inside the reward worker processes: grade one completion against one gold answer.

Kept apart from ``math_reward.py`` so a worker imports only this, ``math_verify`` and sympy.
math-verify's own timeouts use ``signal.alarm``, which works here because each worker runs
its tasks on its main thread; they stop slow but interruptible work without losing the
worker. Work stuck in C code is stopped by the parent killing the process.
"""

from __future__ import annotations

import functools
import logging
import re

_PRED_CONFIG = None
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def init_worker() -> None:
    """Import math-verify once per worker and silence its per-call warnings (they echo whole completions)."""
    try:
        import math_verify  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "MathVerifyReward needs the math-verify package: pip install 'math-verify[antlr4_13_2]'"
        ) from exc
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _pred_config():
    global _PRED_CONFIG
    if _PRED_CONFIG is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig

        # A \boxed{} answer wins over "the answer is ..." phrases; plain numbers (GSM8K style)
        # are still found by the expression extractor.
        _PRED_CONFIG = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return _PRED_CONFIG


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, internal_timeout: int) -> tuple:
    """Parse a gold answer such as ``72``, ``\\frac{1}{2}`` or ``\\text{(C)}``; cached (G samples share one)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    gold = gold.strip()
    if "\\boxed" in gold or _UNESCAPED_DOLLAR.search(gold):
        candidates = [gold]
    else:
        # Gold answers are bare LaTeX; boxing them makes the LaTeX extractor take the whole string.
        candidates = ["\\boxed{" + gold + "}", "$" + gold + "$", gold]
    parsed: list = []
    for candidate in candidates:
        parsed = parse(
            candidate,
            extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
            parsing_timeout=internal_timeout,
            raise_on_error=True,
        )
        if parsed:
            break
    return tuple(parsed) if parsed else (gold,)


def verify_completion(completion: str, gold: str, internal_timeout: int) -> tuple[float, str]:
    """Return ``(score, status)``: score 1.0 if the completion's final answer equals ``gold``.

    ``status`` is ``"ok"``, ``"timeout"`` (math-verify's own timeout fired) or ``"error"``
    (a comparison raised). ``internal_timeout`` is in whole seconds; 0 turns math-verify's
    signal-based timeouts off (the parent's process kill still applies).
    """
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    try:
        gold_parsed = _parse_gold(gold, internal_timeout)
        predicted = parse(
            completion, extraction_config=_pred_config(), parsing_timeout=internal_timeout, raise_on_error=True
        )
    except TimeoutException:
        return 0.0, "timeout"
    if not predicted:
        return 0.0, "ok"
    status = "ok"
    # One verify() per pair, so a comparison that times out or raises does not hide a later match.
    for gold_item in gold_parsed:
        for predicted_item in predicted:
            try:
                if verify(gold_item, predicted_item, timeout_seconds=internal_timeout, raise_on_error=True):
                    return 1.0, "ok"
            except TimeoutException:
                status = "timeout"
            except Exception:
                if status == "ok":
                    status = "error"
    return 0.0, status
