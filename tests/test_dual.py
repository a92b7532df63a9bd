"""Tests of the dual controller (λ update)."""

import math

import pytest
import torch

from r2vpo_ascend.algos import DualController, NonFiniteError
from r2vpo_ascend.algos.dual import MULTIPLICATIVE_FLOOR


def test_additive_raises_when_violated_and_lowers_with_slack():
    dual = DualController(init_lambda=1.0, target=0.1, lr=2.0)
    assert dual.update(0.3) == pytest.approx(1.0 + 2.0 * 0.2)
    assert dual.update(0.05) == pytest.approx(1.4 - 2.0 * 0.05)
    assert dual.lam == pytest.approx(1.3)


def test_additive_respects_bounds():
    dual = DualController(init_lambda=0.5, target=0.1, lr=10.0, lambda_max=3.0, lambda_min=0.2)
    assert dual.update(0.0) == 0.2          # 0.5 − 1.0 → clipped at λ_min
    assert dual.update(100.0) == 3.0        # → clipped at λ_max
    for _ in range(5):
        dual.update(0.0)
    assert dual.lam == 0.2


def test_max_step_bounds_one_outlier_update_both_ways():
    # The observed case: one token with ρ ≈ 55 made V̂ = 18 for one step (δ = 0.001, η_λ = 50).
    spiky = DualController(init_lambda=0.3, target=0.001, lr=50.0)
    bounded = DualController(init_lambda=0.3, target=0.001, lr=50.0, max_step=1.0)
    assert spiky.update(18.0) == 100.0                      # unbounded: straight to lambda_max
    assert bounded.update(18.0) == pytest.approx(1.3)       # +1 at most
    for _ in range(20):                                     # back to a V̂ below δ
        spiky.update(0.0005)
        bounded.update(0.0005)
    assert spiky.lam == pytest.approx(100.0 - 20 * 50.0 * 0.0005)   # 99.5: still near the cap
    assert bounded.lam == pytest.approx(1.3 - 20 * 50.0 * 0.0005)   # 0.8: small steps are untouched
    down = DualController(init_lambda=5.0, target=1.0, lr=10.0, max_step=0.5)
    assert down.update(0.0) == pytest.approx(4.5)           # decreases are bounded too


def test_max_step_bounds_the_multiplicative_exponent():
    dual = DualController(init_lambda=2.0, target=0.01, lr=0.5, mode="multiplicative", max_step=0.1)
    assert dual.update(10.0) == pytest.approx(2.0 * math.exp(0.1))
    assert dual.update(0.0) == pytest.approx(2.0 * math.exp(0.1) * math.exp(-0.1))
    # After a resume (a fresh controller with the same max_step, loaded from the state), an
    # outlier V̂ (unbounded: exponent 5e7, straight to lambda_max) is still one exp(0.1) step.
    restored = DualController(init_lambda=1.0, target=0.01, lr=0.5, mode="multiplicative", max_step=0.1)
    restored.load_state_dict(dual.state_dict())
    assert restored.lam == dual.lam
    assert restored.update(1e6) == pytest.approx(dual.lam * math.exp(0.1))


def test_multiplicative_update_and_growth_from_zero():
    dual = DualController(init_lambda=2.0, target=0.1, lr=0.5, mode="multiplicative")
    assert dual.update(0.2) == pytest.approx(2.0 * math.exp(0.5 * 0.1 / 0.1))
    assert dual.update(0.0) == pytest.approx(2.0 * math.exp(0.5) * math.exp(-0.5))
    from_zero = DualController(init_lambda=0.0, target=0.1, lr=1.0, mode="multiplicative", lambda_max=10.0)
    assert from_zero.update(0.3) == pytest.approx(MULTIPLICATIVE_FLOOR)
    previous = from_zero.lam
    for _ in range(20):
        assert from_zero.update(0.3) > previous or from_zero.lam == 10.0
        previous = from_zero.lam
    assert from_zero.lam == 10.0            # grew to λ_max, never above
    assert from_zero.update(1e9) == 10.0    # huge exponent: no overflow


def test_multiplicative_never_below_lambda_min():
    dual = DualController(init_lambda=1.0, target=0.1, lr=5.0, mode="multiplicative", lambda_min=0.5)
    for _ in range(10):
        dual.update(0.0)
    assert dual.lam == 0.5


def test_none_keeps_lambda_fixed():
    dual = DualController(init_lambda=0.7, target=0.1, lr=1.0, mode="none")
    assert dual.update(5.0) == 0.7 and dual.update(0.0) == 0.7


@pytest.mark.parametrize("mode", ["additive", "multiplicative", "none"])
def test_non_finite_ratio_var_raises(mode):
    dual = DualController(init_lambda=1.0, target=0.1, lr=1.0, mode=mode)
    for bad in (float("nan"), float("inf"), torch.tensor(float("nan"))):
        with pytest.raises(NonFiniteError, match="ratio_var"):
            dual.update(bad)
    assert dual.lam == 1.0


def test_accepts_tensor_ratio_var():
    dual = DualController(init_lambda=1.0, target=0.1, lr=1.0)
    assert dual.update(torch.tensor(0.2, dtype=torch.float64)) == pytest.approx(1.1)


def test_state_dict_round_trip():
    dual = DualController(init_lambda=1.0, target=0.1, lr=0.5)
    for value in (0.3, 0.2, 0.05):
        dual.update(value)
    state = dual.state_dict()
    restored = DualController(init_lambda=1.0, target=0.1, lr=0.5)
    restored.load_state_dict(state)
    assert restored.lam == dual.lam
    assert restored.update(0.4) == dual.update(0.4)
    smaller_max = DualController(init_lambda=0.0, target=0.1, lr=0.5, lambda_max=0.5)
    smaller_max.load_state_dict(state)
    assert smaller_max.lam == 0.5  # clipped into the current bounds
    with pytest.raises(ValueError, match="lam"):
        restored.load_state_dict({})


@pytest.mark.parametrize("kwargs, field", [
    (dict(mode="adaptive"), "mode"),
    (dict(target=0.0), "target"),
    (dict(target=float("nan")), "target"),
    (dict(lr=-1.0), "lr"),
    (dict(lambda_min=-0.1), "lambda_min"),
    (dict(lambda_max=0.5, lambda_min=1.0, init_lambda=0.7), "lambda_max"),
    (dict(init_lambda=200.0), "init_lambda"),
    (dict(lambda_max=float("inf")), "lambda_max"),
    (dict(max_step=0.0), "max_step"),
    (dict(max_step=float("inf")), "max_step"),
])
def test_bad_arguments_raise_naming_the_field(kwargs, field):
    args = dict(init_lambda=1.0, target=0.1, lr=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        DualController(**args)


def test_old_checkpoints_with_update_counts_still_load():
    """Checkpoints written before num_updates/last_ratio_var were dropped hold them: ignored."""
    old_state = {"lam": 0.7, "num_updates": 12, "last_ratio_var": 0.04, "target": 0.1, "lr": 0.5,
                 "mode": "additive", "max_step": None, "lambda_min": 0.0, "lambda_max": 100.0}
    dual = DualController(init_lambda=1.0, target=0.1, lr=0.5)
    dual.load_state_dict(old_state)
    assert dual.lam == 0.7 and "num_updates" not in dual.state_dict()


def test_config_and_controller_share_one_validation():
    """R2VPOConfig validates the dual settings with the controller's own check (ConfigError)."""
    from r2vpo_ascend.algos.errors import ConfigError
    from r2vpo_ascend.trainer.config import R2VPOConfig
    with pytest.raises(ConfigError, match="init_lambda"):
        R2VPOConfig(init_lambda=5.0, lambda_max=2.0)
    with pytest.raises(ConfigError, match="dual_lr"):
        DualController(init_lambda=1.0, target=0.1, lr=-1.0)
