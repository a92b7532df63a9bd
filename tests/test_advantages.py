"""Tests of the group-relative advantage estimators."""

import math

import pytest
import torch

from r2vpo_ascend.algos import ADVANTAGE_ESTIMATORS, NonFiniteError, compute_advantages, register_advantage


def test_registry_has_the_three_estimators():
    assert {"grpo", "dr_grpo", "rloo"} <= set(ADVANTAGE_ESTIMATORS)


def test_grpo_values_population_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0])
    adv = compute_advantages("grpo", rewards, 3, eps=0.0)
    # group 1 [1, 0, 0]: mean 1/3, population std √(2/9); group 2 [1, 2, 0]: mean 1, std √(2/3)
    std1, std2 = math.sqrt(2 / 9), math.sqrt(2 / 3)
    expected = torch.tensor([(2 / 3) / std1, -(1 / 3) / std1, -(1 / 3) / std1, 0.0, 1.0 / std2, -1.0 / std2])
    torch.testing.assert_close(adv, expected)
    assert adv.dtype == torch.float32


def test_dr_grpo_values():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0], dtype=torch.float64)
    adv = compute_advantages("dr_grpo", rewards, 2)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 1.0, -1.0], dtype=torch.float64))
    assert adv.dtype == torch.float64


def test_rloo_values_and_group_of_one():
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0])
    adv = compute_advantages("rloo", rewards, 4)
    # r_i − mean of the other three
    expected = torch.tensor([1 - 2 / 3, 0 - 1.0, 0 - 1.0, 2 - 1 / 3])
    torch.testing.assert_close(adv, expected)
    assert torch.equal(compute_advantages("rloo", rewards, 1), torch.zeros(4))
    assert torch.equal(compute_advantages("grpo", rewards, 1), torch.zeros(4))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_all_equal_groups_give_exactly_zero(name):
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 1.0, 0.0, 0.2])
    adv = compute_advantages(name, rewards, 3, eps=0.0)  # eps = 0: 0/0 would be NaN without the guard
    assert torch.equal(adv[:6], torch.zeros(6))
    assert torch.isfinite(adv).all() and adv[6:].abs().min() > 0


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_no_nan_on_random_and_integer_rewards(name):
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (64,), generator=g)
    adv = compute_advantages(name, rewards, 8)
    assert adv.dtype == torch.float32 and torch.isfinite(adv).all()
    torch.testing.assert_close(adv.view(8, 8).sum(-1), torch.zeros(8), atol=1e-5, rtol=0)


def test_bad_inputs_raise():
    rewards = torch.ones(6)
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        compute_advantages("grpo", rewards, 4)
    with pytest.raises(ValueError, match="group_size"):
        compute_advantages("grpo", rewards, 0)
    with pytest.raises(ValueError, match="1-D"):
        compute_advantages("grpo", rewards.view(2, 3), 3)
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'ppo'.*dr_grpo"):
        compute_advantages("ppo", rewards, 3)
    with pytest.raises(NonFiniteError, match="rewards"):
        compute_advantages("grpo", torch.tensor([1.0, float("nan")]), 2)


def test_register_custom_estimator():
    @register_advantage("test_raw")
    def raw(grouped_rewards, *, eps=1e-6):
        return grouped_rewards.clone()
    try:
        rewards = torch.tensor([1.0, 2.0])
        torch.testing.assert_close(compute_advantages("test_raw", rewards, 2), rewards)
        with pytest.raises(ValueError, match="already registered"):
            register_advantage("test_raw")(raw)
    finally:
        del ADVANTAGE_ESTIMATORS["test_raw"]
