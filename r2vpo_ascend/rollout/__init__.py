"""Rollout engines behind one protocol: HF `generate` (always available); vLLM in `rollout.vllm`."""

from r2vpo_ascend.rollout.base import Generation, RolloutEngine, RolloutError, SamplingConfig
from r2vpo_ascend.rollout.hf import HFGenerateEngine

__all__ = ["Generation", "RolloutEngine", "RolloutError", "SamplingConfig", "HFGenerateEngine"]
