"""R²VPO remedies (issue 11): Huber penalty, truncated importance weights, robust dual V̂,
normalised and PID dual updates, and the per-token gradient split, each against its closed form."""

import math

import pytest
import torch

from r2vpo_ascend.algos import DualController, PolicyLossConfig, compute_policy_loss
from r2vpo_ascend.algos.losses import r2vpo_loss
from r2vpo_ascend.algos.robust import dual_variance_sums, gradient_split, penalty, penalty_slope
from r2vpo_ascend.trainer.config import ConfigError, R2VPOConfig


def _batch(outlier: float = 3.0):
    torch.manual_seed(0)
    old = torch.randn(3, 5, dtype=torch.float64) * 0.3 - 1.0
    logp = old + torch.randn(3, 5, dtype=torch.float64) * 0.2
    logp[1, 2] = old[1, 2] + math.log(outlier)  # one token far from c
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 3:] = False
    adv = torch.tensor([1.0, -0.5, 0.7], dtype=torch.float64)
    return logp.requires_grad_(True), old, adv, mask


def _token_grad(**options):
    logp, old, adv, mask = _batch()
    out = r2vpo_loss(logp, old, adv, mask, 0.8, center="one", **options)
    loss, metrics = out.loss, out.metrics()
    loss.backward()
    rho = torch.exp(logp.detach() - old)
    return logp.grad, rho, adv.unsqueeze(-1).expand_as(rho), mask, loss, metrics


@pytest.mark.parametrize("kind", ["quadratic", "huber"])
def test_penalty_gradient_matches_closed_form(kind):
    grad, rho, adv, mask, _, _ = _token_grad(variance_penalty=kind, penalty_huber_kappa=0.5)
    n = mask.sum()
    expected = (rho / n) * (-adv + 0.8 * penalty_slope(rho - 1.0, kind, 0.5))
    torch.testing.assert_close(grad[mask], expected[mask])
    if kind == "huber":  # the outlier's pull is bounded: slope 2κ, not 2(ρ − 1) = 4
        assert penalty_slope(torch.tensor([2.0]), "huber", 0.5).item() == pytest.approx(1.0)


def test_huber_is_the_spec_penalty_near_the_centre_and_linear_beyond():
    dev = torch.tensor([-0.3, 0.0, 0.4, 2.0, -3.0])
    huber = penalty(dev, "huber", 0.5)
    torch.testing.assert_close(huber[:3], dev[:3] ** 2)
    torch.testing.assert_close(huber[3:], 2 * 0.5 * dev[3:].abs() - 0.25)


def test_ratio_grad_cap_truncates_the_gradient_weight_not_the_value():
    grad, rho, adv, mask, loss, metrics = _token_grad(ratio_grad_cap=1.5)
    _, _, _, _, loss_ref, metrics_ref = _token_grad()
    assert loss.item() == pytest.approx(loss_ref.item())          # values unchanged
    assert metrics["r2vpo/ratio_var"] == pytest.approx(metrics_ref["r2vpo/ratio_var"])
    n = mask.sum()
    weight = rho.clamp(max=1.5)
    expected = (weight / n) * (-adv + 0.8 * 2 * (rho - 1.0))
    torch.testing.assert_close(grad[mask], expected[mask])
    assert rho[1, 2] > 1.5  # the cap engaged on the outlier


def test_defaults_are_the_spec_loss_through_the_registry():
    logp, old, adv, mask = _batch()
    spec = r2vpo_loss(logp, old, adv, mask, 0.8).loss
    via_config = compute_policy_loss("r2vpo", logp, old, adv, mask, PolicyLossConfig(), lam=0.8).loss
    huber = compute_policy_loss("r2vpo", logp, old, adv, mask,
                                PolicyLossConfig(variance_penalty="huber", penalty_huber_kappa=0.5), lam=0.8).loss
    assert via_config.item() == spec.item()
    assert huber.item() < spec.item()  # the outlier is penalised linearly, i.e. less
    with pytest.raises(ConfigError, match="ratio_grad_cap"):
        PolicyLossConfig(ratio_grad_cap=0.5)


def test_gradient_split_matches_autograd_and_finds_the_outlier():
    grad, rho, adv, mask, _, _ = _token_grad()
    split = gradient_split(rho, adv, mask, lam=0.8, center=1.0)
    n = mask.sum().item()
    total = (grad[mask] * n).abs()  # |−a + v| per token
    assert split["tokens"] == n
    assert split["adv_abs"] == pytest.approx((adv * rho)[mask].abs().mean().item())
    assert split["var_abs"] == pytest.approx((0.8 * 2 * (rho - 1) * rho)[mask].abs().mean().item())
    # 1% of 13 tokens = 1 token: the outlier at ρ = 3
    outlier = (rho - 1).abs()[mask].argmax()
    assert split["top_share"] == pytest.approx((total[outlier] / total.sum()).item())
    assert split["top_var_share"] > 0.5
    assert gradient_split(rho, adv, torch.zeros_like(mask), lam=0.8, center=1.0)["var_share"] == 0.0


def test_robust_dual_variances_bound_one_outlier():
    ratio = torch.ones(1, 100, dtype=torch.float64)
    ratio[0, :50] = 1.1
    ratio[0, 0] = 55.0
    mask = torch.ones_like(ratio, dtype=torch.bool)
    spec = dual_variance_sums(ratio, mask, 1.0, "spec")
    wins = dual_variance_sums(ratio, mask, 1.0, "winsorized", clip=1.0)
    logr = dual_variance_sums(ratio, mask, 1.0, "log_ratio")
    assert spec[1] == wins[1] == 100
    assert spec[0].item() == pytest.approx(54 ** 2 + 49 * 0.01)
    assert wins[0].item() == pytest.approx(1.0 + 49 * 0.01)
    assert logr[0].item() == pytest.approx(math.log(55) ** 2 + 49 * math.log(1.1) ** 2)
    with pytest.raises(ValueError, match="dual_variance"):
        dual_variance_sums(ratio, mask, 1.0, "median")


def test_normalized_dual_step_is_the_same_relative_step_at_any_delta():
    small = DualController(1.0, target=0.001, lr=0.1, mode="normalized")
    large = DualController(1.0, target=0.1, lr=0.1, mode="normalized")
    small.update(0.003)
    large.update(0.3)  # both: V̂ = 3δ
    assert small.lam == pytest.approx(1.2) and large.lam == pytest.approx(1.2)
    additive = DualController(1.0, target=0.001, lr=0.1)
    additive.update(0.003)
    assert additive.lam == pytest.approx(1.0002)


def test_pid_dual_update_falls_back_when_the_violation_ends():
    pid = DualController(0.5, target=0.01, lr=0.05, mode="pid", kp=1.0, kd=0.5, lambda_max=100.0)
    assert pid.lam == 0.5
    pid.update(0.01)                       # on target: e = 0, λ = K_I·I = init
    assert pid.lam == pytest.approx(0.5)
    pid.update(0.21)                       # one outlier step: e = 20
    spike = pid.lam
    assert spike == pytest.approx(1.0 * 20 + 0.05 * (10 + 20) + 0.5 * 20)
    pid.update(0.01)                       # back on target: P and D vanish at once
    assert pid.lam == pytest.approx(0.05 * 30) and pid.lam < spike / 10
    state = pid.state_dict()
    restored = DualController(0.1, target=0.01, lr=0.05, mode="pid", kp=1.0, kd=0.5)
    restored.load_state_dict(state)
    assert restored.integral == pid.integral and restored.lam == pid.lam
    with pytest.raises(ConfigError, match="PID"):
        DualController(0.5, target=0.01, lr=0.05, mode="pid", kp=-1.0)


@pytest.mark.parametrize("bad", [dict(ratio_grad_cap=0.5), dict(penalty_huber_kappa=0.0),
                                 dict(dual_variance_clip=-1.0), dict(dual_kp=-0.1),
                                 dict(dual_update="pid", dual_lr=0.0), dict(variance_penalty="cubic"),
                                 dict(dual_variance="median"), dict(ppo_epochs=0)])
def test_config_rejects_bad_remedy_values(bad):
    with pytest.raises(ConfigError):
        R2VPOConfig(**bad)
