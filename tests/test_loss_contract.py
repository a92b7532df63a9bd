"""Tests of the loss contract a TRL or verl user builds on: one collective for sums and maxima
(LossReduction), the RatioStats accumulator across micro-batches and ranks, the effective
advantage as the gradient weight, the README snippet, and PolicyLossConfig built from the run
config. The rest of the loss library: test_loss_library.py."""

import pytest
import torch

from r2vpo_ascend.algos import (POLICY_LOSSES, LossReduction, PolicyLossConfig, RatioStats, compute_policy_loss,
                                effective_advantage, policy_ratio, r2vpo_loss, ratio_statistics)
from r2vpo_ascend.algos.errors import ConfigError
from _loss_helpers import F64, grad_of, make_batch, split


def test_single_rank_all_reduce_equals_no_reduction():
    log_probs, old, adv, mask = make_batch(seed=8)
    identity = LossReduction(all_reduce=lambda t: t.clone())
    for name in POLICY_LOSSES:
        plain, plain_metrics = split(compute_policy_loss(name, log_probs, old, adv, mask, lam=0.5))
        reduced, reduced_metrics = split(compute_policy_loss(name, log_probs, old, adv, mask, lam=0.5,
                                                       reduction=identity))
        torch.testing.assert_close(reduced, plain, rtol=1e-12, atol=0)
        for key, value in plain_metrics.items():
            assert reduced_metrics[key] == pytest.approx(value, rel=1e-12, abs=1e-15), (name, key)


def test_sums_and_maxima_cross_ranks_in_one_collective():
    calls = []

    def two_ranks(values):  # the other rank holds the same sums and, in its own slot (the last), a max of 7
        calls.append(values.clone())
        other = values.clone()
        other[-2:] = torch.tensor([0.0, 7.0], dtype=values.dtype)
        return values + other
    reduction = LossReduction(all_reduce=two_ranks, world_size=2, rank=0)
    sums, maxima = reduction.sum_and_max(torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([3.0], dtype=F64))
    assert sums.tolist() == [2.0, 4.0] and maxima.tolist() == [7.0] and len(calls) == 1
    with pytest.raises(ConfigError, match="all_reduce"):
        LossReduction(world_size=2, rank=0)
    with pytest.raises(ConfigError, match="rank"):
        LossReduction(all_reduce=two_ranks, world_size=2, rank=2)
    assert LossReduction.from_process_group() == LossReduction()  # no process group: one process


def test_ratio_stats_accumulate_micro_batches_and_ranks():
    log_probs, old, adv, mask = make_batch(seed=12, spread=0.4)
    rho = policy_ratio(log_probs.detach(), old, mask)
    stats = ratio_statistics(rho, mask)
    accumulated = RatioStats().add(rho[:2], mask[:2]).add(rho[2:], mask[2:])  # two micro-batches
    assert accumulated.num_tokens == stats.num_tokens and accumulated.ratio_max == stats.ratio_max
    assert accumulated.ratio_var() == pytest.approx(stats.ratio_var(), rel=1e-12)
    assert RatioStats().merge(stats) == stats
    values = rho[mask]
    assert stats.mean() == pytest.approx(values.mean().item(), rel=1e-12)
    assert stats.ratio_var() == pytest.approx(values.var(unbiased=False).item(), rel=1e-10)
    assert stats.ratio_var("mean") == stats.ratio_var()
    assert stats.ratio_var("one") == pytest.approx(((values - 1) ** 2).mean().item(), rel=1e-10)
    assert stats.ratio_var(1.0) == stats.ratio_var("one")
    assert stats.ess == pytest.approx((values.sum() ** 2 / (values ** 2).sum()).item(), rel=1e-12)
    assert stats.all_reduce(LossReduction()) == stats  # one process
    doubled = stats.all_reduce(LossReduction(all_reduce=lambda t: 2 * t))  # every sum doubled, as two like ranks
    assert doubled.num_tokens == 2 * stats.num_tokens and doubled.mean() == pytest.approx(stats.mean())
    with pytest.raises(ValueError, match="center"):
        stats.ratio_var("median")


def test_effective_advantage_is_the_gradient_weight_of_r2vpo():
    """A − 2λ(ρ − c): token j's gradient of the token-mean loss is −(ρ_j/n)·(A_j − 2λ(ρ_j − c))."""
    log_probs, old, adv, mask = make_batch(seed=13, spread=0.6, adv_per_token=True)
    out = r2vpo_loss(log_probs, old, adv, mask, 1.7, center="one")
    grad = grad_of(out.loss, log_probs)
    expected = -out.ratio * effective_advantage(adv, out.ratio, 1.0, 1.7) / mask.sum()
    torch.testing.assert_close(grad[mask], expected[mask], rtol=1e-10, atol=1e-12)
    assert out.metrics()["r2vpo/eff_adv_flip_frac"] > 0  # λ is large enough to flip some tokens


def test_readme_loss_library_snippet_runs():
    """The README's "loss library on its own" example, run as written on made-up inputs."""
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The loss library on its own", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    log_probs, old, _, mask = make_batch(batch=8, seed=3)
    weight = torch.nn.Parameter(torch.zeros(()))
    namespace = {"rewards": torch.tensor([1.0, 0.0] * 4), "log_probs": log_probs + weight, "old_log_probs": old,
                 "response_mask": mask, "optimizer": torch.optim.SGD([weight], lr=0.1), "print": lambda *a: None}
    exec(snippet, namespace)
    assert namespace["dual"].lam != 1.0 and weight.grad is not None


def test_policy_loss_config_is_built_from_the_run_config(tmp_path):
    """One function builds the loss contract from R2VPOConfig; bad settings fail on loading."""
    from r2vpo_ascend.trainer.config import R2VPOConfig
    path = tmp_path / "run.yaml"
    path.write_text("loss: ppo_clip\nloss_agg: seq-mean-token-sum-norm\nmax_new_tokens: 12\ndual_clip: 3\n")
    config = R2VPOConfig.from_yaml(path).policy_loss_config()
    assert config == PolicyLossConfig(loss_agg="seq-mean-token-sum-norm", max_response_length=12, dual_clip=3.0)
    assert R2VPOConfig.from_yaml(path, ["max_response_length=20"]).policy_loss_config().max_response_length == 20
    for override, field in (("dual_clip=0.5", "dual_clip"), ("max_response_length=0", "max_response_length"),
                            ("clip_eps_low=1.0", "clip_eps_low")):
        with pytest.raises(ConfigError, match=f"`{field}`"):
            R2VPOConfig.from_yaml(path, [override])
