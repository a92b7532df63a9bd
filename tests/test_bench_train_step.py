"""benchmarks/bench_train_step.py: its FLOP count agrees with torch's counter, and it runs end to end."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench_train_step as bench
from r2vpo_ascend.algos import compute_policy_loss
from r2vpo_ascend.trainer.batch import TokenBatch
from r2vpo_ascend.trainer.logprobs import response_log_probs

ARCH = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 300, "intermediate_size": 96}


def test_flop_formula_matches_torch_flop_counter():
    B, P, T = 2, 5, 11
    model = bench.build_model(ARCH, torch.float32, torch.device("cpu"), seed=0, attn="eager")
    ids = torch.randint(3, ARCH["vocab_size"], (B, P + T))
    batch = TokenBatch(ids, torch.ones_like(ids), torch.arange(P + T).expand(B, -1), ids[:, P:], torch.ones(B, T), P)
    with FlopCounterMode(display=False) as counter:
        logp, _ = response_log_probs(model, batch)
        loss = compute_policy_loss("r2vpo", logp, logp.detach() + 0.1, torch.randn(B), batch.response_mask, lam=1.0).loss
        loss.backward()
    layer_params = sum(p.numel() for p in model.model.layers.parameters())
    f = bench.count_flops(ARCH, layer_params, B, P, T)
    # Eager attention (whose matmuls the counter sees) computes the full S x S square (the formula counts the causal half), the
    # chunked head adds its recompute GEMM; norms' and biases' elementwise work is not counted.
    expected = f["model_flops"] + f["attention_flops"] + f["head_recompute_flops"]
    bias_params = sum(p.numel() for n, p in model.model.layers.named_parameters() if "bias" in n or "norm" in n)
    expected -= 6 * bias_params * B * (P + T)
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-6)


def test_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "step.json"
    result = bench.main(["--model", "tiny", "--device", "cpu", "--dtype", "float32", "--batch", "2",
                         "--prompt-len", "4", "--response-len", "8", "--steps", "2", "--warmup", "1",
                         "--peak-tflops", "1.0", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["tokens_per_step"] == 24 and len(saved["step_s_all"]) == 2
    assert saved["mfu"] == pytest.approx(saved["model_flops"] / saved["step_s_median"] / 1e12)
    assert result["hfu"] > result["mfu"] > 0  # the head's recompute is extra hardware work
