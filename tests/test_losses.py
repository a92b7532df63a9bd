"""Tests of the R²VPO loss maths: gradients against the closed form (docs/algorithms.md) and an
independent loop-by-loop implementation (with c NOT detached) under autograd in float64, the
fixed point ρ = c + A/(2λ), and micro-batches with global denominators summing to the full batch.

The clipping baselines, masking, aggregation, the registry, KL and numerics: test_loss_library.py.
"""

import math

import pytest
import torch

from r2vpo_ascend.algos import (LOSS_AGG_MODES, LossReduction, PolicyLossConfig, RatioStats, compute_policy_loss,
                                policy_ratio, r2vpo_loss, ratio_statistics)
from _loss_helpers import F64, grad_of, make_batch, split


def naive_r2vpo_loss(log_probs, old, advantages, mask, lam, ratio_level, center, loss_agg, max_len=None):
    """Token-by-token reference. c is NOT detached here (true derivative of V̂)."""
    batch, seq = log_probs.shape
    tokens = {i: [t for t in range(seq) if mask[i, t]] for i in range(batch)}
    seqs = [i for i in range(batch) if tokens[i]]
    adv = (lambda i, t: advantages[i]) if advantages.dim() == 1 else (lambda i, t: advantages[i, t])
    rho = {}
    for i in seqs:
        for t in tokens[i]:
            if ratio_level == "token":
                rho[i, t] = torch.exp(log_probs[i, t] - old[i, t])
            else:
                rho[i, t] = torch.exp(sum(log_probs[i, u] - old[i, u] for u in tokens[i]) / len(tokens[i]))
    n = len(rho)
    c = sum(rho.values()) / n if center == "mean" else 1.0
    ratio_var = sum((r - c) ** 2 for r in rho.values()) / n
    seq_sum = {i: sum(rho[i, t] * adv(i, t) for t in tokens[i]) for i in seqs}
    if loss_agg == "token-mean":
        pg = sum(seq_sum.values()) / n
    elif loss_agg == "seq-mean-token-mean":
        pg = sum(seq_sum[i] / len(tokens[i]) for i in seqs) / len(seqs)
    elif loss_agg == "seq-mean-token-sum":
        pg = sum(seq_sum.values()) / len(seqs)
    else:
        pg = sum(seq_sum.values()) / (len(seqs) * (max_len or seq))
    return -pg + lam * ratio_var


# ----------------------------------------------------------------------------------------
# Gradient = closed form
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("center", ["mean", "one"])
@pytest.mark.parametrize("seed", [0, 1])
def test_token_gradient_matches_closed_form(center, seed):
    log_probs, old, adv, mask = make_batch(seed=seed, adv_per_token=bool(seed))
    lam = 0.7
    loss, metrics = split(r2vpo_loss(log_probs, old, adv, mask, lam, center=center))
    grad = grad_of(loss, log_probs)

    rho = torch.exp(log_probs.detach() - old)
    m = mask.to(F64)
    n = m.sum()
    c = (rho * m).sum() / n if center == "mean" else 1.0
    adv_bt = adv.unsqueeze(-1).expand_as(rho) if adv.dim() == 1 else adv
    # ∂ℒ/∂logp_j = (ρ_j/n)(A_j − 2λ(ρ_j − c)); the loss is −ℒ.
    expected = -(rho / n) * (adv_bt - 2 * lam * (rho - c)) * m
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    assert metrics["r2vpo/ratio_var"] == pytest.approx(((rho - c) ** 2 * m).sum().item() / n.item(), rel=1e-9)


@pytest.mark.parametrize("center", ["mean", "one"])
@pytest.mark.parametrize("adv_per_token", [False, True])
def test_sequence_gradient_matches_closed_form(center, adv_per_token):
    log_probs, old, adv, mask = make_batch(seed=3, adv_per_token=adv_per_token)
    lam = 1.3
    loss, _ = split(r2vpo_loss(log_probs, old, adv, mask, lam, ratio_level="sequence", center=center))
    grad = grad_of(loss, log_probs)

    m = mask.to(F64)
    lengths = m.sum(-1, keepdim=True)
    rho_seq = torch.exp(((log_probs.detach() - old) * m).sum(-1, keepdim=True) / lengths)  # [B, 1]
    n = m.sum()
    c = (rho_seq * lengths).sum() / n if center == "mean" else 1.0
    adv_bt = adv.unsqueeze(-1).expand_as(m) if adv.dim() == 1 else adv
    # ∂ℒ/∂logp_{i,t} = (m_it/T_i)·Σ_t' (m_it'/n)·ρ_i·(A_it' − 2λ(ρ_i − c))
    per_seq = ((m / n) * rho_seq * (adv_bt - 2 * lam * (rho_seq - c))).sum(-1, keepdim=True)
    expected = -(m / lengths) * per_seq
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss_agg", LOSS_AGG_MODES)
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("center", ["mean", "one"])
def test_loss_and_gradient_match_independent_reference(loss_agg, ratio_level, center):
    log_probs, old, adv, mask = make_batch(batch=4, seq=6, seed=7, adv_per_token=(ratio_level == "token"))
    mask[3] = False  # an empty response: must not count as a sequence
    loss, _ = split(r2vpo_loss(log_probs, old, adv, mask, 0.9, ratio_level=ratio_level, center=center,
                         loss_agg=loss_agg, max_response_length=10))
    ref_leaf = log_probs.detach().clone().requires_grad_()
    ref = naive_r2vpo_loss(ref_leaf, old, adv, mask, 0.9, ratio_level, center, loss_agg, max_len=10)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_of(loss, log_probs), grad_of(ref, ref_leaf), rtol=1e-9, atol=1e-12)


def test_gradient_matches_finite_differences():
    log_probs, old, adv, mask = make_batch(batch=3, seq=4, seed=11)
    loss_fn = lambda lp: r2vpo_loss(lp, old, adv, mask, 0.5, ratio_level="sequence").loss  # noqa: E731
    assert torch.autograd.gradcheck(loss_fn, (log_probs,), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------
# Fixed point ρ = c + A/(2λ)
# ----------------------------------------------------------------------------------------
def test_fixed_point_center_one():
    adv, lam = 0.6, 0.4
    rho_star = 1.0 + adv / (2 * lam)
    old = torch.zeros(1, 3, dtype=F64)
    mask = torch.tensor([[True, True, False]])
    advantages = torch.tensor([[adv, 0.0, 0.0]], dtype=F64)
    grads = []
    for rho in (rho_star * 0.9, rho_star, rho_star * 1.1):
        log_probs = torch.tensor([[math.log(rho), 0.05, 0.0]], dtype=F64, requires_grad=True)
        loss, _ = split(r2vpo_loss(log_probs, old, advantages, mask, lam, center="one"))
        grads.append(grad_of(loss, log_probs)[0, 0].item())
    assert grads[0] < 0 and grads[2] > 0  # below ρ*: keep pushing up; above: pull back
    assert abs(grads[1]) < 1e-14


def test_fixed_point_center_mean():
    # Token 0 has A > 0, token 1 has A = 0 and ρ = 1, so c = (ρ0 + 1)/2 and the fixed point
    # ρ0 − c = A/(2λ) is at ρ0 = 1 + A/λ.
    adv, lam = 0.5, 0.8
    rho_star = 1.0 + adv / lam
    old = torch.tensor([[-1.0, -2.0]], dtype=F64)
    log_probs = torch.tensor([[math.log(rho_star) - 1.0, -2.0]], dtype=F64, requires_grad=True)
    advantages = torch.tensor([[adv, 0.0]], dtype=F64)
    loss, metrics = split(r2vpo_loss(log_probs, old, advantages, torch.ones(1, 2, dtype=torch.bool), lam,
                                     center="mean"))
    assert abs(grad_of(loss, log_probs)[0, 0].item()) < 1e-14
    assert metrics["r2vpo/ratio_mean"] == pytest.approx((rho_star + 1) / 2)
    # PPO-clip has long stopped this token (ρ* = 1.625 > 1.2).
    loss_clip = compute_policy_loss("ppo_clip", log_probs, old, advantages, torch.ones(1, 2, dtype=torch.bool)).loss
    assert grad_of(loss_clip, log_probs)[0, 0].item() == 0.0



# ----------------------------------------------------------------------------------------
# Micro-batches with global denominators
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_agg", LOSS_AGG_MODES)
@pytest.mark.parametrize("ratio_level, center, name", [
    ("token", "mean", "r2vpo"), ("token", "one", "r2vpo"), ("sequence", "mean", "r2vpo"),
    ("token", "mean", "ppo_clip"), ("sequence", "mean", "gspo"),
])
def test_micro_batches_with_global_denominators_sum_to_full_batch(loss_agg, ratio_level, center, name):
    log_probs, old, adv, mask = make_batch(batch=6, seq=5, seed=21)
    mask[4] = False
    config = PolicyLossConfig(ratio_level=ratio_level, center=center, loss_agg=loss_agg, max_response_length=8)
    full_loss, full_metrics = split(compute_policy_loss(name, log_probs, old, adv, mask, config, lam=0.6))
    full_grad = grad_of(full_loss, log_probs)

    rho = policy_ratio(log_probs.detach(), old, mask, ratio_level)
    reduction = LossReduction(global_tokens=float(mask.sum()), global_seqs=float(mask.any(-1).sum()),
                              center_value=ratio_statistics(rho, mask).mean())
    total_loss, stats = 0.0, None
    for rows in (slice(0, 2), slice(2, 6)):
        # Each micro-batch padded to its own width, as the trainer collates them.
        width = int(mask[rows].nonzero()[:, 1].max()) + 1
        cols = slice(0, width)
        out = compute_policy_loss(name, log_probs[rows, cols], old[rows, cols], adv[rows], mask[rows, cols], config,
                                  lam=0.6, reduction=reduction)
        total_loss = total_loss + out.loss
        stats = out.stats if stats is None else stats.merge(out.stats)
    torch.testing.assert_close(total_loss, full_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_of(total_loss, log_probs), full_grad, rtol=1e-10, atol=1e-14)
    merged = stats.to_metrics()
    for key, value in merged.items():
        assert value == pytest.approx(full_metrics[key], rel=1e-9, abs=1e-12), key


def test_merged_stats_without_center_value_give_pooled_variance():
    log_probs, old, adv, mask = make_batch(batch=6, seed=4, spread=0.5)
    _, full = split(r2vpo_loss(log_probs, old, adv, mask, 0.3))
    parts = [r2vpo_loss(log_probs[rows], old[rows], adv[rows], mask[rows], 0.3).stats
             for rows in (slice(0, 3), slice(3, 6))]
    merged = parts[0].merge(parts[1])
    assert merged.ratio_var() == pytest.approx(full["r2vpo/ratio_var"], rel=1e-10)
    assert merged.mean() == pytest.approx(full["r2vpo/ratio_mean"], rel=1e-12)
    assert merged.num_tokens == mask.sum().item()
    with pytest.raises(ValueError, match="different centers"):
        merged.merge(RatioStats(center=1.0))
