"""What a SmolLM2 model answers on configs/smollm2_math.yaml's held-out problems, and why it scores
what it scores: greedy completions of the trainer's own evaluation slice, sorted into

    correct                 math-verify says the final answer equals the gold one
    boxed, wrong            a non-empty final \\boxed{} whose content is not the answer
    right number, unboxed   no \\boxed{}, but the gold answer appears as a number in the text
    other                   neither (wrong number, no number, another topic)

    python -m experiments.real_model_samples --model runs/real_model/r2vpo/final --out runs/real_model/samples_r2vpo.json
    python -m experiments.real_model_samples --model smollm2-135m-instruct --out runs/real_model/samples_base.json

It prints the shares and a few completions of each kind; the JSON holds every completion.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from r2vpo_ascend.evaluation.scoring import generate_and_score
from r2vpo_ascend.rewards.format import last_boxed_content
from r2vpo_ascend.rollout import HFGenerateEngine, SamplingConfig
from r2vpo_ascend.trainer.config import R2VPOConfig
from r2vpo_ascend.trainer.setup import config_records, config_reward_fn

KINDS = ("correct", "boxed, wrong", "right number, unboxed", "other")


def kind_of(completion: str, answer: str, correct: bool) -> str:
    if correct:
        return "correct"
    boxed = last_boxed_content(completion)
    if boxed is not None and boxed.strip():
        return "boxed, wrong"
    if answer.strip() in re.findall(r"-?\d+", completion):
        return "right number, unboxed"
    return "other"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a final/ directory, or smollm2-135m-instruct")
    ap.add_argument("--config", default="configs/smollm2_math.yaml")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--show", type=int, default=3, help="completions printed per kind")
    args = ap.parse_args(argv)

    import torch

    from r2vpo_ascend.models.loading import load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    cfg = R2VPOConfig.from_yaml(args.config, [f"model={args.model}"])
    model, tokenizer = load_model_and_tokenizer(cfg.model, dtype=torch.float32, seed=cfg.seed)
    model.eval()
    records = config_records(cfg, tokenizer, split="eval")
    reward_fn = config_reward_fn(cfg)
    try:
        scored = generate_and_score(HFGenerateEngine(model, tokenizer), tokenizer, records, reward_fn,
                                    sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens, greedy=True),
                                    max_prompt_length=cfg.max_prompt_length)
    finally:
        getattr(reward_fn, "close", lambda: None)()
    rows = []
    for p in scored:
        completion, correct = p.completions[0], bool(p.correct[0])
        rows.append({"problem": p.record["problem"], "answer": str(p.record["answer"]), "completion": completion,
                     "reward": p.rewards[0], "length": p.response_lengths[0],
                     "kind": kind_of(completion, str(p.record["answer"]), correct)})
    shares = {k: sum(r["kind"] == k for r in rows) / len(rows) for k in KINDS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "config": args.config, "problems": len(rows),
                                    "shares": shares, "rows": rows}, indent=2, ensure_ascii=False))
    print(f"{args.model}: {len(rows)} held-out problems, greedy, {cfg.max_new_tokens} tokens")
    for k in KINDS:
        print(f"  {k:22s} {100 * shares[k]:5.1f}%")
        for r in [r for r in rows if r["kind"] == k][:args.show]:
            print(f"      {r['problem']} = {r['answer']}: {r['completion'][:160]!r}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
