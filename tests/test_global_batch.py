"""`GlobalBatchLayout`: local samples ↔ positions in the global batch, for 1 to 4 ranks on the CPU
(the collectives are simulated: the arithmetic is what must match one process)."""

import pytest
import torch

from r2vpo_ascend.trainer.global_batch import GlobalBatchLayout

G = 3


def _shard(num_prompts: int, world: int):
    """What each rank generates: prompts dealt round-robin, G samples each, labelled (prompt, g)."""
    return [[(j, g) for j in range(num_prompts)[rank::world] for g in range(G)] for rank in range(world)]


def test_one_process_is_the_identity():
    layout = GlobalBatchLayout(G)
    assert layout.slots(6) == list(range(6))
    assert layout.positions(6, 2) == list(range(8))
    fresh = list("abcdef")
    assert layout.gather(fresh, all_gather_objects=pytest.fail) is fresh  # no collective in one process
    assert layout.global_rewards([0.0, 1.0, 0.5], sum_over_ranks=lambda t: t).tolist() == [0.0, 1.0, 0.5]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_slots_positions_and_gather_rebuild_the_one_process_batch(world):
    num_prompts = 2 * world
    one_process = [(j, g) for j in range(num_prompts) for g in range(G)]
    per_rank = _shard(num_prompts, world)
    replay = [("replayed", k) for k in range(2 * world + 1)]  # not a multiple of world: shares differ by one
    global_batch = one_process + replay
    for rank, local in enumerate(per_rank):
        layout = GlobalBatchLayout(G, rank, world)
        assert [one_process[s] for s in layout.slots(len(local))] == local
        share = replay[rank::world]
        assert [global_batch[p] for p in layout.positions(len(local), len(share))] == local + share
        assert layout.gather(local, all_gather_objects=lambda _: per_rank) == one_process
    assert GlobalBatchLayout(G, 0, world).in_global_order(per_rank) == one_process


@pytest.mark.parametrize("world", [2, 3])
def test_global_rewards_sum_every_ranks_share_into_its_slots(world):
    num_prompts = 2 * world
    reward_of = {(j, g): float(10 * j + g) for j in range(num_prompts) for g in range(G)}
    per_rank = _shard(num_prompts, world)
    # all_reduce_sum adds every rank's tensor: simulate it by summing what each rank contributes
    contributions = [GlobalBatchLayout(G, rank, world).global_rewards([reward_of[s] for s in local], lambda t: t)
                     for rank, local in enumerate(per_rank)]
    total = torch.stack(contributions).sum(0)
    expected = [reward_of[(j, g)] for j in range(num_prompts) for g in range(G)]
    assert total.dtype == torch.float32 and total.tolist() == expected
    for rank, contribution in enumerate(contributions):  # each rank fills only its own slots
        slots = set(GlobalBatchLayout(G, rank, world).slots(len(per_rank[rank])))
        assert all(contribution[i] == 0 for i in range(len(expected)) if i not in slots)
