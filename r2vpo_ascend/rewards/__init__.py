"""Reward functions: ``fn(prompts, completions, **columns) -> list[float]``, one finite float per completion."""

from r2vpo_ascend.rewards.arithmetic import ArithmeticReward, extract_final_integer
from r2vpo_ascend.rewards.base import CORRECT_THRESHOLD, RewardError, RewardFn, validate_rewards
from r2vpo_ascend.rewards.format import FormatReward, format_reward, last_boxed_content
from r2vpo_ascend.rewards.math_reward import MathVerifyReward
from r2vpo_ascend.rewards.registry import REWARD_FNS, get_reward_fn, resolve_reward_fn
from r2vpo_ascend.rewards.worker_pool import TaskResult, TimeoutProcessPool

__all__ = [
    "ArithmeticReward",
    "CORRECT_THRESHOLD",
    "FormatReward",
    "MathVerifyReward",
    "REWARD_FNS",
    "RewardError",
    "RewardFn",
    "TaskResult",
    "TimeoutProcessPool",
    "extract_final_integer",
    "format_reward",
    "get_reward_fn",
    "resolve_reward_fn",
    "last_boxed_content",
    "validate_rewards",
]
