"""Look reward functions up by name: ``get_reward_fn("math_verify", timeout_s=5.0)``."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from functools import partial
from typing import Any, Callable

from r2vpo_ascend.rewards.base import RewardError
from r2vpo_ascend.rewards.arithmetic import ArithmeticReward
from r2vpo_ascend.rewards.format import FormatReward
from r2vpo_ascend.rewards.math_reward import MathVerifyReward
from r2vpo_ascend.rewards.sequence import SequenceReward

REWARD_FNS: dict[str, Callable[..., Any]] = {
    "math_verify": MathVerifyReward,
    "arithmetic": ArithmeticReward,
    "format": FormatReward,
    "sequence": SequenceReward,
}


def _import_module(spec: str, module_name: str):
    """Import `module_name`, finding it in the working directory too (as `python -m` would; the
    `r2vpo` console script does not put the working directory on sys.path)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own error while importing
        raise RewardError(f"reward function {spec!r}: cannot import module {module_name!r} "
                          f"(searched the working directory {cwd} and sys.path): {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(cwd)


def _resolve_user_obj(spec: str):
    target = spec[len("python:") :]
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise RewardError(f"reward function {spec!r}: expected 'python:module.path:function'")
    obj = _import_module(spec, module_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardError(f"reward function {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardError(f"reward function {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj, attr


def check_reward_spec(name: str) -> None:
    """Raise RewardError unless `name` is `auto`, a registered reward or an importable `python:` callable."""
    if name.startswith("python:"):
        _resolve_user_obj(name)
    elif name != "auto" and name not in REWARD_FNS:
        raise RewardError(f"config field `reward`: unknown reward function {name!r}; known names: "
                          f"{', '.join(sorted(REWARD_FNS))}, or 'python:module.path:function'")


def _import_user_fn(spec: str, kwargs: dict[str, Any]) -> Callable:
    obj, attr = _resolve_user_obj(spec)
    if inspect.isclass(obj):
        return obj(**kwargs)
    if kwargs:
        fn = partial(obj, **kwargs)
        fn.__name__ = getattr(obj, "__name__", attr)  # type: ignore[attr-defined]
        return fn
    return obj


def get_reward_fn(name: str, **kwargs: Any) -> Callable:
    """Build a reward function with the signature ``fn(prompts, completions, **columns) -> list[float]``.

    ``name`` is one of ``REWARD_FNS`` (``"math_verify"``, ``"arithmetic"``, ``"format"``), whose
    class is built with ``kwargs``, or ``"python:module.path:function"`` for a user function
    (a class found there is built with ``kwargs``; a function gets them bound as keywords).
    """
    if name.startswith("python:"):
        return _import_user_fn(name, kwargs)
    if name not in REWARD_FNS:
        known = ", ".join(sorted(REWARD_FNS))
        raise RewardError(f"unknown reward function {name!r}; known names: {known}, or 'python:module.path:function'")
    return REWARD_FNS[name](**kwargs)


def resolve_reward_fn(reward: str, *, dataset: str, verify_timeout_s: float = 5.0,
                      format_reward_weight: float = 0.0) -> Callable:
    """The reward function a run or a benchmark uses: `reward` by name, where `auto` means
    `arithmetic` for the built-in `arithmetic` dataset, `sequence` for the built-in `sequence`
    dataset and `math_verify` for everything else
    (which alone takes the time limit and the weight of the \\boxed{} format reward)."""
    name = reward
    if name == "auto":
        name = {"arithmetic": "arithmetic", "sequence": "sequence"}.get(dataset, "math_verify")
    if name == "math_verify":
        return get_reward_fn(name, timeout_s=verify_timeout_s, format_weight=format_reward_weight)
    return get_reward_fn(name)
