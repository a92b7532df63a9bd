"""Group-relative advantage estimators (docs/algorithms.md "Advantages").

Rewards come as a flat ``[N]`` tensor whose groups (the G responses to one prompt) are
contiguous: ``rewards.view(N // G, G)``. Every estimator returns ``[N]`` and gives exactly
zero advantage to a group whose rewards are all equal (no learning signal, and no NaN).
"""

from __future__ import annotations

from typing import Callable

import torch

from .numerics import check_finite
from .registry import lookup, register

AdvantageFn = Callable[..., torch.Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator adding ``fn(grouped_rewards [num_groups, G], *, eps) -> [num_groups, G]``."""
    return register(ADVANTAGE_ESTIMATORS, name, "advantage estimator")


def compute_advantages(name: str, rewards: torch.Tensor, group_size: int, *, eps: float = 1e-6) -> torch.Tensor:
    """Advantages ``[N]`` from rewards ``[N]`` with contiguous groups of ``group_size``.

    Computed in float64, returned in the rewards' floating dtype (float32 for integer rewards).
    """
    estimator = lookup(ADVANTAGE_ESTIMATORS, name, "advantage estimator")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"number of rewards ({rewards.numel()}) is not a multiple of group_size ({group_size})")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    check_finite("rewards", rewards)
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    grouped = rewards.detach().to(torch.float64).view(-1, group_size)
    advantages = estimator(grouped, eps=eps)
    # All-equal group → exactly 0 (r − mean can be ±1 ulp instead of 0 in floating point).
    constant_group = (grouped == grouped[:, :1]).all(dim=-1, keepdim=True)
    advantages = torch.where(constant_group, torch.zeros_like(advantages), advantages)
    return advantages.reshape(-1).to(out_dtype)


@register_advantage("grpo")
def grpo_advantage(grouped_rewards: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i − mean_g) / (std_g + eps)   (GRPO, DeepSeekMath).

    std_g is the population std (``unbiased=False``): the group is the whole population of
    the prompt's samples, the advantages then have unit mean square within the group, and
    G = 1 is well defined. (verl and TRL use the unbiased std: a factor √(G/(G−1)) apart.)
    """
    mean = grouped_rewards.mean(dim=-1, keepdim=True)
    std = grouped_rewards.std(dim=-1, keepdim=True, unbiased=False)
    return (grouped_rewards - mean) / (std + eps)


@register_advantage("dr_grpo")
def dr_grpo_advantage(grouped_rewards: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """A_i = r_i − mean_g   (Dr. GRPO: no std normalisation, no difficulty bias)."""
    return grouped_rewards - grouped_rewards.mean(dim=-1, keepdim=True)


@register_advantage("rloo")
def rloo_advantage(grouped_rewards: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """A_i = r_i − (Σ_{j≠i} r_j)/(G − 1)   (REINFORCE leave-one-out); G = 1 → 0."""
    group_size = grouped_rewards.shape[-1]
    if group_size == 1:
        return torch.zeros_like(grouped_rewards)
    leave_one_out_mean = (grouped_rewards.sum(dim=-1, keepdim=True) - grouped_rewards) / (group_size - 1)
    return grouped_rewards - leave_one_out_mean
