"""Per-backend kernels with a plain PyTorch reference that always exists.

token_log_probs: per-token log-probs (and entropy) from hidden states and the LM head,
chunked so the `[tokens, vocab]` logits are never materialised (logprobs.py).
"""

from device.kernels.logprobs import chunked_token_log_probs, naive_token_log_probs, token_log_probs

__all__ = ["chunked_token_log_probs", "naive_token_log_probs", "token_log_probs"]
