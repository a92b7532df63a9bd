"""How R²VPO re-weights stale data, measured per staleness bucket.

A replayed response's ratio ρ = π_θ / μ_old is taken against its own stored behaviour
log-probs, so it carries the drift accumulated since it was sampled. In R²VPO its gradient
is proportional to ρ·(A − 2λ(ρ − c)) (docs/algorithms.md): samples still close to the current
policy (ρ ≈ c) keep their full advantage, those that drifted get a shrunk, eventually
reversed, effective advantage. Nothing is dropped; the re-weighting is continuous.

:func:`replay_metrics` reports, per staleness bucket k (0 = fresh, 1, 2, 3, and ``ge4`` for
4 or more versions old), how that re-weighting acts:

- ``replay/staleness_{k}/ratio_mean``, ``/ratio_var`` (Σ m(ρ − c)²/n with the loss's c),
- ``/ess`` = (Σρ)²/Σρ² over the bucket's tokens, ``/ess_frac`` = ESS / tokens,
- ``/eff_adv_flip_frac``: share of A ≠ 0 tokens whose effective advantage flipped sign,
- ``/clip_frac``: share of tokens PPO-clip (ε = 0.2) would give zero gradient, the baselines'
  comparison on the same data, and ``/tokens``.

Buckets without tokens are left out. Overall: ``replay/ess``, ``replay/ess_frac``,
``replay/staleness_mean`` (over responses) and ``replay/replayed_frac`` (share of responses
with staleness > 0). All values are for the batch given (one rank, one micro-batch).
"""

from __future__ import annotations

import torch

from r2vpo_ascend.algos.clip_losses import ppo_clipped_tokens
from r2vpo_ascend.algos.numerics import check_finite
from r2vpo_ascend.algos.ratio import effective_advantage, ratio_statistics

STALENESS_TAIL = 4          # staleness >= 4 shares one bucket, named "ge4"
REFERENCE_CLIP_EPS = 0.2    # PPO-clip's ε, for the baselines' comparison


def staleness_bucket_name(staleness: int) -> str:
    """``"0"``, ``"1"``, ``"2"``, ``"3"`` or ``"ge4"``."""
    return str(staleness) if staleness < STALENESS_TAIL else f"ge{STALENESS_TAIL}"


def replay_metrics(ratio: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor,
                   staleness: torch.Tensor, lam: float, center_value: float | None = None) -> dict[str, float]:
    """Re-weighting diagnostics of a batch mixing fresh and replayed responses.

    Args:
        ratio: ``[B, T]`` ρ used by the loss (detached inside).
        advantages: ``[B]`` or ``[B, T]``.
        response_mask: ``[B, T]``.
        staleness: ``[B]`` int, current_version − version of each response (0 = fresh).
        lam: λ of the loss.
        center_value: the loss's c; ``None`` = the masked mean of ρ over this batch.
    """
    mask = response_mask.bool()
    if ratio.shape != mask.shape:
        raise ValueError(f"ratio {tuple(ratio.shape)} and response_mask {tuple(mask.shape)} differ in shape")
    if staleness.shape != (ratio.shape[0],):
        raise ValueError(f"staleness must be [batch] = ({ratio.shape[0]},), got {tuple(staleness.shape)}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(ratio)
    if advantages.shape != ratio.shape:
        raise ValueError(f"advantages must be [batch] or {tuple(ratio.shape)}, got {tuple(advantages.shape)}")
    if (staleness < 0).any():
        raise ValueError("staleness must be >= 0 (current_version − version)")
    check_finite("ratio", ratio.detach(), mask)
    check_finite("advantages", advantages.detach(), mask)
    ratio = torch.where(mask, ratio.detach(), torch.ones_like(ratio))
    advantages = torch.where(mask, advantages.detach(), torch.zeros_like(ratio))

    overall = ratio_statistics(ratio, mask)
    center = overall.mean() if center_value is None else float(center_value)
    # R²VPO's effective advantage and the tokens a PPO clip (ε = 0.2) would silence.
    effective_adv = effective_advantage(advantages, ratio, center, lam)
    ppo_clipped = ppo_clipped_tokens(ratio, advantages, REFERENCE_CLIP_EPS, REFERENCE_CLIP_EPS)

    metrics: dict[str, float] = {}
    bucket_of_seq = staleness.clamp(max=STALENESS_TAIL)
    for bucket in sorted(set(bucket_of_seq.tolist())):
        bucket_mask = mask & (bucket_of_seq == bucket).unsqueeze(-1)
        stats = ratio_statistics(ratio, bucket_mask, advantages, effective_adv, clipped=ppo_clipped,
                                 center=center)
        if stats.num_tokens == 0:
            continue
        prefix = f"replay/staleness_{staleness_bucket_name(int(bucket))}"
        bucket_metrics = stats.to_metrics()
        metrics.update({
            f"{prefix}/ratio_mean": stats.mean(),
            f"{prefix}/ratio_var": stats.ratio_var(),
            f"{prefix}/ess": stats.ess,
            f"{prefix}/ess_frac": stats.ess_frac,
            f"{prefix}/eff_adv_flip_frac": bucket_metrics["r2vpo/eff_adv_flip_frac"],
            f"{prefix}/clip_frac": bucket_metrics["clip/frac"],
            f"{prefix}/tokens": stats.num_tokens,
        })

    nonempty = mask.any(dim=-1)
    num_seqs = int(nonempty.sum().item())
    seq_staleness = staleness[nonempty].to(torch.float64)
    metrics.update({
        "replay/ess": overall.ess,
        "replay/ess_frac": overall.ess_frac,
        "replay/staleness_mean": seq_staleness.mean().item() if num_seqs else 0.0,
        "replay/replayed_frac": (seq_staleness > 0).to(torch.float64).mean().item() if num_seqs else 0.0,
    })
    return metrics
