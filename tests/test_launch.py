"""scripts/train_pangu7b.sh / train_pangu1b.sh: resolved config and launch command (dry runs,
single and multi-node, torchrun and the DeepSpeed launcher), and one real step on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_VARS = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC_PER_NODE", "HOSTFILE", "CONFIG",
               "WORLD_SIZE", "RANK", "LOCAL_RANK")


def run_script(script, *args, env=None, timeout=120):
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    base.update(PYTHON=sys.executable, R2VPO_DEVICE="cpu", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *args], cwd=ROOT, env=base,
                          capture_output=True, text=True, timeout=timeout)


def command_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("[launch] command:"))


def test_dry_run_single_node_prints_config_and_torchrun_command():
    # engine=native: torchrun whether or not DeepSpeed is installed (the test extra installs it)
    res = run_script("train_pangu7b.sh", "--dry-run", "MODEL_PATH=/ckpt/openPangu-Embedded-7B",
                     "DATA=/data/math_train.jsonl", "steps=3", "lr=2e-6", "num_generations=4", "engine=native")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    # the resolved config: the YAML's values with the overrides applied
    for line in ("model: /ckpt/openPangu-Embedded-7B", "dataset: /data/math_train.jsonl", "steps: 3",
                 "lr: 2.0e-06", "num_generations: 4", "loss: r2vpo", "max_new_tokens: 8192", "engine: native",
                 "deepspeed_config: configs/deepspeed/zero2.json"):
        assert f"    {line}\n" in out, line
    cmd = command_line(out)
    assert "torchrun" in cmd and "--nnodes=1" in cmd and "--nproc_per_node=1" in cmd and "--standalone" in cmd
    assert "-m r2vpo_ascend.cli train --config configs/pangu7b_r2vpo.yaml" in cmd
    assert "model=/ckpt/openPangu-Embedded-7B dataset=/data/math_train.jsonl steps=3 lr=2e-6" in cmd
    assert "engine=native" in cmd
    assert "backend=cpu" in out and "--dry-run: not starting" in out


def test_dry_run_multi_node_uses_the_cluster_variables():
    env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29555",
           "NPROC_PER_NODE": "8"}
    res = run_script("train_pangu7b.sh", "--dry-run", "MODEL_PATH=/ckpt/7b", env=env)
    assert res.returncode == 0, res.stderr
    cmd = command_line(res.stdout)
    for flag in ("--nnodes=2", "--node_rank=1", "--master_addr=10.1.2.3", "--master_port=29555",
                 "--nproc_per_node=8"):
        assert flag in cmd, flag
    assert "--standalone" not in cmd and "torchrun" in cmd


def test_dry_run_deepspeed_launcher_when_installed(tmp_path):
    fake = tmp_path / "site" / "deepspeed"  # an importable stand-in: the launcher only checks the import
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    env = {"PYTHONPATH": str(tmp_path / "site"), "NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1",
           "NPROC_PER_NODE": "4", "HOSTFILE": "/etc/r2vpo/hostfile"}
    res = run_script("train_pangu1b.sh", "--dry-run", "MODEL_PATH=/ckpt/1b", "DATA=/d.jsonl", env=env)
    assert res.returncode == 0, res.stderr
    cmd = command_line(res.stdout)
    assert "deepspeed --num_nodes=2 --num_gpus=4 --master_addr=10.0.0.1 --master_port=29500" in cmd
    assert "--hostfile=/etc/r2vpo/hostfile --no_ssh --node_rank=0" in cmd and "--no_local_rank" in cmd
    assert ("--module r2vpo_ascend.cli train --config configs/pangu1b_r2vpo.yaml model=/ckpt/1b dataset=/d.jsonl "
            "engine=deepspeed deepspeed_config=configs/deepspeed/zero2.json") in cmd
    assert "torchrun" not in cmd


def test_bad_arguments_and_bad_overrides_fail_clearly():
    res = run_script("train_pangu7b.sh", "--dry-run", "--nodes=2")
    assert res.returncode == 2 and "unexpected argument '--nodes=2'" in res.stderr
    res = run_script("train_pangu7b.sh", "--dry-run", "num_generation=4")
    assert res.returncode != 0 and "did you mean num_generations" in res.stderr


@pytest.mark.slow
def test_real_one_step_run_on_cpu(tmp_path):
    out = tmp_path / "run"
    res = run_script("train_pangu7b.sh", "model=tiny", "dataset=arithmetic", "reward=arithmetic", "steps=1",
                     "engine=native", "rollout_engine=hf", "dtype=float32", "prompts_per_step=2",
                     "num_generations=2", "max_new_tokens=4", "micro_batch_size=8", "eval_every=0",
                     "dataset_size=32", "max_prompt_length=64", "report_to=[jsonl]", "num_threads=1",
                     "progress_bar=off", f"output_dir={out}", env={"NPROC_PER_NODE": "1"}, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "torchrun" in command_line(res.stdout) and "[done] 1 steps, 4 rollouts" in res.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 1 and "r2vpo/lambda" in rows[-1]
    assert (out / "final" / "config.json").exists()
