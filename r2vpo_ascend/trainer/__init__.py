"""The RL loop and its parts: config, engines, update phase, checkpoints, loggers."""

from r2vpo_ascend.trainer.config import ConfigError, R2VPOConfig

__all__ = ["ConfigError", "R2VPOConfig"]
