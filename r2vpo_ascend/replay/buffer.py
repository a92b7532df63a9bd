"""Replay buffer of past rollouts (docs/algorithms.md "Replay buffer and re-weighting of stale data").

Each :class:`Rollout` keeps the behaviour log-probs of the policy version that sampled it,
so a replayed sample's ratio ρ = π_θ/μ_old is taken against its own sampler: the variance
term then sees how far it has drifted (see ``reweighter.py`` and docs/algorithms.md).

The trainer's step (``R2VPOTrainer._run_step``) reads::

    replayed = buffer.sample(replay_count(len(fresh), replay_ratio), version)  # replay drawn first,
    update(fresh + replayed)
    buffer.add(fresh)                                                        # so fresh ≠ replayed
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch


@dataclass
class Rollout:
    """One sampled response and what is needed to train on it later.

    Attributes:
        prompt_ids / response_ids: token ids.
        old_log_probs: ``[T_resp]`` float32 log-probs of ``response_ids`` under the behaviour
            policy (the version that sampled it).
        reward, advantage: the scalar reward and the advantage computed when collected.
        version: policy version (optimiser step count) that sampled it.
        group_id: id of the prompt group (the G responses to one prompt).
        extras: anything else (answer, verifier info); keep it to plain Python values and
            tensors so that checkpoints load with ``torch.load(weights_only=True)``.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    old_log_probs: torch.Tensor
    reward: float
    advantage: float
    version: int
    group_id: int
    extras: dict[str, Any] = field(default_factory=dict)

    def staleness(self, current_version: int) -> int:
        """Policy versions since this sample was drawn (0 = fresh)."""
        return current_version - self.version


class ReplayBuffer:
    """FIFO buffer of rollouts with staleness eviction and seeded sampling.

    Args:
        capacity: most rollouts kept; adding more evicts the oldest first.
        max_staleness: rollouts with ``current_version − version > max_staleness`` are evicted
            (by :meth:`evict_stale`, and before every :meth:`sample`).
        seed: seed of the buffer's own ``torch.Generator`` (no global RNG is touched).
    """

    def __init__(self, capacity: int, max_staleness: int, seed: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity (replay_capacity) must be an int >= 1, got {capacity!r}")
        if isinstance(max_staleness, bool) or not isinstance(max_staleness, int) or max_staleness < 0:
            raise ValueError(f"max_staleness must be an int >= 0, got {max_staleness!r}")
        self.capacity = capacity
        self.max_staleness = max_staleness
        self._rollouts: deque[Rollout] = deque()
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self._rollouts)

    def __iter__(self):
        return iter(self._rollouts)

    def add(self, rollouts: Iterable[Rollout]) -> None:
        """Append rollouts (oldest first), then evict the oldest beyond ``capacity``."""
        for rollout in rollouts:
            if not isinstance(rollout, Rollout):
                raise TypeError(f"ReplayBuffer.add expects Rollout objects, got {type(rollout).__name__}")
            self._rollouts.append(rollout)
        while len(self._rollouts) > self.capacity:
            self._rollouts.popleft()

    def evict_stale(self, current_version: int) -> int:
        """Drop rollouts with ``current_version − version > max_staleness``; returns how many."""
        before = len(self._rollouts)
        self._rollouts = deque(r for r in self._rollouts if r.staleness(current_version) <= self.max_staleness)
        return before - len(self._rollouts)

    def sample(self, n: int, current_version: int) -> list[Rollout]:
        """``n`` distinct rollouts, uniformly at random (all of them, shuffled, if fewer),
        after evicting the stale ones. Samples stay in the buffer."""
        if n < 0:
            raise ValueError(f"cannot sample a negative number of rollouts ({n})")
        self.evict_stale(current_version)
        if n == 0 or not self._rollouts:
            return []
        order = torch.randperm(len(self._rollouts), generator=self._generator)[:n].tolist()
        return [self._rollouts[i] for i in order]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume identically: rollouts (as dicts) and the RNG state.
        Plain Python values and tensors only (loads with ``weights_only=True``)."""
        return {"capacity": self.capacity, "max_staleness": self.max_staleness,
                "rollouts": [asdict(r) for r in self._rollouts],
                "generator_state": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore rollouts and RNG state. Capacity and max_staleness stay those of the
        constructor (the current config); extra rollouts beyond capacity are evicted."""
        for key in ("rollouts", "generator_state"):
            if key not in state:
                raise ValueError(f"ReplayBuffer state is missing the field {key!r}")
        self._rollouts = deque()
        # `prompt_index` (never set, removed) may still be in older checkpoints' rollouts
        self.add(Rollout(**{k: v for k, v in fields.items() if k != "prompt_index"}) for fields in state["rollouts"])
        self._generator.set_state(state["generator_state"])


def replay_count(num_fresh: int, replay_ratio: float) -> int:
    """How many replayed samples go with ``num_fresh`` fresh ones: round(n·r/(1 − r))."""
    if not 0.0 <= replay_ratio < 1.0:
        raise ValueError(f"replay_ratio must be in [0, 1), got {replay_ratio}")
    return math.floor(num_fresh * replay_ratio / (1.0 - replay_ratio) + 0.5 + 1e-9)  # round half up
