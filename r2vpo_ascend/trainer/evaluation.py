"""Held-out evaluation with the training reward: greedy (avg@1) or sampled (avg@n) accuracy.

The generate → score → summarise logic is shared with `r2vpo eval` (r2vpo_ascend/evaluation).
"""

from __future__ import annotations

from r2vpo_ascend.evaluation.scoring import generate_and_score, summarize
from r2vpo_ascend.rollout import SamplingConfig


def evaluate(engine, tokenizer, records: list[dict], reward_fn, *, max_new_tokens: int, n: int = 1,
             temperature: float = 1.0, max_prompt_length: int = 4096) -> dict:
    """Mean reward and accuracy (share of completions scoring > 0.5) over `records`, `n` samples each."""
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, greedy=(n == 1))
    summary = summarize(generate_and_score(engine, tokenizer, records, reward_fn, sampling=sampling, n=n,
                                           max_prompt_length=max_prompt_length))
    return {"eval/reward_mean": summary["reward_mean"],
            "eval/accuracy": summary["accuracy"],
            "eval/response_length": summary["response_length"],
            "eval/num_problems": summary["num_problems"]}
