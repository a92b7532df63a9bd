"""Every error a user can cause, in one place.

Each one means "you asked for something that cannot work" and carries a message that names the
field, file or extra and what was expected; the CLI prints it in one line and exits 2 instead of
showing a traceback. They live at the bottom of the package (next to the tensor maths that raises
:class:`NonFiniteError`) so that every layer can raise them without importing upwards;
``r2vpo_ascend.errors`` re-exports them for users.
"""
from __future__ import annotations

__all__ = ["R2VPOError", "ConfigError", "CheckpointError", "MissingExtraError", "ModelLoadError",
           "DataError", "RewardError", "RolloutError", "NonFiniteError", "TrainingDivergedError",
           "OutputDirLockedError"]


class R2VPOError(Exception):
    """Base class of the user-facing errors of r2vpo-ascend."""


class ConfigError(R2VPOError, ValueError):
    """A configuration mistake; the message names the field and what was expected."""


class CheckpointError(R2VPOError, RuntimeError):
    """A checkpoint or run directory that cannot be written, read or trusted."""


class MissingExtraError(R2VPOError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class ModelLoadError(R2VPOError, ValueError):
    """A model path, preset or file that cannot be loaded as a causal LM."""


class DataError(R2VPOError, ValueError):
    """A data source is missing, unreadable or does not have the expected fields."""


class RewardError(R2VPOError, ValueError):
    """A reward function was misused or returned something that is not one finite number per completion."""


class RolloutError(R2VPOError, RuntimeError):
    """The engine produced something the trainer cannot use (e.g. no responses)."""


class NonFiniteError(R2VPOError, ValueError):
    """A tensor that must be finite (under its mask) holds NaN or ±inf."""


class TrainingDivergedError(R2VPOError, RuntimeError):
    """The loss or the gradient became non-finite; the run stopped and kept its last good checkpoint."""


class OutputDirLockedError(CheckpointError):
    """Another live process holds the lock on the output directory."""
