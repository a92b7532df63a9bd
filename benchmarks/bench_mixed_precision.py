"""`mixed_precision: bf16` against float32 on one model: speed, and what bf16 does to the ratio.

    python benchmarks/bench_mixed_precision.py --model smollm2-135m-instruct --threads 1
    python benchmarks/bench_mixed_precision.py --model tiny --repeats 2          # seconds, for a smoke run

In one process, on the prompts of benchmarks/_vs_trl_setup.py (the real model: the task of
configs/smollm2_math.yaml in its chat template), with P·G sampled responses of `--length`
tokens (EOS masked until then, as bench_vs_trl.py does):
- speed, float32 and bf16 alternating `--repeats` times (the same background load for both):
  HF generate of the P·G responses (`HFGenerateEngine`, `compute_dtype`), and one forward +
  backward of the training log-probs (`response_log_probs`, the trainer's path);
- precision: log-probs at the weights θ in both modes; one AdamW step (lr `--lr`, the loss
  −mean(A·log π) with A = ±1 per response, seeded) from θ to θ'; then
  d = log π(θ') − log π(θ) per token in each mode, and R²VPO's V̂ = mean((e^d − 1)²) of each:
  the ratio variance one such step makes, as float32 measures it and as bf16 measures it. Their
  difference is what bf16 rounding adds to the constraint R²VPO enforces (δ = 0.05 in
  configs/smollm2_math.yaml, 0.016 in R²VPO's 4-pass defaults).
Nothing is asserted. The CPU's bf16 units are recorded (`machine.cpu_matrix_flags`): without
AMX a bf16 GEMM is slower than a float32 one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._common import machine_info, median, write_results  # noqa: E402
from benchmarks._vs_trl_setup import MODELS, _model, _records, max_prompt_length  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "mixed_precision_cpu.json"
MODES = {"float32": None, "bf16": torch.bfloat16}


def measure(model_name: str, prompts: int, gens: int, length: int, repeats: int, lr: float, seed: int) -> dict:
    from r2vpo_ascend.evaluation.scoring import tokenize_prompts
    from r2vpo_ascend.rollout import HFGenerateEngine, SamplingConfig
    from r2vpo_ascend.trainer.batch import collate
    from r2vpo_ascend.trainer.logprobs import response_log_probs

    torch.manual_seed(seed)
    model, tokenizer = _model(seed, model_name)
    model.generation_config.min_new_tokens = length
    prompt_ids = tokenize_prompts(tokenizer, _records(seed, tokenizer, model_name)[:prompts], max_prompt_length(model_name))
    sampling = SamplingConfig(max_new_tokens=length, temperature=1.0)
    engines = {mode: HFGenerateEngine(model, tokenizer, compute_dtype=dtype) for mode, dtype in MODES.items()}
    groups = engines["float32"].generate(prompt_ids, sampling, n=gens)
    pairs = [(g.prompt_ids, g.response_ids) for group in groups for g in group]
    batch = collate([p for p, _ in pairs], [r for _, r in pairs], pad_id=tokenizer.pad_token_id)
    mask = batch.response_mask.bool()

    times: dict[str, dict[str, list[float]]] = {m: {"generate_s": [], "forward_backward_s": []} for m in MODES}
    for _ in range(repeats):
        for mode, dtype in MODES.items():
            start = time.perf_counter()
            engines[mode].generate(prompt_ids, sampling, n=gens)
            times[mode]["generate_s"].append(time.perf_counter() - start)
            start = time.perf_counter()
            logp, _ = response_log_probs(model, batch, compute_dtype=dtype)
            (logp * batch.response_mask).sum().backward()
            times[mode]["forward_backward_s"].append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)

    def log_probs_all() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {mode: response_log_probs(model, batch, compute_dtype=dtype)[0] for mode, dtype in MODES.items()}

    before = log_probs_all()
    advantages = (torch.randint(0, 2, (len(pairs), 1), generator=torch.Generator().manual_seed(seed)) * 2 - 1).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    logp, _ = response_log_probs(model, batch)
    loss = -(advantages * logp * batch.response_mask).sum() / batch.response_mask.sum()
    loss.backward()
    optimizer.step()
    after = log_probs_all()
    d = {mode: (after[mode] - before[mode])[mask].double() for mode in MODES}
    precision = {
        "tokens": int(mask.sum()),
        "logprob_bf16_minus_float32_at_theta": {
            "mean_abs": float((before["bf16"] - before["float32"])[mask].abs().mean()),
            "max_abs": float((before["bf16"] - before["float32"])[mask].abs().max())},
        "ratio_var_one_step": {mode: float(((d[mode].exp() - 1) ** 2).mean()) for mode in MODES},
        "log_ratio_bf16_minus_float32": {
            "rms": float((d["bf16"] - d["float32"]).pow(2).mean().sqrt()),
            "max_abs": float((d["bf16"] - d["float32"]).abs().max())},
    }
    speed = {mode: {k: median(v) for k, v in t.items()} for mode, t in times.items()}
    speed["bf16_speedup"] = {k: speed["float32"][k] / speed["bf16"][k] for k in ("generate_s", "forward_backward_s")}
    return {"speed_median": speed, "times": times, "precision": precision,
            "response_tokens_per_generate": int(mask.sum()), "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--length", type=int, default=64, help="new tokens per response (exactly)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating float32/bf16 timings")
    parser.add_argument("--lr", type=float, default=2e-6, help="the AdamW step of the precision check "
                                                                 "(configs/smollm2_math.yaml's lr)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    result = measure(args.model, args.prompts, args.generations, args.length, args.repeats, args.lr, args.seed)
    payload = {"benchmark": "mixed_precision bf16 vs float32", "command": " ".join([sys.executable, *sys.argv]),
               "machine": info, "args": vars(args), **result}
    s, p = result["speed_median"], result["precision"]
    for mode in MODES:
        print(f"{mode:8s} generate {s[mode]['generate_s']:.2f} s  forward+backward {s[mode]['forward_backward_s']:.2f} s")
    print(f"bf16 speed-up: generate {s['bf16_speedup']['generate_s']:.2f}x, "
          f"forward+backward {s['bf16_speedup']['forward_backward_s']:.2f}x (cpu flags {info['cpu_matrix_flags']})")
    print(f"one AdamW step: V̂ float32 {p['ratio_var_one_step']['float32']:.3g}, bf16 {p['ratio_var_one_step']['bf16']:.3g}; "
          f"log-ratio difference rms {p['log_ratio_bf16_minus_float32']['rms']:.3g}, "
          f"max {p['log_ratio_bf16_minus_float32']['max_abs']:.3g}; log-prob bf16-fp32 at θ mean "
          f"{p['logprob_bf16_minus_float32_at_theta']['mean_abs']:.3g}")
    print(f"wrote {write_results(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
