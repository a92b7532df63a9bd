"""`mixed_precision: bf16`: float32 weights, gradients and AdamW state; the decoder's forwards
(training, behaviour log-probs, HF generate) under torch.autocast in bf16; the LM head's
log-probs in float32."""

import json
from types import SimpleNamespace

import pytest
import torch

from r2vpo_ascend.algos.errors import ConfigError
from r2vpo_ascend.api import R2VPOConfig, R2VPOTrainer
from r2vpo_ascend.models.dtypes import resolve_dtype
from r2vpo_ascend.models.tiny import build_tiny_model
from r2vpo_ascend.models.tokenizer import build_char_tokenizer
from r2vpo_ascend.rollout import HFGenerateEngine, SamplingConfig
from r2vpo_ascend.trainer.batch import collate
from r2vpo_ascend.trainer.logprobs import response_log_probs
from test_ppo_epochs import _config as tiny_config


def _config(tmp_path, **kw):
    return tiny_config(tmp_path, **{"ppo_epochs": 2, **kw})


def _linear_output_dtypes(model):
    """Record the output dtype of every nn.Linear forward (the decoder's projections and the head)."""
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return seen, hooks


def _tiny():
    tokenizer = build_char_tokenizer()
    return build_tiny_model(tokenizer, seed=0), tokenizer


def _batch(tokenizer):
    prompts = [tokenizer.encode("3+5-2="), tokenizer.encode("7-1=")]
    responses = [tokenizer.encode("6"), tokenizer.encode("6")]
    return collate(prompts, responses, pad_id=tokenizer.pad_token_id)


@pytest.mark.parametrize("bad", [dict(dtype="bfloat16"), dict(dtype="float16"), dict(engine="deepspeed")])
def test_refused_with_half_weights_or_deepspeed(tmp_path, bad):
    with pytest.raises(ConfigError, match="mixed_precision"):
        _config(tmp_path, mixed_precision="bf16", **bad)


def test_auto_dtype_means_float32_weights_under_mixed_precision():
    accelerator = SimpleNamespace(default_dtype=torch.bfloat16)
    assert resolve_dtype("auto", accelerator) is torch.bfloat16
    assert resolve_dtype("auto", accelerator, mixed_precision="bf16") is torch.float32
    assert resolve_dtype("float32", accelerator, mixed_precision="bf16") is torch.float32


def test_log_probs_run_the_decoder_in_bf16_and_the_head_in_float32():
    model, tokenizer = _tiny()
    batch = _batch(tokenizer)
    exact, _ = response_log_probs(model, batch)
    seen, hooks = _linear_output_dtypes(model.get_decoder())
    mixed, _ = response_log_probs(model, batch, compute_dtype=torch.bfloat16)
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {torch.bfloat16}              # every decoder projection ran in bf16
    assert mixed.dtype is torch.float32                         # the head's log-probs did not
    mask = batch.response_mask.bool()
    assert not torch.equal(mixed[mask], exact[mask])            # bf16 rounding is visible ...
    torch.testing.assert_close(mixed[mask], exact[mask], atol=0.05, rtol=0.0)  # ... and small


def test_gradients_and_weights_stay_float32():
    model, tokenizer = _tiny()
    logp, _ = response_log_probs(model, _batch(tokenizer), compute_dtype=torch.bfloat16)
    logp.sum().backward()
    params = list(model.parameters())
    assert all(p.dtype is torch.float32 for p in params)
    assert all(p.grad is None or p.grad.dtype is torch.float32 for p in params)
    assert sum(p.grad.abs().sum() for p in params if p.grad is not None) > 0


def test_hf_generate_samples_under_autocast():
    model, tokenizer = _tiny()
    engine = HFGenerateEngine(model, tokenizer, compute_dtype=torch.bfloat16)
    seen, hooks = _linear_output_dtypes(model)
    groups = engine.generate([tokenizer.encode("3+5=")], SamplingConfig(max_new_tokens=3, temperature=1.0), n=2)
    for h in hooks:
        h.remove()
    assert len(groups[0]) == 2 and seen and set(seen) == {torch.bfloat16}


def test_a_run_trains_float32_weights_with_bf16_forwards(tmp_path):
    trainer = R2VPOTrainer(config=_config(tmp_path, mixed_precision="bf16"))
    assert trainer.engine.compute_dtype is torch.bfloat16
    assert trainer.rollout_engine.compute_dtype is torch.bfloat16
    before = {n: p.detach().clone() for n, p in trainer.engine.model.named_parameters()}
    trainer.train()
    model = trainer.engine.model
    assert all(p.dtype is torch.float32 for p in model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(s["exp_avg"].dtype is torch.float32 for s in trainer.engine.optimizer.state.values())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] > 0]
    assert len(rows) == 2 and all(r["r2vpo/ratio_var"] > 0 for r in rows)   # the second pass is off-policy
    assert all(torch.isfinite(torch.tensor(r["loss/policy"])) for r in rows)
