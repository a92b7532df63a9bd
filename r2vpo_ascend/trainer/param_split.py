"""The gradient split of R²VPO in parameter space (issue 11), every `grad_split_every` RL steps.

The per-token split (algos/robust.py `gradient_split`) says how much of ∂loss/∂logπ is the
advantage part and how much the variance part; after back-propagation through the model the
two can cancel or add up, and gradient clipping sees only their sum. This costs one more
forward and three backwards of the mini-batch, so it runs only every N steps:

- ``grad_param/adv_norm``, ``grad_param/var_norm``: ‖∇θ‖ of the advantage term −agg(ρ·A) and
  of the penalty term λ·V̂ (the loss is their sum);
- ``grad_param/var_share`` = var_norm / (adv_norm + var_norm);
- ``grad_param/cos``: cosine between the two (< 0: the penalty pulls against the advantage);
- ``grad_param/top1pct_share``: ‖∇θ of both terms restricted to the 1% of tokens with the
  largest |ρ − c|‖ / ‖∇θ loss‖ (the outliers' weight in the actual update direction).

Gradients are summed over micro-batches and, with several processes, all-reduced (one
collective per part). The top 1% is taken within each micro-batch. Native engine only: under
ZeRO-3 the parameters are partitioned (the caller skips it there).
"""

from __future__ import annotations

import math

import torch

from r2vpo_ascend.algos import compute_policy_loss
from r2vpo_ascend.algos.robust import TOP_FRACTION


def param_space_split(engine, config, loss_config, chunks, *, lam: float, reduction) -> dict[str, float]:
    """The metrics above for one mini-batch; ``chunks``: (batch, mask, old_log_probs, advantages)."""
    params = [p for p in engine.model.parameters() if p.requires_grad]
    parts = [[torch.zeros_like(p, dtype=torch.float32) for p in params] for _ in range(3)]  # adv, var, top
    for batch, mask, old, advantages in chunks:
        log_probs, _ = engine.log_probs(batch, temperature=config.temperature)
        mask = mask.to(log_probs.device)
        pg = compute_policy_loss(config.loss, log_probs, old.to(log_probs.device), advantages.to(log_probs.device),
                                 mask, loss_config, lam=0.0, reduction=reduction).loss
        out = compute_policy_loss(config.loss, log_probs, old.to(log_probs.device), advantages.to(log_probs.device),
                                  mask, loss_config, lam=lam, reduction=reduction)
        full = out.loss
        g_adv = torch.autograd.grad(pg, log_probs, retain_graph=True)[0]
        g_full = torch.autograd.grad(full, log_probs, retain_graph=True)[0]
        g_var = g_full - g_adv
        top = _top_mask(log_probs.detach(), old.to(log_probs.device), mask.bool(),
                        out.stats.center_value())
        for acc, grad_out in zip(parts, (g_adv, g_var, g_full * top)):
            grads = torch.autograd.grad(log_probs, params, grad_outputs=grad_out, retain_graph=True,
                                        allow_unused=True)
            for a, g in zip(acc, grads):
                if g is not None:
                    a += g.float()
    flat = [torch.cat([a.reshape(-1) for a in acc]).double().cpu() for acc in parts]
    if engine.world_size > 1:
        flat = [engine.all_reduce_sum(f) for f in flat]
    adv, var, top = flat
    adv_norm, var_norm = float(adv.norm()), float(var.norm())
    total_norm = float((adv + var).norm())
    return {
        "grad_param/adv_norm": adv_norm,
        "grad_param/var_norm": var_norm,
        "grad_param/var_share": var_norm / (adv_norm + var_norm) if adv_norm + var_norm > 0 else 0.0,
        "grad_param/cos": float(adv @ var) / (adv_norm * var_norm) if adv_norm * var_norm > 0 else 0.0,
        "grad_param/top1pct_share": float(top.norm()) / total_norm if total_norm > 0 else 0.0,
    }


def _top_mask(log_probs: torch.Tensor, old: torch.Tensor, mask: torch.Tensor, center: float) -> torch.Tensor:
    """1.0 on the ⌈1%⌉ masked tokens with the largest |ρ − c| (token-level ρ), else 0."""
    dev = torch.where(mask, (torch.exp((log_probs - old).clamp(-20, 20)) - center).abs(),
                      torch.full_like(log_probs, -1.0))
    n = int(mask.sum())
    out = torch.zeros_like(log_probs)
    if n:
        k = max(1, math.ceil(TOP_FRACTION * n))
        out.view(-1)[torch.topk(dev.view(-1), k).indices] = 1.0
    return out
