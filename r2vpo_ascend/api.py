"""The Python API in one import: `from r2vpo_ascend.api import R2VPOTrainer, R2VPOConfig`."""

from r2vpo_ascend.trainer.config import ConfigError, R2VPOConfig
from r2vpo_ascend.trainer.trainer import R2VPOTrainer, TrainResult
from r2vpo_ascend.plotting import plot_run

__all__ = ["R2VPOTrainer", "R2VPOConfig", "ConfigError", "TrainResult", "plot_run"]
