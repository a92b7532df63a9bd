"""Replay of stale rollouts: the buffer, batch mixing, and re-weighting diagnostics
(R2VPO_SPEC.md "Replay buffer and re-weighting of stale data"). Pure Python and tensors."""

from .buffer import ReplayBuffer, Rollout, mix_batch, replay_count
from .reweighter import STALENESS_TAIL, replay_metrics, staleness_bucket_name

__all__ = ["ReplayBuffer", "Rollout", "STALENESS_TAIL", "mix_batch", "replay_count", "replay_metrics", "staleness_bucket_name"]
