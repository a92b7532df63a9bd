"""Generate with a rollout engine, score with the training reward, summarise: shared by
`r2vpo eval` (benchmarks) and the trainer's held-out evaluation.

A completion counts as correct when its reward is above `CORRECT_THRESHOLD` (0.5), the same
rule as the trainer's `reward/solved_frac`. Over a problem's n samples:
  avg@n  = mean over problems of (correct samples / n)   (accuracy; greedy when n = 1)
  pass@n = share of problems with at least one correct sample
"""

from __future__ import annotations

from dataclasses import dataclass, field

from r2vpo_ascend.rewards import validate_rewards
from r2vpo_ascend.rollout import SamplingConfig

CORRECT_THRESHOLD = 0.5


@dataclass
class ScoredProblem:
    """One problem's n sampled completions with their rewards."""

    record: dict                      # the dataset record (prompt, problem, answer, ...)
    completions: list[str]
    rewards: list[float]
    response_lengths: list[int]       # tokens
    finished: list[bool]              # stopped by EOS (not truncated at max_new_tokens)
    correct: list[bool] = field(init=False)

    def __post_init__(self):
        self.correct = [r > CORRECT_THRESHOLD for r in self.rewards]


def generate_and_score(engine, tokenizer, records: list[dict], reward_fn, *, sampling: SamplingConfig,
                       n: int = 1, max_prompt_length: int = 4096) -> list[ScoredProblem]:
    """`n` completions per record from `engine` (a `RolloutEngine`), scored by `reward_fn`.

    Prompts are tokenised and truncated from the left to `max_prompt_length` tokens, as in
    training. `reward_fn` gets every dataset column except `prompt`, repeated per completion.
    """
    if not records:
        raise ValueError("generate_and_score: no records to evaluate")
    prompt_ids = [tokenizer(r["prompt"])["input_ids"][-max_prompt_length:] for r in records]
    groups = engine.generate(prompt_ids, sampling, n=n)
    if len(groups) != len(records) or any(len(g) != n for g in groups):
        raise ValueError(f"rollout engine returned {[len(g) for g in groups]} completions per prompt; "
                         f"expected {n} for each of {len(records)} prompts")
    completions = [tokenizer.decode(g.response_ids, skip_special_tokens=True) for group in groups for g in group]
    columns = {k: [r.get(k) for r in records for _ in range(n)] for k in records[0] if k != "prompt"}
    rewards = validate_rewards(
        reward_fn(prompts=[r["prompt"] for r in records for _ in range(n)], completions=completions, **columns),
        len(completions), getattr(reward_fn, "__name__", type(reward_fn).__name__))
    scored = []
    for i, (record, group) in enumerate(zip(records, groups)):
        scored.append(ScoredProblem(record=record, completions=completions[i * n:(i + 1) * n],
                                    rewards=rewards[i * n:(i + 1) * n],
                                    response_lengths=[len(g.response_ids) for g in group],
                                    finished=[bool(g.finished) for g in group]))
    return scored


def summarize(problems: list[ScoredProblem]) -> dict[str, float]:
    """avg@n, pass@n, mean reward, mean response length and truncated share over `problems`."""
    n = len(problems[0].rewards)
    samples = [(r, c, length, done) for p in problems
               for r, c, length, done in zip(p.rewards, p.correct, p.response_lengths, p.finished)]
    avg = sum(sum(p.correct) / len(p.correct) for p in problems) / len(problems)
    return {
        "num_problems": len(problems),
        "n": n,
        f"avg@{n}": avg,
        f"pass@{n}": sum(any(p.correct) for p in problems) / len(problems),
        "accuracy": avg,
        "reward_mean": sum(s[0] for s in samples) / len(samples),
        "response_length": sum(s[2] for s in samples) / len(samples),
        "truncated_frac": sum(not s[3] for s in samples) / len(samples),
    }
