"""The dual step: the Lagrange multiplier λ of the ratio-variance constraint V̂ ≤ δ
(docs/algorithms.md "Dual step": once per optimiser step, from the detached global V̂).

- ``additive`` (default):  λ ← clip(λ + η_λ·(V̂ − δ), λ_min, λ_max)
- ``multiplicative``:      λ ← clip(λ·exp(η_λ·(V̂ − δ)/δ), max(λ_min, 1e-8), λ_max)
- ``none``:                λ fixed (ablation: a plain variance penalty)
- ``normalized``:          λ ← clip(λ + η_λ·(V̂ − δ)/δ, λ_min, λ_max): the additive step on the
  RELATIVE violation, so ``dual_lr`` means the same at any δ (experiments/paper_claims.py gets
  that from outside by setting η_λ = 0.05/δ). Not in the spec: a remedy (issue 11).
- ``pid``:                 the PID Lagrangian of Stooke, Achiam & Abbeel, "Responsive Safety in
  Reinforcement Learning by PID Lagrangian Methods" (ICML 2020, arXiv 2007.03964), Algorithm 2,
  on the relative violation e = (V̂ − δ)/δ: I ← clip(I + e, 0, λ_max/K_I), λ = clip(K_P·e +
  K_I·I + K_D·max(0, e − e_prev), λ_min, λ_max), with K_I = η_λ (``dual_lr``), K_P = ``kp``,
  K_D = ``kd``. The proportional term reacts at once and lets λ fall back as soon as V̂ does,
  which the pure integral (additive) update cannot: it damps the overshoot that paper measured
  in constrained RL, the "λ jumps, then stays" failure of issue 11. I starts at
  init_lambda/K_I so that λ = init_lambda before the first step.

``max_step`` (optional, default off = the spec's update) bounds one update: the additive change
η_λ·(V̂ − δ), or the multiplicative exponent η_λ·(V̂ − δ)/δ, is clipped to [−max_step, max_step].
V̂ is a mean of squares, so one token with an extreme ratio (ρ = 55 → (ρ − c)² ≈ 3000) can make
it 10⁴× its usual value for one step; without a bound that one step sends λ to ``lambda_max``,
from where the additive update needs ``lambda_max``/(η_λ·δ) steps to come back.

Multiplicative updates cannot leave λ = 0 (0·anything = 0), so in that mode λ is kept at
least ``MULTIPLICATIVE_FLOOR`` = 1e-8: from λ = 0 the first update puts it there, and it then
grows geometrically while V̂ > δ (from 1e-8 to 1 takes ln(1e8)/(η_λ·(V̂ − δ)/δ) ≈ 18.4/… steps).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .errors import ConfigError
from .numerics import NonFiniteError

DUAL_MODES = ("additive", "multiplicative", "none", "normalized", "pid")
MULTIPLICATIVE_FLOOR = 1e-8
# exp() argument cap: exp(700) ≈ 1e304 is still a float; anything above would hit λ_max anyway.
_MAX_EXPONENT = 700.0


def check_dual_settings(init_lambda: float, target: float, lr: float, mode: str, lambda_max: float,
                        lambda_min: float, max_step: float | None, *, kp: float = 0.0, kd: float = 0.0) -> None:
    """The one validation of the dual settings (:class:`DualController` and ``R2VPOConfig``
    both call it); raises :class:`ConfigError` naming the argument and its config field."""
    if mode not in DUAL_MODES:
        raise ConfigError(f"mode (`dual_update`) must be one of {list(DUAL_MODES)}, got {mode!r}")
    values = {"init_lambda (`init_lambda`)": init_lambda, "target δ (`ratio_var_target`)": target,
              "lr η_λ (`dual_lr`)": lr, "`lambda_max`": lambda_max, "`lambda_min`": lambda_min}
    if max_step is not None:
        values["max_step (`dual_step_max`)"] = max_step
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if not target > 0:
        raise ConfigError(f"target δ (`ratio_var_target`), the ratio-variance bound, must be > 0, got {target}")
    if lr < 0:
        raise ConfigError(f"lr η_λ (`dual_lr`), the dual step size, must be >= 0, got {lr}")
    if max_step is not None and not max_step > 0:
        raise ConfigError(f"max_step (`dual_step_max`), the bound on one dual update, must be > 0, got {max_step}")
    if lambda_min < 0:
        raise ConfigError(f"`lambda_min` must be >= 0, got {lambda_min}")
    if lambda_max < lambda_min:
        raise ConfigError(f"`lambda_max` ({lambda_max}) must be >= `lambda_min` ({lambda_min})")
    for name, value in (("kp (`dual_kp`)", kp), ("kd (`dual_kd`)", kd)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name}, a PID gain, must be a finite number >= 0, got {value!r}")
    if mode == "pid" and not lr > 0:
        raise ConfigError(f"lr η_λ (`dual_lr`) is K_I of the PID update and must be > 0, got {lr}")
    if not lambda_min <= init_lambda <= lambda_max:
        raise ConfigError(f"`init_lambda` ({init_lambda}) must be within [lambda_min, lambda_max] = "
                          f"[{lambda_min}, {lambda_max}]")


class DualController:
    """Holds λ and applies the dual update from the global V̂ (identical on every rank).

    Args:
        init_lambda: λ at step 0, in [lambda_min, lambda_max].
        target: δ > 0, the bound on the ratio variance.
        lr: η_λ >= 0, the dual step size.
        mode: ``additive``, ``multiplicative`` or ``none``.
        lambda_max / lambda_min: bounds, 0 <= lambda_min <= lambda_max < inf.
    """

    def __init__(self, init_lambda: float, target: float, lr: float, mode: str = "additive",
                 lambda_max: float = 100.0, lambda_min: float = 0.0, max_step: float | None = None,
                 kp: float = 0.0, kd: float = 0.0) -> None:
        check_dual_settings(init_lambda, target, lr, mode, lambda_max, lambda_min, max_step, kp=kp, kd=kd)
        init_lambda, target, lr = float(init_lambda), float(target), float(lr)
        lambda_max, lambda_min = float(lambda_max), float(lambda_min)
        max_step = None if max_step is None else float(max_step)
        self.target, self.lr, self.mode = target, lr, mode
        self.lambda_min, self.lambda_max = lambda_min, lambda_max
        self.max_step = max_step
        self.lam = init_lambda
        self.kp, self.kd = float(kp), float(kd)
        # PID state (mode "pid"): the integral of the relative violation and its last value.
        self.integral = init_lambda / lr if mode == "pid" else 0.0
        self.last_error: float | None = None

    def update(self, ratio_var: float | torch.Tensor) -> float:
        """One dual step from the detached global V̂; returns the new λ."""
        ratio_var = float(ratio_var)
        if not math.isfinite(ratio_var):
            raise NonFiniteError(f"ratio_var (V̂) passed to the dual update is not finite: {ratio_var}")
        violation = ratio_var - self.target  # V̂ − δ: > 0 raises λ, < 0 lowers it
        if self.mode == "additive":
            new_lam = self.lam + self._bounded(self.lr * violation)
            self.lam = min(max(new_lam, self.lambda_min), self.lambda_max)
        elif self.mode == "multiplicative":
            exponent = min(self._bounded(self.lr * violation / self.target), _MAX_EXPONENT)
            floor = max(self.lambda_min, MULTIPLICATIVE_FLOOR)
            self.lam = min(max(self.lam * math.exp(exponent), floor), self.lambda_max)
        elif self.mode == "normalized":
            new_lam = self.lam + self._bounded(self.lr * violation / self.target)
            self.lam = min(max(new_lam, self.lambda_min), self.lambda_max)
        elif self.mode == "pid":
            error = violation / self.target
            # Anti-windup: the integral stops growing once K_I·I alone reaches λ_max.
            self.integral = min(max(0.0, self.integral + error), self.lambda_max / self.lr)
            derivative = 0.0 if self.last_error is None else max(0.0, error - self.last_error)
            new_lam = self.kp * error + self.lr * self.integral + self.kd * derivative
            self.lam = min(max(new_lam, self.lambda_min), self.lambda_max)
            self.last_error = error
        return self.lam

    def _bounded(self, step: float) -> float:
        return step if self.max_step is None else min(max(step, -self.max_step), self.max_step)

    def state_dict(self) -> dict[str, Any]:
        """λ. The hyperparameters are recorded for reference only: on load, those of the
        constructor (the current config) apply."""
        return {"lam": self.lam, "target": self.target, "lr": self.lr, "mode": self.mode, "max_step": self.max_step,
                "lambda_min": self.lambda_min, "lambda_max": self.lambda_max,
                "integral": self.integral, "last_error": self.last_error, "kp": self.kp, "kd": self.kd}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore λ (clipped into the current [lambda_min, lambda_max]). Older checkpoints also
        hold ``num_updates`` and ``last_ratio_var``, which nothing reads: they are ignored."""
        if "lam" not in state:
            raise ValueError("DualController state is missing the field 'lam'")
        lam = float(state["lam"])
        if not math.isfinite(lam):
            raise ValueError(f"DualController state has a non-finite 'lam': {lam}")
        self.lam = min(max(lam, self.lambda_min), self.lambda_max)
        if "integral" in state:  # checkpoints from before the PID mode have no PID state
            self.integral, self.last_error = float(state["integral"]), state["last_error"]

    def __repr__(self) -> str:
        return (f"DualController(lam={self.lam:.6g}, target={self.target}, lr={self.lr}, mode={self.mode!r}, "
                f"lambda_min={self.lambda_min}, lambda_max={self.lambda_max}, max_step={self.max_step})")
