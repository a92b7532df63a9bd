"""Replay of stale rollouts: the buffer and the re-weighting diagnostics
(docs/algorithms.md "Replay buffer and re-weighting of stale data"). Pure Python and tensors."""

from .buffer import ReplayBuffer, Rollout, replay_count
from .reweighter import STALENESS_TAIL, replay_metrics, staleness_bucket_name

__all__ = ["ReplayBuffer", "Rollout", "STALENESS_TAIL", "replay_count", "replay_metrics", "staleness_bucket_name"]
