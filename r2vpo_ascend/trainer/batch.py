"""Turn rollouts (token lists) into the padded tensors the policy forward needs.

Layout of one row: [left-padded prompt | response, right-padded]. The hidden state at
column P-1+t predicts response token t, so the response log-probs come from the P-1 … P+T-2
columns. Position ids restart at 0 on the first real prompt token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenBatch:
    input_ids: torch.Tensor       # [B, P+T]
    attention_mask: torch.Tensor  # [B, P+T]
    position_ids: torch.Tensor    # [B, P+T]
    response_ids: torch.Tensor    # [B, T], pad positions hold `pad_id`
    response_mask: torch.Tensor   # [B, T] float, 1 on real response tokens
    prompt_width: int             # P

    def to(self, device) -> "TokenBatch":
        return TokenBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids,
                                                    self.response_ids, self.response_mask)), self.prompt_width)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> TokenBatch:
    if len(prompts) != len(responses):
        raise ValueError(f"collate: {len(prompts)} prompts but {len(responses)} responses")
    width = max(len(p) for p in prompts)
    resp_width = max(1, max(len(r) for r in responses))
    batch = len(prompts)
    input_ids = torch.full((batch, width + resp_width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    response_mask = torch.zeros(batch, resp_width)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, width - len(p):width] = torch.tensor(p, dtype=torch.long)
        attention_mask[i, width - len(p):width + len(r)] = 1
        if r:
            input_ids[i, width:width + len(r)] = torch.tensor(r, dtype=torch.long)
            response_mask[i, :len(r)] = 1.0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return TokenBatch(input_ids, attention_mask, position_ids, input_ids[:, width:].clone(), response_mask, width)


def pad_right(rows: list[torch.Tensor], width: int, value: float = 0.0) -> torch.Tensor:
    """Stack 1-D tensors of different lengths into `[len(rows), width]`, padding on the right."""
    out = torch.full((len(rows), width), value, dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, :row.numel()] = row
    return out
