"""Where each rank's samples sit in the global batch that one process would build.

With several processes every rank draws the same global batch of prompts and takes every
world_size-th one (round-robin), generating G responses for each. The update, the advantages
and the replay buffer must see the samples in the order one process would have them:

    fresh rollouts, prompt by prompt (prompt j came from rank j % world), then the replay sample
    (replayed sample k went to rank k % world).

`GlobalBatchLayout` does that arithmetic; the collectives (`sum_over_ranks`,
`all_gather_objects`) are passed in, so it is tested on the CPU for any number of ranks
without starting processes (tests/test_global_batch.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class GlobalBatchLayout:
    num_generations: int   # G: responses per prompt
    rank: int = 0
    world_size: int = 1

    def slots(self, num_local: int) -> list[int]:
        """Global batch index of each local fresh sample (prompts are dealt to ranks round-robin)."""
        G, world, rank = self.num_generations, self.world_size, self.rank
        return [(rank + (i // G) * world) * G + i % G for i in range(num_local)]

    def positions(self, num_fresh: int, num_replayed: int) -> list[int]:
        """Index of each local update sample (fresh, then this rank's replayed share) in the global
        batch: all fresh rollouts in global order, then the replay sample."""
        world, rank = self.world_size, self.rank
        return self.slots(num_fresh) + [num_fresh * world + rank + j * world for j in range(num_replayed)]

    def global_rewards(self, local_rewards: Sequence[float],
                       sum_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The global batch's rewards `[N_local * world]` (float32), every rank's in its slots:
        each rank scatters its own into zeros, `sum_over_ranks` adds them up (float64 on the way,
        so the sum of zeros and one value is exact)."""
        rewards = torch.zeros(len(local_rewards) * self.world_size, dtype=torch.float64)
        rewards[self.slots(len(local_rewards))] = torch.tensor(list(local_rewards), dtype=torch.float64)
        return sum_over_ranks(rewards).float()

    def in_global_order(self, per_rank: Sequence[Sequence[T]]) -> list[T]:
        """Every rank's fresh samples (`per_rank[r]`: rank r's, in its local order) in global order."""
        G, world = self.num_generations, self.world_size
        num_prompts = sum(len(f) for f in per_rank) // G
        return [s for j in range(num_prompts) for s in per_rank[j % world][(j // world) * G:(j // world + 1) * G]]

    def gather(self, fresh: list[T], all_gather_objects: Callable[[object], list]) -> list[T]:
        """Every rank's fresh samples in global order (a no-op in one process). Collective."""
        if self.world_size == 1:
            return fresh
        return self.in_global_order(all_gather_objects(fresh))
