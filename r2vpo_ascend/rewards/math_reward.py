"""Math answer-correctness reward with HF math-verify, run in killable worker processes.

The guarantee: no completion can stall training. Each verification runs in a worker process
with a wall-clock limit (``timeout_s``); past it the call scores 0, counts as a timeout, and
its worker is killed and replaced. math-verify's own ``signal.alarm`` timeouts also run inside
the workers (they need a main thread, which a worker has and a trainer thread may not).
"""

from __future__ import annotations

import time
from typing import Any

from r2vpo_ascend.rewards import _math_verify_worker
from r2vpo_ascend.rewards.base import column_for
from r2vpo_ascend.rewards.format import format_reward
from r2vpo_ascend.rewards.worker_pool import TimeoutProcessPool

METRIC_KEYS = ("reward/verify_calls", "reward/verify_timeouts", "reward/verify_errors", "reward/verify_restarts")


class MathVerifyReward:
    """Reward 1.0 when a completion's final answer is mathematically equal to the ``answer`` column, else 0.0.

    Signature: ``reward(prompts, completions, answer=[...], **other_columns) -> list[float]``.
    The final answer is the last ``\\boxed{...}`` if there is one, else what math-verify
    finds ("the answer is 72", a trailing number, LaTeX in ``$...$``). Equivalent forms score
    1 (``\\frac{1}{2}`` vs ``0.5``).

    Args:
        timeout_s: wall-clock limit of one verification, enforced by killing its worker.
            math-verify's own timeouts get ``floor(timeout_s / 2)`` whole seconds (off below 2 s),
            so slow but interruptible calls end without a restart.
        num_workers: worker processes (created on the first call).
        format_weight: adds ``format_weight * format_reward`` (a final balanced ``\\boxed{}``).
        answer_key: the dataset column holding the gold answers.
        mp_context: ``"subprocess"`` (default: workers never import the main script, so a script
            written at top level works), ``"spawn"`` or ``"forkserver"``.

    Metrics: ``stats`` (totals since creation) and ``last_metrics`` (the latest call) hold
    ``reward/verify_calls``, ``reward/verify_timeouts``, ``reward/verify_errors`` and
    ``reward/verify_restarts`` (workers killed and replaced); ``last_metrics`` also holds
    ``reward/format_frac``, the share of completions with a final non-empty ``\\boxed{}`` (logged
    whatever ``format_weight`` is). A timed-out or failed verification scores 0.
    """

    __name__ = "math_verify"

    def __init__(
        self,
        timeout_s: float = 5.0,
        num_workers: int = 2,
        format_weight: float = 0.0,
        *,
        answer_key: str = "answer",
        mp_context: str = "subprocess",
    ):
        if not timeout_s > 0:
            raise ValueError(f"MathVerifyReward: timeout_s must be > 0, got {timeout_s}")
        if num_workers < 1:
            raise ValueError(f"MathVerifyReward: num_workers must be >= 1, got {num_workers}")
        self.timeout_s = float(timeout_s)
        self.num_workers = int(num_workers)
        self.format_weight = float(format_weight)
        self.answer_key = answer_key
        self.mp_context = mp_context
        self.internal_timeout = int(self.timeout_s // 2)
        self._pool: TimeoutProcessPool | None = None
        self._totals = dict.fromkeys(METRIC_KEYS, 0)
        self.last_metrics: dict[str, float] = dict.fromkeys(METRIC_KEYS, 0)

    # ------------------------------------------------------------------ lifecycle
    def _get_pool(self) -> TimeoutProcessPool:
        if self._pool is None:
            self._pool = TimeoutProcessPool(
                _math_verify_worker.verify_completion,
                num_workers=self.num_workers,
                timeout_s=self.timeout_s,
                mp_context=self.mp_context,
                initializer=_math_verify_worker.init_worker,
            )
        return self._pool

    def close(self) -> None:
        """Stop the worker processes. A later call starts new ones."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> "MathVerifyReward":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the pool's own finalizer still runs
            pass

    def __getstate__(self) -> dict:
        # Picklable (e.g. into another process): worker handles stay behind, new ones start lazily.
        state = self.__dict__.copy()
        state["_pool"] = None
        return state

    @property
    def stats(self) -> dict[str, int]:
        """Counters since creation: calls, timeouts, errors and worker restarts."""
        return dict(self._totals)

    # ------------------------------------------------------------------ reward
    def __call__(self, prompts: list[str] | None, completions: list[str], **columns: Any) -> list[float]:
        started = time.perf_counter()
        golds = column_for(columns, self.answer_key, len(completions), self.__name__)
        tasks = [(str(c), str(g), self.internal_timeout) for c, g in zip(completions, golds)]
        metrics = dict.fromkeys(METRIC_KEYS, 0)
        scores: list[float] = []
        if tasks:
            pool = self._get_pool()
            restarts_before = pool.stats["restarts"]
            for result in pool.map(tasks):
                metrics["reward/verify_calls"] += 1
                if result.status == "ok":
                    score, status = result.value
                else:
                    score, status = 0.0, result.status
                metrics["reward/verify_timeouts"] += status == "timeout"
                metrics["reward/verify_errors"] += status == "error"
                scores.append(float(score))
            metrics["reward/verify_restarts"] = pool.stats["restarts"] - restarts_before
        formatted = format_reward(list(completions))
        if self.format_weight:
            scores = [s + self.format_weight * f for s, f in zip(scores, formatted)]
        for key in METRIC_KEYS:
            self._totals[key] += metrics[key]
        self.last_metrics = {**metrics, "reward/verify_seconds": time.perf_counter() - started,
                             "reward/format_frac": sum(formatted) / len(formatted) if formatted else 0.0}
        return scores  # floats by construction; the trainer validates every reward function's output once
