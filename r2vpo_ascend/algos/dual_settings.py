"""The R²VPO-only settings (λ and its dual step, the centre c), defined once.

Frameworks that carry their own config (TRL's ``GRPOConfig``, verl's ``PolicyLossConfig``)
already have fields for the ratio level, the loss aggregation and the KL coefficient; what they
lack is this table. ``R2VPOConfig`` and the configs of ``r2vpo_ascend.integrations`` all build
these fields from it (names, defaults, help, choices), so the three cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .dual import DUAL_MODES, DualController, check_dual_settings
from .errors import ConfigError
from .losses import CENTERS


@dataclass(frozen=True)
class Setting:
    """One config field: its name, Python type, default, help text and allowed values."""

    name: str
    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] | None = None


R2VPO_SETTINGS: tuple[Setting, ...] = (
    Setting("center", str, "mean", "Centre c of the variance term: batch mean of ρ (`mean`) or 1 (`one`).", CENTERS),
    Setting("init_lambda", float, 1.0, "Initial Lagrange multiplier λ of the ratio-variance constraint."),
    # δ and η_λ = 0.05/δ: tuned in the paper-claims study, kept by the sample-efficiency study's winner
    Setting("ratio_var_target", float, 0.016, "δ: the bound on the ratio variance V̂ (a default, tune per task; "
            "0.05 before 2026-12)."),
    Setting("dual_lr", float, 3.125, "η_λ: step size of the dual update of λ (additive: 0.05/δ at the default δ; "
            "0.5 before 2026-12)."),
    Setting("dual_update", str, "additive", "λ update: `additive` (the spec), `multiplicative`, `none` (fixed λ "
            "ablation), `normalized` (additive on (V̂ − δ)/δ, so dual_lr means the same at any δ) or `pid` (PID "
            "Lagrangian, Stooke et al. 2020, on (V̂ − δ)/δ; K_I = dual_lr, K_P = dual_kp, K_D = dual_kd). See "
            "docs/algorithms.md.", DUAL_MODES),
    Setting("dual_kp", float, 1.0, "K_P of `dual_update: pid` (λ per unit of relative violation (V̂ − δ)/δ)."),
    Setting("dual_kd", float, 0.0, "K_D of `dual_update: pid` (on the rise of the relative violation)."),
    Setting("lambda_max", float, 100.0, "Upper bound on λ."),
    Setting("lambda_min", float, 0.0, "Lower bound on λ."),
    Setting("dual_step_max", float | None, None, "Bound on one dual update (additive: |Δλ|; multiplicative: "
            "|log-step|), so one step with an outlier ratio cannot send λ to lambda_max. None: the spec's "
            "unbounded update."),
)


def check_settings(config: Any) -> None:
    """Validate the R²VPO settings of ``config`` (any object with the fields of
    :data:`R2VPO_SETTINGS`); raises :class:`ConfigError` naming the field."""
    for setting in R2VPO_SETTINGS:
        value = getattr(config, setting.name)
        if setting.choices is not None and value not in setting.choices:
            raise ConfigError(f"`{setting.name}` must be one of {list(setting.choices)}, got {value!r}")
    check_dual_settings(config.init_lambda, config.ratio_var_target, config.dual_lr, config.dual_update,
                        config.lambda_max, config.lambda_min, config.dual_step_max, kp=config.dual_kp,
                        kd=config.dual_kd)


def dual_controller(config: Any) -> DualController:
    """The :class:`DualController` that the settings of ``config`` describe."""
    return DualController(config.init_lambda, config.ratio_var_target, config.dual_lr, mode=config.dual_update,
                          lambda_max=config.lambda_max, lambda_min=config.lambda_min,
                          max_step=config.dual_step_max, kp=config.dual_kp, kd=config.dual_kd)
