"""Problem sets, prompts and batch sampling: ``load_problems``, ``build_prompt``, ``PromptSampler``, built-in tasks."""

from r2vpo_ascend.data.arithmetic import arithmetic_sft_pairs, make_arithmetic_dataset, make_sequence_dataset
from r2vpo_ascend.data.loading import BUILTIN_BENCHMARKS, DataError, builtin_path, builtin_splits, load_problems
from r2vpo_ascend.data.prompts import ARITHMETIC_TEMPLATE, MATH_TEMPLATE, build_prompt
from r2vpo_ascend.data.records import ArithmeticSplits, prompt_records, with_prompts
from r2vpo_ascend.data.sampler import PromptSampler

__all__ = [
    "ARITHMETIC_TEMPLATE",
    "ArithmeticSplits",
    "BUILTIN_BENCHMARKS",
    "DataError",
    "MATH_TEMPLATE",
    "PromptSampler",
    "arithmetic_sft_pairs",
    "build_prompt",
    "builtin_path",
    "builtin_splits",
    "load_problems",
    "make_arithmetic_dataset",
    "make_sequence_dataset",
    "prompt_records",
    "with_prompts",
]
