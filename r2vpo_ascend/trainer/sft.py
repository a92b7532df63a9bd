"""A short supervised warm start: teach the answer format before RL (used by the embedded default)."""

from __future__ import annotations

import random

import torch

from r2vpo_ascend.engines.base import build_adamw
from r2vpo_ascend.trainer.batch import collate
from r2vpo_ascend.trainer.logprobs import response_log_probs


def sft_warm_start(model, tokenizer, records: list[dict], *, steps: int, lr: float, batch_size: int,
                   seed: int, device) -> list[float]:
    """`steps` AdamW steps of next-token cross-entropy on `prompt → answer<eos>`; returns the losses.

    Uses its own optimiser (the RL optimiser starts fresh afterwards) and its own RNG for
    batch order, so it leaves the run's global RNG untouched.
    """
    rng = random.Random(seed)
    optimizer = build_adamw(model.parameters(), lr=lr)  # torch's default betas and weight decay
    pairs = [(tokenizer(r["prompt"])["input_ids"],
              tokenizer(str(r["answer"]), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
             for r in records]
    losses = []
    model.train()
    for _ in range(steps):
        chunk = rng.sample(pairs, min(batch_size, len(pairs)))
        batch = collate([p for p, _ in chunk], [c for _, c in chunk], tokenizer.pad_token_id).to(device)
        log_probs, _ = response_log_probs(model, batch)
        loss = -(log_probs * batch.response_mask).sum() / batch.response_mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses
