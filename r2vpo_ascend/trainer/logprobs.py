"""Per-token log-probs of the responses under a causal LM, without the full logits.

Runs the decoder to its final hidden states, keeps only the columns that predict response
tokens, and hands them with the LM head to `device.kernels.token_log_probs`, which works
through the vocabulary in chunks (153k-vocab models never hold [tokens × vocab] logits).

With a `compute_dtype` (config `mixed_precision: bf16`) the decoder runs under torch.autocast
and its hidden states are cast back to float32 for the head, so the kernel's products are
float32; the decoder's bf16 rounding still reaches the log-probs, and it dominates the log-ratio
after a small step (docs/performance.md, "bf16 mixed precision").
"""

from __future__ import annotations

import torch

import device
from device.kernels import token_log_probs

from r2vpo_ascend.trainer.batch import TokenBatch

IGNORE = -100


def response_log_probs(model: torch.nn.Module, batch: TokenBatch, *, temperature: float = 1.0,
                       with_entropy: bool = False, chunk_size: int = 1024,
                       compute_dtype: torch.dtype | None = None):
    """Log π(response token) at `temperature`, `[B, T]` (0 on padding); entropy `[B, T]` too if asked.
    `compute_dtype`: the decoder's autocast dtype (None: the weights' own)."""
    decoder = model.get_decoder()
    with device.autocast(batch.input_ids.device, compute_dtype):
        hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, use_cache=False).last_hidden_state
    P, T = batch.prompt_width, batch.response_ids.shape[1]
    hidden = hidden[:, P - 1:P - 1 + T, :]                     # columns predicting response tokens
    head = model.get_output_embeddings()
    if compute_dtype is not None:
        hidden = hidden.to(head.weight.dtype)
    labels = batch.response_ids.masked_fill(batch.response_mask == 0, IGNORE)
    out = token_log_probs(hidden.reshape(-1, hidden.shape[-1]), head.weight, labels.reshape(-1),
                          chunk_size=chunk_size, temperature=temperature, return_entropy=with_entropy,
                          ignore_index=IGNORE, lm_head_bias=getattr(head, "bias", None))
    if with_entropy:
        logp, entropy = out
        return logp.view(labels.shape), entropy.view(labels.shape)
    return out.view(labels.shape), None

