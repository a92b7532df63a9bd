"""The checks of a run config that are tables rather than code: which fields a resumed run
may change (`on_resume` in each field's metadata) and the numeric range of every field."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from r2vpo_ascend.algos.errors import ConfigError

# What a resumed run may change (`on_resume` in each field's metadata). FIXED — the default
# rule, so a field added without thinking about resume is safe — means the checkpoint's state
# depends on it (the loss, the data, lr: the restored optimiser keeps the old one anyway) and
# a resume with another value is refused; MAY_CHANGE fields (steps, evaluation, logging,
# paths, performance knobs) may change, and the resume says which did.
MAY_CHANGE, FIXED = "may_change", "fixed"


def _finite(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    def ok(v) -> bool:
        return v is not None and math.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo)) \
            and (hi is None or (v < hi if hi_open else v <= hi))
    return ok


_AT_LEAST_1 = ("prompts_per_step", "max_new_tokens", "updates_per_step", "micro_batch_size", "replay_capacity",
               "max_prompt_length", "sft_batch_size", "eval_size", "dataset_size", "keep_checkpoints",
               "arithmetic_terms", "arithmetic_max_digits", "ppo_epochs", "sequence_length")
_AT_LEAST_0 = ("steps", "save_every", "sft_steps", "warmup_steps", "log_every", "num_threads", "top_k",
               "max_staleness", "max_bad_steps", "grad_split_every")
# (field, what the rule says, the rule; None values of optional fields are not checked)
_RANGES = (*((n, ">= 1", lambda v: v >= 1) for n in _AT_LEAST_1),
           *((n, ">= 0", lambda v: v >= 0) for n in _AT_LEAST_0),
           ("num_generations", ">= 2 (advantages are relative to the group: with one response each is 0)",
            lambda v: v >= 2),
           *((n, "finite and > 0", _finite(0, lo_open=True))
             for n in ("lr", "sft_lr", "temperature", "ratio_var_target", "collective_timeout_s", "verify_timeout_s",
                       "dual_step_max", "clip_eps_low", "clip_eps_high", "dual_variance_clip", "penalty_huber_kappa",
                       "ratio_grad_cap")),
           *((n, "finite and >= 0", _finite(0))
             for n in ("dual_lr", "lambda_min", "lambda_max", "weight_decay", "max_grad_norm", "kl_coef",
                       "format_reward_weight", "dual_kp", "dual_kd")),
           *((n, "finite", _finite()) for n in ("init_lambda", "entropy_coef")),
           ("top_p", "in (0, 1]", _finite(0, 1, lo_open=True)),
           ("vllm_gpu_memory_utilization", "in (0, 1]", _finite(0, 1, lo_open=True)),
           ("replay_ratio", "in [0, 1)", _finite(0, 1, hi_open=True)))


def check_ranges(config: Any) -> None:
    """Every numeric field within its range (:data:`_RANGES`); raises ConfigError naming the field."""
    for name, rule, ok in _RANGES:
        value = getattr(config, name)
        if value is not None and not ok(value):
            raise ConfigError(f"config field `{name}` must be {rule}, got {value!r}")


def check_resume_config(config: Any, state: dict, checkpoint: Path) -> None:
    """Compare this run's config with the one saved in `state`: a changed FIXED field is
    refused (naming every such field), changed MAY_CHANGE fields are announced, and a
    checkpoint past `steps` is refused."""
    saved = state.get("config") or {}
    ignore = {"resume", "output_dir"}  # where the run is, not what it is
    changed = [(f, saved[f.name], getattr(config, f.name)) for f in dataclasses.fields(config)
               if f.name in saved and f.name not in ignore and saved[f.name] != getattr(config, f.name)]
    fixed = [(f.name, old, new) for f, old, new in changed if f.metadata.get("on_resume", FIXED) == FIXED]
    if fixed:
        listed = ", ".join(f"{n} ({old!r} -> {new!r})" for n, old, new in fixed)
        raise ConfigError(f"resume from {checkpoint}: these fields may not change on resume: {listed}. Use the "
                          "checkpoint's values, or resume=never to start a new run (the earlier one is kept in "
                          "previous_runs/)")
    if changed:
        print("[resume] changed since the checkpoint: "
              + ", ".join(f"{f.name} {old!r} -> {new!r}" for f, old, new in changed), flush=True)
    step = state.get("trainer", {}).get("step", 0)
    if step > config.steps:
        raise ConfigError(f"resume from {checkpoint}: the checkpoint is at RL step {step}, past steps={config.steps}; "
                          "raise steps to continue it, or use resume=never to start a new run")
