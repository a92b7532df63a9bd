"""Per-token log-probs, forward + backward: naive full logits vs device.kernels (chunked).

    python benchmarks/bench_logprobs.py                      # default: 2048 tokens x 1024 hidden, float32 (a few minutes)
    python benchmarks/bench_logprobs.py --full               # hidden {1024,2048,4096} x tokens {2048,4096,8192} (an hour+ on 2 cores)
    python benchmarks/bench_logprobs.py --cases 2048x4096,4096x1024 --dtype bfloat16 --repeats 3
    python benchmarks/bench_logprobs.py --cases 2048x4096 --interleave   # steadier time ratio on a shared machine

Each (case, implementation) runs in a fresh spawned process: inputs are built, peak memory is
reset, then `--warmup` untimed and `--repeats` timed calls of forward + backward (∂hidden,
∂weight). Reported: median wall time and process CPU time, and peak memory above the inputs —
CPU: resident set size (VmHWM); accelerators (`--device auto`): the device backend's max
allocated. "working" memory is that peak minus the gradients both implementations must return
(∂hidden + ∂weight), i.e. what the log-prob computation itself needs. `--interleave` instead
alternates the implementations in one process (same background load for both; no memory
numbers). Naive cases whose estimated peak exceeds --max-naive-gb are skipped (their logits
alone are tokens × vocab × 4 bytes: 5 GB at 8192 × 153,600). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._common import (  # noqa: E402
    HONEST_MALLOC_ENV,
    PeakMemory,
    machine_info,
    median,
    run_isolated,
    time_call,
    write_results,
)

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "logprobs_cpu.json"
FULL_HIDDEN = (1024, 2048, 4096)
FULL_TOKENS = (2048, 4096, 8192)
_GIB = 1 << 30


class _Workload:
    """One case's inputs (seeded) and one timed forward + backward of an implementation."""

    def __init__(self, tokens: int, hidden: int, vocab: int, dtype_name: str, chunk_size: int, device_name: str):
        self.backend = None
        if device_name != "cpu":
            import device

            self.backend = device.current()
        self.device = self.backend.device if self.backend is not None else torch.device("cpu")
        self.sync = self.backend.synchronize if self.backend is not None else None
        dtype = getattr(torch, dtype_name)
        gen = torch.Generator().manual_seed(0)
        self.h = (torch.randn(tokens, hidden, generator=gen) * 0.5).to(self.device, dtype).requires_grad_()
        self.w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(self.device, dtype).requires_grad_()
        self.labels = torch.randint(0, vocab, (tokens,), generator=gen).to(self.device)
        self.upstream = torch.randn(tokens, generator=gen).to(self.device)
        self.chunk_size = chunk_size
        self.meta = {"tokens": tokens, "hidden": hidden, "vocab": vocab, "dtype": dtype_name, "device": str(self.device)}

    def step(self, impl: str) -> tuple[float, float, float]:
        """(forward s, backward s, CPU s) of one call; gradients w.r.t. hidden and weight."""
        from device.kernels import token_log_probs

        kwargs = {"impl": "auto", "chunk_size": self.chunk_size} if impl == "chunked" else {"impl": "naive"}
        out: list[torch.Tensor] = []
        t_fwd, cpu_fwd = time_call(lambda: out.append(token_log_probs(self.h, self.w, self.labels, **kwargs)), sync=self.sync)
        t_bwd, cpu_bwd = time_call(lambda: torch.autograd.grad((out[0] * self.upstream).sum(), (self.h, self.w)), sync=self.sync)
        return t_fwd, t_bwd, cpu_fwd + cpu_bwd

    def summary(self, impl: str, steps: list[tuple[float, float, float]]) -> dict:
        times = {
            "forward": [s[0] for s in steps],
            "backward": [s[1] for s in steps],
            "total": [s[0] + s[1] for s in steps],
            "cpu_total": [s[2] for s in steps],
        }
        return {
            "impl": impl,
            **self.meta,
            "chunk_size": self.chunk_size if impl == "chunked" else None,
            "repeats": len(steps),
            "times_s": times,
            "median_s": {k: median(v) for k, v in times.items()},
            "min_s": {k: min(v) if v else float("nan") for k, v in times.items()},
        }


def run_case(impl: str, tokens: int, hidden: int, vocab: int, dtype_name: str, repeats: int, warmup: int, chunk_size: int, device_name: str) -> dict:
    """One implementation on one case, in this (fresh) process: times and peak memory."""
    work = _Workload(tokens, hidden, vocab, dtype_name, chunk_size, device_name)
    peak = PeakMemory(work.backend)
    peak.reset()
    for _ in range(warmup):
        work.step(impl)
    steps = [work.step(impl) for _ in range(repeats)]
    peak_bytes = peak.peak_above_baseline()
    grads_bytes = (work.h.numel() + work.w.numel()) * work.h.element_size()
    return {
        **work.summary(impl, steps),
        "mode": "isolated",
        "peak_gb": peak_bytes / _GIB,
        "working_gb": (peak_bytes - grads_bytes) / _GIB,
        "grads_gb": grads_bytes / _GIB,
    }


def run_interleaved(impls: list[str], tokens: int, hidden: int, vocab: int, dtype_name: str, repeats: int, warmup: int, chunk_size: int, device_name: str) -> list[dict]:
    """All implementations in one process, calls alternating (A B A B ...): on a shared machine
    both see the same background load, so their time ratio is steadier. No memory numbers."""
    work = _Workload(tokens, hidden, vocab, dtype_name, chunk_size, device_name)
    for _ in range(warmup):
        for impl in impls:
            work.step(impl)
    steps: dict[str, list] = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl in impls:
            steps[impl].append(work.step(impl))
    return [{**work.summary(impl, steps[impl]), "mode": "interleaved"} for impl in impls]


def naive_peak_estimate_gb(tokens: int, hidden: int, vocab: int, dtype: torch.dtype) -> float:
    """Inputs + gradients + 3 float32 [tokens, vocab] tensors alive at once (measured: ~2.8)."""
    size = torch.finfo(dtype).bits // 8
    return (2 * (tokens + vocab) * hidden * size + 3 * tokens * vocab * 4) / _GIB


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=_int_list, default=[1024], help="hidden sizes (comma-separated); default 1024")
    parser.add_argument("--tokens", type=_int_list, default=[2048], help="token counts (comma-separated); default 2048")
    parser.add_argument("--vocab", type=int, default=153_600, help="vocabulary size (openPangu: 153,600)")
    parser.add_argument("--dtype", type=_str_list, default=["float32"], help="float32 and/or bfloat16 (comma-separated)")
    parser.add_argument("--impls", type=_str_list, default=["naive", "chunked"], help="naive and/or chunked")
    parser.add_argument("--cases", type=_case_list, default=None, help="explicit TOKENSxHIDDEN list, e.g. 2048x1024,4096x2048 (overrides --tokens/--hidden)")
    parser.add_argument("--full", action="store_true", help=f"hidden {FULL_HIDDEN} x tokens {FULL_TOKENS} (an hour or more on a 2-core CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per case (after the warm-up); median reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--chunk-size", type=int, default=1024, help="rows per chunk for the chunked implementation")
    parser.add_argument("--interleave", action="store_true", help="time the implementations alternately in one process (steadier ratio on a shared machine; no memory numbers)")
    parser.add_argument("--device", choices=["cpu", "auto"], default="cpu", help="cpu, or the device layer's backend (auto)")
    parser.add_argument("--max-naive-gb", type=float, default=None, help="skip naive cases estimated above this (default: half the available RAM on CPU)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    args = parser.parse_args(argv)
    if set(args.impls) - {"naive", "chunked"}:
        parser.error(f"--impls takes naive and/or chunked, got {args.impls}")
    if not all(isinstance(getattr(torch, d, None), torch.dtype) and getattr(torch, d).is_floating_point for d in args.dtype):
        parser.error(f"--dtype takes torch floating dtypes such as float32,bfloat16, got {args.dtype}")
    if args.full:
        args.hidden, args.tokens = list(FULL_HIDDEN), list(FULL_TOKENS)
    cases = args.cases or [(t, h) for h in args.hidden for t in args.tokens]
    max_naive_gb = args.max_naive_gb
    info = machine_info()
    if max_naive_gb is None:
        max_naive_gb = info["ram_available_gb"] / 2 if args.device == "cpu" else float("inf")

    results, skipped = [], []
    print(f"{info['cpu_model']}, {info['cpu_usable_cores']} cores, torch {info['torch']}, vocab {args.vocab}", flush=True)
    for dtype_name in args.dtype:
        for tokens, hidden in cases:
            case_results = _run_case_pair(args, tokens, hidden, dtype_name, max_naive_gb, skipped)
            results.extend(case_results)
    payload = {"benchmark": "token_log_probs forward+backward", "machine": info, "args": vars(args), "results": results, "skipped": skipped}
    path = write_results(args.out, payload)
    print(_table(results))
    print(f"wrote {path}")
    return payload


def _run_case_pair(args, tokens: int, hidden: int, dtype_name: str, max_naive_gb: float, skipped: list) -> list[dict]:
    """Each implementation on one case (a fresh process each, or one shared with --interleave)."""
    impls = list(args.impls)
    estimate = naive_peak_estimate_gb(tokens, hidden, args.vocab, getattr(torch, dtype_name))
    if "naive" in impls and estimate > max_naive_gb:
        reason = f"estimated peak {estimate:.1f} GB > --max-naive-gb {max_naive_gb:.1f}"
        skipped.append({"impl": "naive", "tokens": tokens, "hidden": hidden, "dtype": dtype_name, "reason": reason})
        print(f"  skip naive {dtype_name} N={tokens} H={hidden}: {reason}", flush=True)
        impls.remove("naive")
    common = (tokens, hidden, args.vocab, dtype_name, args.repeats, args.warmup, args.chunk_size, args.device)
    if args.interleave:
        results = run_isolated(run_interleaved, impls, *common, env=HONEST_MALLOC_ENV)
    else:
        results = [run_isolated(run_case, impl, *common, env=HONEST_MALLOC_ENV) for impl in impls]
    case = {r["impl"]: r for r in results}
    for r in results:
        med = r["median_s"]
        memory = f"  peak {r['peak_gb']:6.2f} GB  working {r['working_gb']:6.2f} GB" if "peak_gb" in r else ""
        print(
            f"  {r['impl']:8s} {dtype_name} N={tokens:5d} H={hidden:5d}: {med['total']:7.2f} s (fwd {med['forward']:.2f}, "
            f"bwd {med['backward']:.2f}, CPU {med['cpu_total']:.1f} s){memory}",
            flush=True,
        )
    if "naive" in case and "chunked" in case:
        n, c = case["naive"], case["chunked"]
        c["vs_naive"] = {
            "time_ratio": c["median_s"]["total"] / n["median_s"]["total"],
            "best_time_ratio": c["min_s"]["total"] / n["min_s"]["total"],
            "cpu_time_ratio": c["median_s"]["cpu_total"] / n["median_s"]["cpu_total"],
        }
        if "peak_gb" in c:
            c["vs_naive"]["peak_ratio"] = c["peak_gb"] / n["peak_gb"]
            c["vs_naive"]["working_ratio"] = c["working_gb"] / n["working_gb"]
    return results


def _table(results: list[dict]) -> str:
    """Markdown table, one row per case; ratios are chunked / naive ("–" where naive was skipped)."""
    rows = [
        "| dtype | tokens | hidden | naive s | chunked s | time ratio (median / best) | CPU-time ratio "
        "| naive peak GB | chunked peak GB | peak ratio | naive working GB | chunked working GB | working ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_case: dict[tuple, dict] = {}
    for r in results:
        by_case.setdefault((r["dtype"], r["tokens"], r["hidden"]), {})[r["impl"]] = r
    for (dtype, tokens, hidden), case in by_case.items():
        naive, chunked = case.get("naive", {}), case.get("chunked", {})
        ratio = chunked.get("vs_naive", {})
        cells = [
            dtype,
            tokens,
            hidden,
            _fmt(naive.get("median_s", {}).get("total")),
            _fmt(chunked.get("median_s", {}).get("total")),
            _fmt(ratio.get("time_ratio"), "{:.2f}x") + " / " + _fmt(ratio.get("best_time_ratio"), "{:.2f}x"),
            _fmt(ratio.get("cpu_time_ratio"), "{:.2f}x"),
            _fmt(naive.get("peak_gb")),
            _fmt(chunked.get("peak_gb")),
            _fmt(ratio.get("peak_ratio"), "{:.3f}"),
            _fmt(naive.get("working_gb")),
            _fmt(chunked.get("working_gb")),
            _fmt(ratio.get("working_ratio"), "{:.3f}"),
        ]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "–" if value is None else pattern.format(value)


def _case_list(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in item.lower().split("x")) for item in text.split(",") if item.strip()]


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


if __name__ == "__main__":
    main()
