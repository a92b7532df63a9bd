"""Two CPU processes (gloo), each holding part of a batch: with
``LossReduction.from_process_group()`` c, V̂, the metrics (the largest ρ too: maxima travel in
the sums' collective) and λ after the dual step are identical on both ranks and equal to the
single-process values on the whole batch, and the per-rank gradients add up to the
single-process gradient."""

from dataclasses import asdict
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import _mp_helpers as helpers
from r2vpo_ascend.algos import DualController, LossReduction, PolicyLossConfig, compute_policy_loss

WORLD_SIZE = 2
LAM = 0.8
ROWS = (slice(0, 3), slice(3, 7))  # uneven split: ranks hold different token counts
CASES = [  # (loss, config, pass global denominators explicitly?)
    ("r2vpo", dict(ratio_level="token", center="mean", loss_agg="token-mean"), True),
    ("r2vpo", dict(ratio_level="token", center="mean", loss_agg="token-mean"), False),
    ("r2vpo", dict(ratio_level="sequence", center="mean", loss_agg="seq-mean-token-mean"), False),
    ("r2vpo", dict(ratio_level="token", center="one", loss_agg="seq-mean-token-sum-norm",
                   max_response_length=12), True),
    ("ppo_clip", dict(loss_agg="token-mean"), False),
]


def make_batch():
    g = torch.Generator().manual_seed(1234)
    old = -2.0 * torch.rand(7, 6, generator=g, dtype=torch.float64)
    log_probs = old + 0.4 * torch.randn(7, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(7, 6, generator=g) > 0.3
    mask[:, 0] = True
    mask[5] = False  # an empty response on rank 1
    advantages = torch.randn(7, generator=g, dtype=torch.float64)
    return log_probs, old, advantages, mask


def run_case(name, config_kwargs, log_probs, old, advantages, mask, reduction):
    leaf = log_probs.detach().clone().requires_grad_()
    out = compute_policy_loss(name, leaf, old, advantages, mask, PolicyLossConfig(**config_kwargs),
                              lam=LAM, reduction=reduction)
    out.loss.backward()
    dual = DualController(init_lambda=LAM, target=0.01, lr=0.5)
    dual.update(out.stats.ratio_var())
    return {"loss": out.loss.item(), "grad": leaf.grad, "lam": dual.lam, "stats": asdict(out.stats),
            "metrics": out.metrics()}


def _worker(rank, port, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE,
                            timeout=timedelta(seconds=30))
    try:
        log_probs, old, advantages, mask = make_batch()
        rows = ROWS[rank]
        results = []
        for name, config_kwargs, explicit in CASES:
            reduction = LossReduction.from_process_group(
                global_tokens=float(mask.sum()) if explicit else None,
                global_seqs=float(mask.any(-1).sum()) if explicit else None)
            assert reduction.world_size == WORLD_SIZE and reduction.rank == rank
            results.append(run_case(name, config_kwargs, log_probs[rows], old[rows], advantages[rows], mask[rows],
                                    reduction))
        torch.save(results, f"{out_path}.rank{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.multiproc
@pytest.mark.timeout(60)
def test_two_ranks_match_single_process(tmp_path):
    out_path = str(tmp_path / "results")
    mp.spawn(_worker, args=(helpers.free_port(), out_path), nprocs=WORLD_SIZE, join=True)
    per_rank = [torch.load(f"{out_path}.rank{rank}", weights_only=True) for rank in range(WORLD_SIZE)]

    log_probs, old, advantages, mask = make_batch()
    for case_index, (name, config_kwargs, _) in enumerate(CASES):
        single = run_case(name, config_kwargs, log_probs, old, advantages, mask, reduction=None)
        rank0, rank1 = per_rank[0][case_index], per_rank[1][case_index]
        # identical on both ranks (same all-reduced numbers)
        assert rank0["metrics"] == rank1["metrics"], name
        assert rank0["stats"] == rank1["stats"], name
        assert rank0["lam"] == rank1["lam"]
        # equal to the single-process values on the whole batch
        for key, value in single["metrics"].items():
            assert rank0["metrics"][key] == pytest.approx(value, rel=1e-10, abs=1e-13), (name, key)
        assert rank0["lam"] == pytest.approx(single["lam"], rel=1e-12)
        assert rank0["loss"] + rank1["loss"] == pytest.approx(single["loss"], rel=1e-10, abs=1e-13)
        assert rank0["stats"]["num_tokens"] == mask.sum().item()
        # per-rank gradients, put side by side, are the single-process gradient
        grad = torch.cat([rank0["grad"], rank1["grad"]])
        torch.testing.assert_close(grad, single["grad"], rtol=1e-10, atol=1e-14)
