"""Held-out evaluation with the training reward: greedy (avg@1) or sampled (avg@n) accuracy."""

from __future__ import annotations

from r2vpo_ascend.rewards import validate_rewards
from r2vpo_ascend.rollout import SamplingConfig


def evaluate(engine, tokenizer, records: list[dict], reward_fn, *, max_new_tokens: int, n: int = 1,
             temperature: float = 1.0, max_prompt_length: int = 4096) -> dict:
    """Mean reward and accuracy (share of completions scoring > 0.5) over `records`, `n` samples each."""
    prompts = [tokenizer(r["prompt"])["input_ids"][-max_prompt_length:] for r in records]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, greedy=(n == 1))
    groups = engine.generate(prompts, sampling, n=n)
    completions = [tokenizer.decode(g.response_ids, skip_special_tokens=True) for group in groups for g in group]
    columns = {k: [r[k] for r in records for _ in range(n)] for k in records[0] if k != "prompt"}
    rewards = validate_rewards(
        reward_fn(prompts=[r["prompt"] for r in records for _ in range(n)], completions=completions, **columns),
        len(completions), getattr(reward_fn, "__name__", type(reward_fn).__name__))
    lengths = [len(g.response_ids) for group in groups for g in group]
    return {"eval/reward_mean": sum(rewards) / len(rewards),
            "eval/accuracy": sum(r > 0.5 for r in rewards) / len(rewards),
            "eval/response_length": sum(lengths) / len(lengths),
            "eval/num_problems": len(records)}
