"""r2vpo-ascend: RL fine-tuning of LLMs with R²VPO on Ascend, NVIDIA GPUs and the CPU.

    from r2vpo_ascend import R2VPOTrainer, R2VPOConfig

The trainer is imported lazily so that `import r2vpo_ascend.algos` (the pure loss library)
stays light.
"""

__version__ = "0.1.0"

__all__ = ["R2VPOTrainer", "R2VPOConfig", "__version__"]


def __getattr__(name):
    if name in ("R2VPOTrainer", "R2VPOConfig"):
        from r2vpo_ascend import api
        return getattr(api, name)
    raise AttributeError(f"module 'r2vpo_ascend' has no attribute {name!r}")
