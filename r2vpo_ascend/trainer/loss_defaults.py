"""Defaults that depend on the loss: the data-reuse knobs (issue 11 item 5).

A config field listed in :data:`OTHERWISE` is ``None`` unless the user sets it; on validation
it takes its loss's row of :data:`PER_LOSS` (or :data:`OTHERWISE`), so a user who sets only
the model, data, batch and lr gets the reuse each loss was measured to need
(docs/results_sample_efficiency.md). A value set in the config always wins. The resolved
values are what the run records (``to_dict``, checkpoints, ``--print-config``).

`R2VPOConfig.replace(loss=...)` re-resolves the fields that were defaulted, so a config
derived for another loss does not inherit the first loss's defaults.
"""

from __future__ import annotations

from typing import Any

# Every loss not listed in PER_LOSS: one pass over each fresh batch (the plain on-policy step).
OTHERWISE: dict[str, Any] = {"ppo_epochs": 1, "replay_ratio": 0.0}

# R²VPO: 4 passes over each update batch, half of it replayed (max_staleness 4): the setting
# stage B of the sample-efficiency study picked for the spec's R²VPO on both tasks, among
# ppo_epochs/replay (1, 0), (2, 0.5), (4, 0.5), (1, 0.75) (docs/results_sample_efficiency.md).
PER_LOSS: dict[str, dict[str, Any]] = {"r2vpo": {"ppo_epochs": 4, "replay_ratio": 0.5}}

FIELDS = tuple(OTHERWISE)


def loss_default(loss: str, name: str) -> Any:
    return PER_LOSS.get(loss, {}).get(name, OTHERWISE[name])


def describe(name: str) -> str:
    """The per-loss defaults of one field, for its help text."""
    rows = [f"{loss} {row[name]}" for loss, row in PER_LOSS.items() if name in row]
    return "default per loss: " + ", ".join(rows + [f"otherwise {OTHERWISE[name]}"])


def resolve_loss_defaults(config: Any) -> frozenset[str]:
    """Set every ``None`` field of :data:`FIELDS` to its loss's default; the names it set."""
    resolved = set()
    for name in FIELDS:
        if getattr(config, name) is None:
            setattr(config, name, loss_default(config.loss, name))
            resolved.add(name)
    return frozenset(resolved)
