"""engine=deepspeed (ZeRO-1/2/3) on the CPU with gloo: config handling, gradients summed exactly
like the native engine, and real 2-process `torchrun` training runs that resume.

Skipped without DeepSpeed (`pip install 'r2vpo-ascend[deepspeed]'`). DeepSpeed compiles a
small communication op the first time (~30 s, cached afterwards).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("deepspeed") is None:  # importorskip without paying the import at collection
    pytest.skip("DeepSpeed not installed: pip install 'r2vpo-ascend[deepspeed]'", allow_module_level=True)

import _mp_helpers as helpers
from r2vpo_ascend.trainer.config import ConfigError, R2VPOConfig
from r2vpo_ascend.engines.deepspeed import DeepSpeedEngine, build_deepspeed_config
from r2vpo_ascend.trainer.loggers import MissingExtraError

ROOT = Path(__file__).resolve().parent.parent
ZERO2, ZERO3 = ROOT / "configs/deepspeed/zero2.json", ROOT / "configs/deepspeed/zero3.json"


# ---- config handling (one process, no DeepSpeed engine) --------------------------------------
def test_config_fields_our_engine_owns_are_filled_in():
    notes = []
    config = R2VPOConfig(engine="deepspeed", deepspeed_config=str(ZERO2), micro_batch_size=7, max_grad_norm=0.5)
    ds = build_deepspeed_config(config, torch.float32, announce=notes.append)
    assert ds["train_micro_batch_size_per_gpu"] == 7 and ds["gradient_accumulation_steps"] == 1
    assert ds["managed_gradient_accumulation"] is False and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False  # the run's dtype wins ...
    assert len(notes) == 1 and "bf16" in notes[0]                             # ... and says so
    assert ds["zero_optimization"] == json.loads(ZERO2.read_text())["zero_optimization"]  # ZeRO block kept
    bf16 = build_deepspeed_config(config, torch.bfloat16, announce=notes.append)
    assert bf16["bf16"]["enabled"] is True and len(notes) == 1


def test_config_errors_name_the_field_or_file(tmp_path):
    def build(path):
        return build_deepspeed_config(R2VPOConfig(engine="deepspeed", deepspeed_config=str(path)), torch.float32)
    with pytest.raises(ConfigError, match="deepspeed_config"):
        build_deepspeed_config(R2VPOConfig(engine="deepspeed"), torch.float32)
    with pytest.raises(ConfigError, match="cannot read"):
        build(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        build(tmp_path / "bad.json")
    (tmp_path / "opt.json").write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}}))
    with pytest.raises(ConfigError, match="remove the `optimizer` block"):
        build(tmp_path / "opt.json")
    (tmp_path / "z0.json").write_text(json.dumps({"zero_optimization": {"stage": 0}}))
    with pytest.raises(ConfigError, match="stage must be 1, 2 or 3"):
        build(tmp_path / "z0.json")


def test_unsupported_combinations_are_config_errors():
    model = torch.nn.Linear(2, 2)
    sft = R2VPOConfig(engine="deepspeed", deepspeed_config=str(ZERO2), sft_steps=3)
    with pytest.raises(ConfigError, match="sft_steps"):
        DeepSpeedEngine(model, sft, None, torch.float32)
    vllm = R2VPOConfig(engine="deepspeed", deepspeed_config=str(ZERO3), rollout_engine="vllm")
    with pytest.raises(ConfigError, match="ZeRO-3"):
        DeepSpeedEngine(model, vllm, None, torch.float32)


def test_missing_deepspeed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    config = R2VPOConfig(engine="deepspeed", deepspeed_config=str(ZERO2))
    with pytest.raises(MissingExtraError, match=r"pip install 'r2vpo-ascend\[deepspeed\]'"):
        DeepSpeedEngine(torch.nn.Linear(2, 2), config, None, torch.float32)


# ---- gradient semantics: ZeRO-1/2/3 == native, 2 processes ------------------------------------
@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_zero_stages_update_like_the_native_engine(tmp_path):
    """Same shares (uneven: padding micro-batches run), micro-batches of 2, updates_per_step=2,
    KL + entropy, clipping active. DeepSpeed must SUM over micro-batches and ranks: an average
    over ranks or a division by the accumulation count would change grad_norm (and, through
    clipping, the weights); keeping only the last micro-batch would change both."""
    import torch.multiprocessing as mp
    mp.spawn(helpers.deepspeed_worker, args=(helpers.free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        results = torch.load(tmp_path / f"ds{rank}.pt", weights_only=False)
        native = results["native"]
        for stage in (1, 2, 3):
            got = results[stage]
            for mine, ref in zip(got["metrics"], native["metrics"], strict=True):
                for key in ref:
                    assert mine[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), (stage, rank, key)
            worst = max((got["params"][k] - native["params"][k]).abs().max().item() for k in native["params"])
            assert worst < 2e-5, f"ZeRO-{stage}: weights differ from the native engine by {worst:.3g}"
        assert all(m["grad_norm"] > 0.05 for m in native["metrics"])  # clipping was active


# ---- real training runs under torchrun ------------------------------------------------------
RUN = ["engine=deepspeed", "model=tiny", "dataset=arithmetic", "dataset_size=64", "prompts_per_step=4",
       "num_generations=4", "max_new_tokens=4", "sft_steps=0", "lr=1e-3", "replay_ratio=0.5", "micro_batch_size=3",
       "save_every=1", "num_threads=1", "progress_bar=off", "reward=python:_mp_helpers:text_reward",
       "collective_timeout_s=120"]


def torchrun(out: Path, *overrides: str, timeout: float = 240):
    """A 2-process run of RUN + overrides in `out`, which must succeed."""
    res = helpers.torchrun([*RUN, f"output_dir={out}", *overrides], timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def _check_run(out: Path, steps: int) -> dict[int, dict]:
    rows = {s: r for s, r in helpers.metrics_by_step(out).items() if s > 0}
    assert sorted(rows) == list(range(1, steps + 1))
    assert [rows[s]["rollouts"] for s in rows] == [16 * s for s in rows]
    for row in rows.values():
        for key in ("loss/policy", "r2vpo/lambda", "r2vpo/ratio_var", "grad_norm", "reward/mean"):
            assert math.isfinite(row[key]), key
    assert any(row["reward/std"] > 0 for row in rows.values())  # real advantages, real gradients
    # DeepSpeed shards: one tag per kept checkpoint (keep_checkpoints=2), nothing left half-written.
    tags = sorted(p.name for p in (out / "checkpoints" / "deepspeed").iterdir() if p.is_dir())
    assert len(tags) == 2 and not any(t.endswith(".partial") for t in tags)
    # The final model, gathered on rank 0, loads into a fresh model of the same shape.
    from transformers import AutoModelForCausalLM
    from r2vpo_ascend.models.tiny import build_tiny_model
    from r2vpo_ascend.models.tokenizer import build_char_tokenizer
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    initial = build_tiny_model(build_char_tokenizer(), seed=0)
    shapes = {k: v.shape for k, v in initial.state_dict().items()}
    assert {k: v.shape for k, v in final.state_dict().items()} == shapes
    assert all(torch.isfinite(v).all() for v in final.state_dict().values())
    assert any(not torch.equal(v, initial.state_dict()[k]) for k, v in final.state_dict().items())  # trained
    return rows


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.timeout(500)
def test_zero2_run_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    torchrun(straight, f"deepspeed_config={ZERO2}", "steps=3", "updates_per_step=2")
    rows = _check_run(straight, 3)
    assert len({round(r["r2vpo/lambda"], 12) for r in rows.values()}) == 3  # the dual step ran every step

    stopped = tmp_path / "stopped"
    torchrun(stopped, f"deepspeed_config={ZERO2}", "steps=2", "updates_per_step=2")
    res = torchrun(stopped, f"deepspeed_config={ZERO2}", "steps=3", "updates_per_step=2")
    assert "[resume] from" in res.stdout and "at step 2" in res.stdout
    resumed = _check_run(stopped, 3)
    assert resumed[3] == rows[3]  # ZeRO shards, optimiser moments, schedule, RNG: the same step 3


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_zero3_run_generates_evaluates_and_resumes(tmp_path):
    """ZeRO-3 partitions the weights: generation (every rank, synced), evaluation, the KL
    reference, activation recomputation (which gathers the layer's weights again in the
    backward) and the final gathered model must all still work."""
    config = helpers.zero_configs(tmp_path)[3]  # persistence threshold 0: the tiny model is partitioned
    out = tmp_path / "run"
    common = [f"deepspeed_config={config}", "eval_every=2", "eval_size=8", "kl_coef=0.05",
              "gradient_checkpointing=true"]
    torchrun(out, *common, "steps=2")
    first = _check_run(out, 2)
    assert "eval/accuracy" in first[2] and all("kl/ref" in r for r in first.values())
    res = torchrun(out, *common, "steps=3")
    assert "[resume] from" in res.stdout and "at step 2" in res.stdout
    rows = _check_run(out, 3)
    assert {s: rows[s] for s in (1, 2)} == first  # the resumed run appended, it did not redo
