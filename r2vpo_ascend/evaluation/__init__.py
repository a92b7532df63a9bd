"""Evaluation: generate with a rollout engine, score with the training reward, report avg@n / pass@n.

`scoring` is the shared core (also used by the trainer's held-out evaluation); `bench` is
`r2vpo eval` (benchmarks, engine choice, table and JSON).
"""

from r2vpo_ascend.evaluation.scoring import CORRECT_THRESHOLD, ScoredProblem, generate_and_score, summarize

__all__ = ["CORRECT_THRESHOLD", "ScoredProblem", "generate_and_score", "summarize"]
