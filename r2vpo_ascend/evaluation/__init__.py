"""Evaluation: generate with a rollout engine, score with the training reward, report avg@n / pass@n.

`scoring` is the shared core (the trainer's rollout, reward and held-out evaluation use it);
`bench` runs `r2vpo eval` (benchmarks, engine choice, table and JSON). Nothing here imports
the trainer: evaluation sits below it (docs/architecture.md).
"""

from r2vpo_ascend.evaluation.scoring import (ScoredProblem, check_groups, evaluate, generate_and_score,
                                             score_completions, summarize, tokenize_prompts)
from r2vpo_ascend.rewards import CORRECT_THRESHOLD

__all__ = ["CORRECT_THRESHOLD", "ScoredProblem", "check_groups", "evaluate", "generate_and_score",
           "score_completions", "summarize", "tokenize_prompts"]
