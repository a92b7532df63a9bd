"""Generate with a rollout engine, score with the training reward, summarise: shared by
`r2vpo eval` (benchmarks), the trainer's held-out evaluation (`evaluate`) and the trainer's
rollout and reward stages (`tokenize_prompts`, `check_groups`, `score_completions`).

A completion counts as correct when its reward is above `rewards.CORRECT_THRESHOLD` (0.5),
the same rule as the trainer's `reward/solved_frac`. Over a problem's n samples:
  avg@n  = mean over problems of (correct samples / n)   (accuracy; greedy when n = 1)
  pass@n = share of problems with at least one correct sample
"""

from __future__ import annotations

from dataclasses import dataclass, field

from r2vpo_ascend.algos.errors import RolloutError
from r2vpo_ascend.rewards import CORRECT_THRESHOLD, validate_rewards
from r2vpo_ascend.rollout import Generation, SamplingConfig


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


# ---- the pieces the trainer's rollout and reward stages share -------------------------------
def tokenize_prompts(tokenizer, records: list[dict], max_prompt_length: int) -> list[list[int]]:
    """Each record's `prompt` as token ids, truncated from the left to `max_prompt_length`."""
    return [tokenizer(r["prompt"])["input_ids"][-max_prompt_length:] for r in records]


def check_groups(groups: list[list[Generation]], num_prompts: int, n: int) -> None:
    """The engine answered every prompt with `n` generations (RolloutError otherwise)."""
    if len(groups) != num_prompts or any(len(g) != n for g in groups):
        raise RolloutError(f"rollout engine returned {[len(g) for g in groups]} responses per prompt; "
                           f"expected {n} for each of {num_prompts} prompts")


def score_completions(reward_fn, records: list[dict], completions: list[str], n: int) -> list[float]:
    """`reward_fn` on `completions` (n consecutive ones per record), with the prompts and every
    other dataset column repeated per completion; one checked finite float each."""
    columns = {k: [r.get(k) for r in records for _ in range(n)] for k in records[0] if k != "prompt"}
    prompts = [r["prompt"] for r in records for _ in range(n)]
    return validate_rewards(reward_fn(prompts=prompts, completions=completions, **columns), len(completions),
                            getattr(reward_fn, "__name__", type(reward_fn).__name__))


# ---- evaluation -----------------------------------------------------------------------------
def generate_and_score(engine, tokenizer, records: list[dict], reward_fn, *, sampling: SamplingConfig,
                       n: int = 1, max_prompt_length: int = 4096) -> list[ScoredProblem]:
    """`n` completions per record from `engine` (a `RolloutEngine`), scored by `reward_fn`.

    Prompts are tokenised and truncated from the left to `max_prompt_length` tokens, as in
    training. `reward_fn` gets every dataset column except `prompt`, repeated per completion.
    """
    if not records:
        raise ValueError("generate_and_score: no records to evaluate")
    groups = engine.generate(tokenize_prompts(tokenizer, records, max_prompt_length), sampling, n=n)
    check_groups(groups, len(records), n)
    completions = [tokenizer.decode(g.response_ids, skip_special_tokens=True) for group in groups for g in group]
    rewards = score_completions(reward_fn, records, completions, n)
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


def evaluate(engine, tokenizer, records: list[dict], reward_fn, *, max_new_tokens: int, n: int = 1,
             temperature: float = 1.0, max_prompt_length: int = 4096) -> dict:
    """The trainer's held-out evaluation: mean reward and accuracy (share of completions above
    `CORRECT_THRESHOLD`) over `records`, `n` samples each (greedy when n = 1), as `eval/*` metrics."""
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, greedy=(n == 1))
    summary = summarize(generate_and_score(engine, tokenizer, records, reward_fn, sampling=sampling, n=n,
                                           max_prompt_length=max_prompt_length))
    return {"eval/reward_mean": summary["reward_mean"],
            "eval/accuracy": summary["accuracy"],
            "eval/response_length": summary["response_length"],
            "eval/num_problems": summary["num_problems"]}
