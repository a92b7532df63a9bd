"""Tests of the loss library around R²VPO: the clipping baselines, masking and non-finite
inputs, aggregation and metric values by hand, the registry and its arguments, KL and numerics.

The R²VPO gradient and fixed point: test_losses.py.
"""

import math

import pytest
import torch

from r2vpo_ascend.algos import (POLICY_LOSSES, LossReduction, NonFiniteError, PolicyLossConfig, PolicyLossOutput,
                                RatioStats, aggregate, check_finite, clipped_surrogate_loss, compute_policy_loss,
                                kl_penalty, policy_ratio, r2vpo_loss, register_policy_loss)
from r2vpo_ascend.algos.errors import ConfigError
from _loss_helpers import F64, grad_of, make_batch, split

# ----------------------------------------------------------------------------------------
# Clipping baselines
# ----------------------------------------------------------------------------------------
def clip_case():
    # token:            a      b      c      d      e
    rho = torch.tensor([[1.5, 0.5, 1.25, 1.0, 0.7]], dtype=F64)
    adv = torch.tensor([[1.0, -1.0, 1.0, 1.0, -2.0]], dtype=F64)
    old = torch.full_like(rho, -1.0)
    log_probs = (old + rho.log()).requires_grad_()
    return log_probs, old, adv, torch.ones_like(rho, dtype=torch.bool)


def test_clip_losses_zero_gradient_outside_trust_region_but_r2vpo_does_not():
    log_probs, old, adv, mask = clip_case()
    grads, metrics = {}, {}
    for name in ("ppo_clip", "clip_higher", "r2vpo"):
        loss, metrics[name] = split(compute_policy_loss(name, log_probs, old, adv, mask, PolicyLossConfig(), lam=0.5))
        grads[name] = grad_of(loss, log_probs)[0]
    n = 5
    # ppo_clip: a (A>0, ρ>1.2), b (A<0, ρ<0.8), c (ρ = 1.25 > 1.2) and e (A<0, ρ = 0.7 < 0.8) stopped.
    assert grads["ppo_clip"][[0, 1, 2, 4]].abs().max().item() == 0.0
    assert grads["ppo_clip"][3].item() == pytest.approx(-1.0 / n)  # −ρA/n
    # clip_higher (ε_high = 0.28): c at 1.25 still gets its gradient, a at 1.5 does not.
    assert grads["clip_higher"][[0, 1, 4]].abs().max().item() == 0.0
    assert grads["clip_higher"][2].item() == pytest.approx(-1.25 / n)
    assert grads["r2vpo"].abs().min().item() > 0.0
    assert metrics["ppo_clip"]["clip/frac"] == pytest.approx(4 / 5)
    assert metrics["clip_higher"]["clip/frac"] == pytest.approx(3 / 5)
    assert metrics["r2vpo"]["clip/frac"] == 0.0
    # Eureka diagnostics: A>0 tokens a, c, d; above 1.2: a, c.
    for name in metrics:
        assert metrics[name]["ratio/pos_adv_above_clip_frac"] == pytest.approx(2 / 3)
    assert metrics["ppo_clip"]["ratio/pos_adv_above_clip_eff_adv_mean"] == 0.0
    # ... and how many of them lost their gradient: a and c (ppo_clip), a (clip_higher), none (r2vpo).
    assert [metrics[name]["ratio/pos_adv_above_clip_tokens"] for name in metrics] == [2.0, 2.0, 2.0]
    assert [metrics[name]["ratio/pos_adv_above_clip_zeroed_tokens"] for name in metrics] == [2.0, 1.0, 0.0]
    assert metrics["clip_higher"]["ratio/pos_adv_above_clip_eff_adv_mean"] == pytest.approx(0.5)  # (0 + 1)/2
    c = metrics["r2vpo"]["r2vpo/ratio_mean"]
    expected_eff = ((1 - (1.5 - c)) + (1 - (1.25 - c))) / 2  # A − 2λ(ρ − c), λ = 0.5
    assert metrics["r2vpo"]["ratio/pos_adv_above_clip_eff_adv_mean"] == pytest.approx(expected_eff)


def test_clip_eps_from_config_wins_and_defaults_are_explicit():
    log_probs, old, adv, mask = clip_case()
    wide = PolicyLossConfig(clip_eps_low=0.2, clip_eps_high=0.6)
    loss, metrics = split(compute_policy_loss("clip_higher", log_probs, old, adv, mask, wide))
    assert grad_of(loss, log_probs)[0, 0].item() != 0.0  # ρ = 1.5 inside 1 + 0.6
    _, metrics_default = split(compute_policy_loss("clip_higher", log_probs, old, adv, mask, PolicyLossConfig()))
    assert metrics_default["clip/frac"] == pytest.approx(3 / 5)  # 0.28 default


def test_dual_clip_stops_large_ratio_with_negative_advantage():
    old = torch.zeros(1, 2, dtype=F64)
    log_probs = torch.tensor([[math.log(4.0), 0.0]], dtype=F64, requires_grad=True)
    adv = torch.tensor([[-1.0, 1.0]], dtype=F64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, _ = split(compute_policy_loss("ppo_clip", log_probs, old, adv, mask, PolicyLossConfig()))
    assert grad_of(loss, log_probs)[0, 0].item() > 0
    loss, metrics = split(compute_policy_loss("ppo_clip", log_probs, old, adv, mask, PolicyLossConfig(dual_clip=3.0)))
    assert grad_of(loss, log_probs)[0, 0].item() == 0.0
    assert loss.item() == pytest.approx((3.0 - 1.0) / 2)  # (−c·A + −ρA)/n with ρ = 1 on token 1
    assert metrics["clip/frac"] == pytest.approx(0.5)


def test_gspo_uses_sequence_ratio_and_small_eps():
    old = torch.zeros(2, 3, dtype=F64)
    drift = torch.tensor([[0.02, 0.0, 0.01], [0.0001, -0.0001, 0.0]], dtype=F64)  # seq 0 ratio ≈ 1.01
    log_probs = (old + drift).requires_grad_()
    adv = torch.tensor([1.0, 1.0], dtype=F64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss, metrics = split(compute_policy_loss("gspo", log_probs, old, adv, mask, PolicyLossConfig()))
    grad = grad_of(loss, log_probs)
    assert grad[0].abs().max().item() == 0.0          # exp(0.01) > 1 + 4e-4: clipped
    assert grad[1].abs().min().item() > 0.0           # ≈ 1: inside
    assert metrics["clip/frac"] == pytest.approx(0.5)
    assert metrics["r2vpo/ratio_max"] == pytest.approx(math.exp(0.01))


# ----------------------------------------------------------------------------------------
# Masking
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_masked_tokens_contribute_nothing(name):
    log_probs, old, adv, mask = make_batch(seed=5, adv_per_token=True)
    config = PolicyLossConfig(loss_agg="seq-mean-token-mean")
    loss, metrics = split(compute_policy_loss(name, log_probs, old, adv, mask, config, lam=0.8))
    grad = grad_of(loss, log_probs)

    garbage = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], dtype=F64)
    fill = garbage[torch.arange(mask.numel()) % 4].view_as(mask)
    log_probs2 = torch.where(mask, log_probs.detach(), fill).requires_grad_()
    old2, adv2 = torch.where(mask, old, fill.flip(0)), torch.where(mask, adv, fill)
    loss2, metrics2 = split(compute_policy_loss(name, log_probs2, old2, adv2, mask, config, lam=0.8))
    grad2 = grad_of(loss2, log_probs2)
    assert loss2.item() == loss.item()
    assert torch.equal(grad2, grad) and grad2[~mask].abs().max().item() == 0.0
    assert metrics2 == metrics


@pytest.mark.parametrize("field", ["log_probs", "old_log_probs", "advantages"])
def test_non_finite_input_under_mask_raises(field):
    log_probs, old, adv, mask = make_batch(adv_per_token=True)
    inputs = {"log_probs": log_probs.detach().clone(), "old_log_probs": old.clone(), "advantages": adv.clone()}
    inputs[field][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=f"`{field}` has 1 non-finite"):
        r2vpo_loss(inputs["log_probs"], inputs["old_log_probs"], inputs["advantages"], mask, 0.1)
    with pytest.raises(NonFiniteError):
        compute_policy_loss("ppo_clip", inputs["log_probs"], inputs["old_log_probs"], inputs["advantages"], mask)


def test_extreme_log_ratio_is_clamped_not_overflowing():
    old = torch.zeros(1, 2)
    log_probs = torch.tensor([[100.0, -100.0]], requires_grad=True)  # float32
    loss, metrics = split(r2vpo_loss(log_probs, old, torch.tensor([1.0]), torch.ones(1, 2), 1.0))
    assert math.isfinite(loss.item()) and torch.isfinite(grad_of(loss, log_probs)).all()
    assert metrics["r2vpo/ratio_max"] == pytest.approx(math.exp(20.0), rel=1e-5)


def test_ratio_clamp_does_not_change_normal_ratios():
    log_probs, old, _, mask = make_batch(spread=2.0)
    rho = policy_ratio(log_probs.detach(), old, mask)
    torch.testing.assert_close(rho[mask], torch.exp(log_probs.detach() - old)[mask], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------
# Aggregation and metric values by hand
# ----------------------------------------------------------------------------------------
def hand_batch():
    # ρ = [[2, 1, ·], [1, ·, ·]], A = [[1, 2, ·], [3, ·, ·]] ('·' masked, garbage)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    old = torch.tensor([[-1.0, -1.0, 0.0], [-2.0, 0.0, 0.0]], dtype=F64)
    log_probs = old + torch.tensor([[math.log(2.0), 0.0, 5.0], [0.0, 9.0, 9.0]], dtype=F64)
    adv = torch.tensor([[1.0, 2.0, 99.0], [3.0, 99.0, 99.0]], dtype=F64)
    return log_probs, old, adv, mask


@pytest.mark.parametrize("loss_agg, max_len, expected_pg", [
    ("token-mean", None, (2 + 2 + 3) / 3),
    ("seq-mean-token-mean", None, ((2 + 2) / 2 + 3) / 2),
    ("seq-mean-token-sum", None, ((2 + 2) + 3) / 2),
    ("seq-mean-token-sum-norm", None, 7 / (2 * 3)),
    ("seq-mean-token-sum-norm", 7, 7 / (2 * 7)),
])
def test_loss_agg_values_by_hand(loss_agg, max_len, expected_pg):
    log_probs, old, adv, mask = hand_batch()
    for center, expected_var in (("mean", 2 / 9), ("one", 1 / 3)):  # ρ = 2, 1, 1: mean 4/3
        loss, metrics = split(r2vpo_loss(log_probs, old, adv, mask, 1.5, center=center, loss_agg=loss_agg,
                                   max_response_length=max_len))
        assert loss.item() == pytest.approx(-expected_pg + 1.5 * expected_var)
        assert metrics["r2vpo/ratio_var"] == pytest.approx(expected_var)
        assert metrics["r2vpo/pg_loss"] == pytest.approx(-expected_pg)
        assert metrics["loss/policy"] == pytest.approx(loss.item())
    assert metrics["r2vpo/ratio_mean"] == pytest.approx(4 / 3)
    assert metrics["r2vpo/ratio_max"] == pytest.approx(2.0)


def test_dr_grpo_needs_a_constant_length_under_global_denominators():
    """A micro-batch's padded width as L would make the accumulated loss depend on the split."""
    log_probs, old, adv, mask = hand_batch()
    with pytest.raises(ConfigError, match="max_response_length"):
        r2vpo_loss(log_probs, old, adv, mask, 1.0, loss_agg="seq-mean-token-sum-norm",
                   reduction=LossReduction(global_tokens=3, global_seqs=2))
    whole = r2vpo_loss(log_probs, old, adv, mask, 0.0, loss_agg="seq-mean-token-sum-norm", max_response_length=7)
    reduction = LossReduction(global_tokens=3, global_seqs=2)
    # Two micro-batches, the second one narrower (its padded width is 1, not 3).
    parts = [r2vpo_loss(log_probs[rows, :width], old[rows, :width], adv[rows, :width], mask[rows, :width], 0.0,
                        loss_agg="seq-mean-token-sum-norm", max_response_length=7, reduction=reduction)
             for rows, width in ((slice(0, 1), 3), (slice(1, 2), 1))]
    assert sum(p.loss.item() for p in parts) == pytest.approx(whole.loss.item(), rel=1e-12)


def test_aggregate_rejects_unknown_mode_and_bad_shapes():
    values, mask = torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="loss_agg must be one of"):
        aggregate(values, mask, "sum")
    with pytest.raises(ValueError, match="differ in shape"):
        aggregate(values, mask[:, :2], "token-mean")
    assert aggregate(values, torch.zeros(2, 3, dtype=torch.bool), "seq-mean-token-mean").item() == 0.0


def test_eff_adv_flip_frac():
    old = torch.zeros(1, 3, dtype=F64)
    log_probs = torch.log(torch.tensor([[1.5, 1.0, 1.5]], dtype=F64))
    adv = torch.tensor([[1.0, 1.0, -1.0]], dtype=F64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    _, small = split(r2vpo_loss(log_probs, old, adv, mask, 0.5, center="one"))
    assert small["r2vpo/eff_adv_flip_frac"] == 0.0
    assert small["ratio/pos_adv_above_clip_eff_adv_mean"] == pytest.approx(1 - 2 * 0.5 * 0.5)
    _, large = split(r2vpo_loss(log_probs, old, adv, mask, 2.0, center="one"))
    assert large["r2vpo/eff_adv_flip_frac"] == pytest.approx(1 / 3)  # token 0: 1 − 4·0.5 < 0


# ----------------------------------------------------------------------------------------
# Registry, config, arguments
# ----------------------------------------------------------------------------------------
def test_registry_contents_and_unknown_name():
    assert {"r2vpo", "ppo_clip", "clip_higher", "gspo"} <= set(POLICY_LOSSES)
    log_probs, old, adv, mask = make_batch()
    with pytest.raises(ValueError, match=r"unknown policy loss 'ppo'.*clip_higher.*r2vpo"):
        compute_policy_loss("ppo", log_probs, old, adv, mask)
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("r2vpo")(lambda *a, **k: None)


def test_register_custom_loss():
    @register_policy_loss("test_constant")
    def constant_loss(log_probs, old_log_probs, advantages, response_mask, config, *, lam=0.0, reduction=None):
        return PolicyLossOutput(log_probs.sum() * 0 + 42.0, {"loss/policy": 42.0}, RatioStats(), log_probs.detach())
    try:
        log_probs, old, adv, mask = make_batch()
        assert compute_policy_loss("test_constant", log_probs, old, adv, mask).loss.item() == 42.0
    finally:
        del POLICY_LOSSES["test_constant"]


def test_every_loss_reports_the_common_metrics():
    log_probs, old, adv, mask = make_batch()
    keys = {}
    for name in POLICY_LOSSES:
        out = compute_policy_loss(name, log_probs, old, adv, mask, lam=0.2)
        assert isinstance(out, PolicyLossOutput) and isinstance(out.stats, RatioStats)
        assert out.ratio.shape == log_probs.shape and not out.ratio.requires_grad
        assert out.stats.ratio_var() == out.metrics()["r2vpo/ratio_var"]
        assert all(isinstance(v, float) for v in out.metrics().values())
        keys[name] = set(out.metrics())
    common = {"loss/policy", "r2vpo/ratio_var", "r2vpo/ratio_mean", "r2vpo/ratio_max", "r2vpo/eff_adv_flip_frac",
              "ratio/pos_adv_above_clip_frac", "ratio/pos_adv_above_clip_eff_adv_mean",
              "clip/frac", "ratio/pos_adv_above_clip_tokens", "ratio/pos_adv_above_clip_zeroed_tokens"}
    for name, names in keys.items():
        assert common <= names, name
    assert keys["ppo_clip"] == keys["clip_higher"] == keys["gspo"] == common


def test_registry_equals_direct_calls_and_takes_only_a_policy_loss_config():
    log_probs, old, adv, mask = make_batch(seed=9)
    config = PolicyLossConfig(ratio_level="sequence", center="one", loss_agg="seq-mean-token-mean")
    via_registry = compute_policy_loss("r2vpo", log_probs, old, adv, mask, config, lam=0.4)
    direct = r2vpo_loss(log_probs, old, adv, mask, 0.4, ratio_level="sequence", center="one",
                        loss_agg="seq-mean-token-mean")
    assert via_registry.loss.item() == direct.loss.item() and via_registry.metrics() == direct.metrics()
    clipped = compute_policy_loss("clip_higher", log_probs, old, adv, mask, PolicyLossConfig(dual_clip=2.0))
    by_hand = clipped_surrogate_loss(log_probs, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=2.0)
    assert clipped.loss.item() == by_hand.loss.item() and clipped.metrics() == by_hand.metrics()
    bare = compute_policy_loss("r2vpo", log_probs, old, adv, mask, lam=0.4)  # config=None: the defaults
    assert bare.loss.item() == r2vpo_loss(log_probs, old, adv, mask, 0.4).loss.item()
    with pytest.raises(TypeError, match="PolicyLossConfig"):  # no silent defaults for missing attributes
        compute_policy_loss("r2vpo", log_probs, old, adv, mask, object(), lam=0.4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ratio_level="word"), "ratio_level"), (dict(center="median"), "center"),
    (dict(loss_agg="mean"), "loss_agg"), (dict(lam=-1.0), "lam"), (dict(lam=float("nan")), "lam"),
])
def test_bad_arguments_raise(kwargs, match):
    log_probs, old, adv, mask = make_batch()
    lam = kwargs.pop("lam", 0.1)
    with pytest.raises(ValueError, match=match):
        r2vpo_loss(log_probs, old, adv, mask, lam, **kwargs)


def test_bad_shapes_and_config_raise():
    log_probs, old, adv, mask = make_batch(batch=3, seq=4)
    with pytest.raises(ValueError, match="old_log_probs"):
        r2vpo_loss(log_probs, old[:, :3], adv, mask, 0.1)
    with pytest.raises(ValueError, match="advantages"):
        r2vpo_loss(log_probs, old, adv[:2], mask, 0.1)
    with pytest.raises(ValueError, match="log_probs must be"):
        r2vpo_loss(log_probs[0], old[0], adv, mask[0], 0.1)
    for bad in (dict(clip_eps_low=1.5), dict(clip_eps_high=-0.1), dict(dual_clip=0.5), dict(max_response_length=0),
                dict(max_response_length=True), dict(center="x"), dict(ratio_level="word"), dict(loss_agg="sum")):
        with pytest.raises(ConfigError, match=f"`{next(iter(bad))}`"):
            PolicyLossConfig(**bad)
    with pytest.raises(ConfigError, match="clip_eps_low"):  # the public baseline validates through the config
        clipped_surrogate_loss(log_probs, old, adv, mask, clip_eps_low=1.0, clip_eps_high=0.2)


# ----------------------------------------------------------------------------------------
# KL and numerics
# ----------------------------------------------------------------------------------------
def test_kl_estimators():
    log_probs = torch.tensor([[-1.0, -2.0, -0.5]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0, -3.0]], dtype=F64)
    d = ref - log_probs.detach()
    torch.testing.assert_close(kl_penalty(log_probs, ref, "k1").detach(), -d)
    torch.testing.assert_close(kl_penalty(log_probs, ref, "k2").detach(), 0.5 * d ** 2)
    k3 = kl_penalty(log_probs, ref, "k3")
    torch.testing.assert_close(k3.detach(), torch.exp(d) - d - 1)
    assert k3[0, 0].item() == 0.0 and (k3 >= 0).all()
    assert torch.isfinite(grad_of(k3.sum(), log_probs)).all()
    extreme = kl_penalty(torch.tensor([[-500.0, 0.0]]), torch.tensor([[0.0, -500.0]]))
    assert torch.isfinite(extreme).all()
    with pytest.raises(ValueError, match="kl kind"):
        kl_penalty(log_probs, ref, "k4")
    with pytest.raises(ValueError, match="differ in shape"):
        kl_penalty(log_probs, ref[:, :2])


def test_check_finite_message():
    tensor = torch.tensor([[1.0, float("nan"), float("inf")], [float("nan"), 0.0, 0.0]])
    with pytest.raises(NonFiniteError, match=r"`x` has 3 non-finite entries \(2 NaN, 1 inf\) out of 6"):
        check_finite("x", tensor)
    mask = torch.tensor([[True, False, False], [False, True, True]])
    check_finite("x", tensor, mask)  # all bad entries are masked out
    assert issubclass(NonFiniteError, ValueError)


def test_low_precision_inputs_compute_in_float32():
    log_probs, old, adv, mask = make_batch(seed=2)
    loss = r2vpo_loss(log_probs.detach().bfloat16().requires_grad_(), old.bfloat16(), adv.bfloat16(), mask, 0.5).loss
    assert loss.dtype == torch.float32
    reference, _ = split(r2vpo_loss(log_probs.detach().bfloat16().double(), old.bfloat16().double(),
                              adv.bfloat16().double(), mask, 0.5))
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
