"""One R²VPO training step on a real architecture with random weights: tokens/s and MFU.

    python benchmarks/bench_train_step.py                                   # openPangu-Embedded-1B, bf16, device auto
    python benchmarks/bench_train_step.py --model openpangu-embedded-7b --layers 8 --batch 4
    python benchmarks/bench_train_step.py --model tiny --device cpu --dtype float32   # smoke run, seconds

The step is the trainer's update path, whole, through its `NativeEngine`: the decoder forward
over prompt + response (`engine.log_probs`: the chunked log-prob head on the response columns
only), the R²VPO loss (`compute_policy_loss("r2vpo")` with the trainer's LossReduction),
`engine.backward` and `engine.step` (grad-norm clipping, then the engine's AdamW: the fused
kernel on CPU, torch's default implementation on accelerators). Weights,
gradients and optimizer states are all in `--dtype` (pure bf16 on accelerators, as the
trainer's native engine runs them). Nothing is downloaded: the architecture comes from
`MODEL_PRESETS` (openPangu-Embedded-1B's MLP width is not published: `--intermediate-size`,
default 4 × hidden = 6144, recorded in the JSON as an assumption).

FLOPs (the usual MFU convention, counted per step, forward + backward = 3 × forward):
  decoder matmuls   6 · N_layers_params · B · S
  attention scores  6 · 2 · B · S² · n_q_heads · head_dim · L / 2    (causal: half the square)
  LM head           6 · B · T · V · H                                   (response columns only)
MFU = those FLOPs / step time / the device's datasheet peak (device.flops.peak_tflops, or
`--peak-tflops`). The chunked head recomputes its logits in the backward (a 4th head GEMM) and
`--grad-ckpt` recomputes the decoder forward: both are hardware FLOPs, reported as HFU, and
not counted in MFU. Benchmarks measure; they assert nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import machine_info, median, time_call, write_results  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
TINY = {"num_layers": 2, "hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 1024, "intermediate_size": 320}


def architecture(args) -> dict:
    """openPangu-Embedded config.json fields for `--model`, with the command line's overrides."""
    from r2vpo_ascend.models.presets import MODEL_PRESETS
    assumed = []
    if args.model == "tiny":
        arch = dict(TINY)
    else:
        p = MODEL_PRESETS[args.model]
        arch = {"num_layers": p.num_layers, "hidden_size": p.hidden_size, "num_attention_heads": p.num_attention_heads,
                "num_key_value_heads": p.num_key_value_heads, "vocab_size": p.vocab_size,
                "intermediate_size": p.intermediate_size}
        if p.intermediate_size is None and args.intermediate_size is None:
            arch["intermediate_size"] = 4 * p.hidden_size
            assumed.append(f"intermediate_size={4 * p.hidden_size} (4 x hidden; not published for {p.name})")
    if args.layers is not None:
        arch["num_layers"] = args.layers
    if args.intermediate_size is not None:
        arch["intermediate_size"] = args.intermediate_size
    return {"arch": arch, "assumed": assumed}


def build_model(arch: dict, dtype: torch.dtype, dev: torch.device, seed: int, attn: str = "sdpa"):
    from transformers import LlamaForCausalLM

    from r2vpo_ascend.models.pangu import llama_config_from_pangu
    config = llama_config_from_pangu({
        "architectures": ["PanguEmbeddedForCausalLM"], "model_type": "PanguEmbedded", "bias": True,
        "vocab_size": arch["vocab_size"], "hidden_size": arch["hidden_size"],
        "intermediate_size": arch["intermediate_size"], "num_hidden_layers": arch["num_layers"],
        "num_attention_heads": arch["num_attention_heads"], "num_key_value_heads": arch["num_key_value_heads"],
        "max_position_embeddings": 32768, "tie_word_embeddings": False, "use_cache": False,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    }, source="bench_train_step")
    config._attn_implementation = attn
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)          # initialise directly in the target dtype, on the device
    try:
        with torch.device(dev):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def count_flops(arch: dict, n_layer_params: int, batch: int, prompt: int, response: int) -> dict:
    """Model FLOPs of one training step (forward + backward), and the hardware extras."""
    S, H, V, L = prompt + response, arch["hidden_size"], arch["vocab_size"], arch["num_layers"]
    q_width = H  # n_q_heads * head_dim
    decoder = 6 * n_layer_params * batch * S
    attention = 6 * 2 * batch * S * S * q_width * L // 2
    head = 6 * batch * response * V * H
    return {"model_flops": decoder + attention + head, "decoder_matmul_flops": decoder,
            "attention_flops": attention, "lm_head_flops": head,
            "head_recompute_flops": 2 * batch * response * V * H,
            "decoder_recompute_flops": (decoder + attention) // 3}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="openpangu-embedded-1b",
                        choices=["openpangu-embedded-1b", "openpangu-embedded-7b", "tiny"])
    parser.add_argument("--layers", type=int, default=None, help="override the layer count (fit a big model on one device)")
    parser.add_argument("--intermediate-size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--response-len", type=int, default=1536)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in the decoder")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (default: device.flops table)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/train_step_<device>.json)")
    args = parser.parse_args(argv)

    import device
    from device.flops import device_name, peak_tflops

    from r2vpo_ascend.algos import LossReduction, compute_policy_loss
    from r2vpo_ascend.trainer.batch import TokenBatch
    from r2vpo_ascend.trainer.config import R2VPOConfig
    from r2vpo_ascend.engines import NativeEngine

    backend = device.get_backend("cpu") if args.device == "cpu" else device.current()
    dev, dtype = backend.device, DTYPES[args.dtype]
    spec = architecture(args)
    arch = spec["arch"]
    model = build_model(arch, dtype, dev, args.seed)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine = NativeEngine(model, R2VPOConfig(lr=1e-6, max_grad_norm=1.0), backend, dtype)  # train mode, AdamW
    n_params = sum(p.numel() for p in model.parameters())
    n_layer_params = sum(p.numel() for p in model.model.layers.parameters())

    B, P, T = args.batch, args.prompt_len, args.response_len
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, arch["vocab_size"], (B, P + T), generator=gen)
    batch = TokenBatch(input_ids=ids, attention_mask=torch.ones_like(ids),
                       position_ids=torch.arange(P + T).expand(B, -1).contiguous(),
                       response_ids=ids[:, P:].contiguous(), response_mask=torch.ones(B, T), prompt_width=P).to(dev)
    advantages = torch.randn(B, generator=gen).to(dev)
    reduction = LossReduction(global_tokens=float(B * T), global_seqs=float(B))
    old_log_probs = None

    def step():
        nonlocal old_log_probs
        logp, _ = engine.log_probs(batch, temperature=1.0)
        if old_log_probs is None:
            old_log_probs = (logp.detach() + 0.05 * torch.randn_like(logp)).float()
        loss = compute_policy_loss("r2vpo", logp, old_log_probs, advantages, batch.response_mask,
                                  lam=1.0, reduction=reduction).loss
        engine.backward(loss)
        engine.step()

    for _ in range(args.warmup):
        step()
    backend.synchronize()
    if backend.is_accelerator:
        backend.reset_peak_memory_stats()
    times = [time_call(step, sync=backend.synchronize)[0] for _ in range(args.steps)]

    name = device_name(backend)
    peak = args.peak_tflops if args.peak_tflops is not None else peak_tflops(name, dtype)
    flops = count_flops(arch, n_layer_params, B, P, T)
    step_s = median(times)
    hardware = flops["model_flops"] + flops["head_recompute_flops"] + (flops["decoder_recompute_flops"] if args.grad_ckpt else 0)
    achieved = flops["model_flops"] / step_s / 1e12
    result = {
        "benchmark": "train_step", "machine": machine_info(), "device_name": name, "args": vars(args),
        "architecture": arch, "assumed": spec["assumed"], "params": n_params, "decoder_layer_params": n_layer_params,
        "tokens_per_step": B * (P + T), "response_tokens_per_step": B * T,
        "step_s_median": step_s, "step_s_all": times,
        "tokens_per_s": B * (P + T) / step_s, "response_tokens_per_s": B * T / step_s,
        **flops, "model_tflops_per_s": achieved, "peak_tflops": peak,
        "mfu": achieved / peak if peak else None,
        "hfu": hardware / step_s / 1e12 / peak if peak else None,
        "max_allocated_gb": backend.memory_stats().get("max_allocated_gb") if backend.is_accelerator else None,
    }
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"train_step_{backend.name}.json")
    write_results(out, result)
    mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a (pass --peak-tflops)"
    print("| model | device | dtype | B x (P+T) | params | step s | tokens/s | model TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.model} ({arch['num_layers']} layers) | {name} | {args.dtype} | {B} x ({P}+{T}) | "
          f"{n_params / 1e9:.3f} B | {step_s:.3f} | {result['tokens_per_s']:,.0f} | {achieved:.1f} | {mfu} |")
    if spec["assumed"]:
        print("assumed:", "; ".join(spec["assumed"]))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
