"""Cost of the R²VPO loss vs the PPO-clip loss: forward + backward of `compute_policy_loss`.

    python benchmarks/bench_loss_cost.py                          # B x T in {64x1024, 128x2048, 64x4096, 256x1024, 256x4096}, fp32
    python benchmarks/bench_loss_cost.py --cases 128x2048 --repeats 30 --threads 2

Each case builds realistic inputs once (seeded): per-token log-probs `[B, T]` that require grad,
behaviour log-probs a little off them (|log ρ| ~ 0.05), group-normalised advantages `[B]`,
and responses of random length (T/4 .. T, right-padded). Then, in one process, the losses
run alternately (A B A B ..., the order rotated each repeat) so both see the same background
load: `compute_policy_loss(name, ...)` as the trainer calls it (with its `LossReduction` of
global token and sequence counts, λ = 1, the default config: token ratio, c = batch mean,
token-mean), including the metrics and their host sync, then `loss.backward()`.

Reported per case and loss: median wall time of forward, backward and their sum over
`--repeats` timed calls (after `--warmup`), median CPU time, and the R²VPO / PPO-clip ratio of
the medians (target ≤ 1.05). Writes JSON with the machine, versions and command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._common import machine_info, median, time_call, write_results  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "loss_cost_cpu.json"
DEFAULT_CASES = "64x1024,128x2048,64x4096,256x1024,256x4096"
LOSSES = ("ppo_clip", "r2vpo")


class _Inputs:
    """One case's tensors (seeded), shaped as the trainer hands them to the loss."""

    def __init__(self, batch: int, width: int, dtype: torch.dtype, seed: int):
        from r2vpo_ascend.algos import LossReduction

        gen = torch.Generator().manual_seed(seed)
        lengths = torch.randint(width // 4, width + 1, (batch,), generator=gen)
        self.mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).to(dtype)
        self.old_log_probs = -(torch.randn(batch, width, generator=gen, dtype=dtype).abs() * 2.0) * self.mask
        self.log_probs_init = self.old_log_probs + 0.05 * torch.randn(batch, width, generator=gen, dtype=dtype) * self.mask
        rewards = (torch.rand(batch, generator=gen) < 0.4).to(dtype).view(-1, 8 if batch % 8 == 0 else 1)
        self.advantages = ((rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + 1e-6)).view(-1)
        self.reduction = LossReduction(global_tokens=float(lengths.sum()), global_seqs=float(batch))
        self.meta = {"batch": batch, "width": width, "tokens": int(lengths.sum()), "dtype": str(dtype).removeprefix("torch.")}

    def step(self, name: str, config) -> tuple[float, float, float, float]:
        """(forward s, backward s, forward CPU s, backward CPU s) of one loss call."""
        from r2vpo_ascend.algos import compute_policy_loss

        log_probs = self.log_probs_init.clone().requires_grad_()
        out = []
        fwd = time_call(lambda: out.append(compute_policy_loss(name, log_probs, self.old_log_probs, self.advantages,
                                                                self.mask, config, lam=1.0, reduction=self.reduction)))
        bwd = time_call(lambda: out[0].loss.backward())
        return fwd[0], bwd[0], fwd[1], bwd[1]


def run_case(batch: int, width: int, dtype: torch.dtype, repeats: int, warmup: int, seed: int, losses) -> dict:
    from r2vpo_ascend.algos.losses import PolicyLossConfig

    inputs, config = _Inputs(batch, width, dtype, seed), PolicyLossConfig()
    for _ in range(warmup):
        for name in losses:
            inputs.step(name, config)
    steps: dict[str, list] = {name: [] for name in losses}
    for i in range(repeats):
        order = list(losses) if i % 2 == 0 else list(reversed(losses))  # alternate who goes first
        for name in order:
            steps[name].append(inputs.step(name, config))
    result = {"case": inputs.meta, "losses": {}}
    for name, s in steps.items():
        times = {"forward": [x[0] for x in s], "backward": [x[1] for x in s], "total": [x[0] + x[1] for x in s],
                 "cpu_total": [x[2] + x[3] for x in s]}
        result["losses"][name] = {"times_s": times, "median_s": {k: median(v) for k, v in times.items()},
                                  "min_s": {k: min(v) for k, v in times.items()}}
    if "r2vpo" in steps and "ppo_clip" in steps:
        r, p = result["losses"]["r2vpo"], result["losses"]["ppo_clip"]
        result["r2vpo_over_ppo_clip"] = {k: r["median_s"][k] / p["median_s"][k] for k in r["median_s"]}
        result["r2vpo_over_ppo_clip_best"] = r["min_s"]["total"] / p["min_s"]["total"]
        # paired: the ratio within each repeat (the two calls ran back to back), then its median
        r2vpo_total, clip_total = ([x[0] + x[1] for x in steps[n]] for n in ("r2vpo", "ppo_clip"))
        result["r2vpo_over_ppo_clip_paired"] = median([a / b for a, b in zip(r2vpo_total, clip_total)])
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=_case_list, default=_case_list(DEFAULT_CASES),
                        help=f"BATCHxWIDTH list (responses x padded tokens); default {DEFAULT_CASES}")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per loss (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--losses", default=",".join(LOSSES), help="comma-separated loss names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    losses = tuple(x.strip() for x in args.losses.split(",") if x.strip())
    info = machine_info()
    print(f"{info['cpu_model']}, {info['cpu_usable_cores']} usable cores, torch {info['torch']}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    for batch, width in args.cases:
        load_before = os.getloadavg()[0]
        result = run_case(batch, width, getattr(torch, args.dtype), args.repeats, args.warmup, args.seed, losses)
        result.update(load_1m_before=load_before, load_1m_after=os.getloadavg()[0])
        results.append(result)
        summary = "  ".join(f"{n} {r['median_s']['total'] * 1e3:.2f} ms (fwd {r['median_s']['forward'] * 1e3:.2f}, "
                            f"bwd {r['median_s']['backward'] * 1e3:.2f})" for n, r in result["losses"].items())
        ratio = result.get("r2vpo_over_ppo_clip", {}).get("total")
        print(f"  B={batch} T={width}: {summary}" + (f"  ratio {ratio:.3f}" if ratio else "") +
              f"  load {load_before:.2f}", flush=True)
    payload = {"benchmark": "policy loss forward+backward: r2vpo vs ppo_clip",
               "command": " ".join([sys.executable, *sys.argv]), "machine": info,
               "args": {**vars(args), "cases": [list(c) for c in args.cases]}, "results": results}
    path = write_results(args.out, payload)
    print(_table(results))
    print(f"wrote {path}")
    return payload


def _table(results: list[dict]) -> str:
    rows = ["| B × T | tokens | ppo_clip fwd+bwd ms | r2vpo fwd+bwd ms | ratio (medians) | ratio (paired median) "
            "| ratio fwd | ratio bwd | ratio CPU time |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, losses = r["case"], r["losses"]
        if "r2vpo" not in losses or "ppo_clip" not in losses:
            continue
        q = r["r2vpo_over_ppo_clip"]
        rows.append(f"| {c['batch']} × {c['width']} | {c['tokens']} | {losses['ppo_clip']['median_s']['total'] * 1e3:.2f} "
                    f"| {losses['r2vpo']['median_s']['total'] * 1e3:.2f} | {q['total']:.3f} "
                    f"| {r['r2vpo_over_ppo_clip_paired']:.3f} | {q['forward']:.3f} | {q['backward']:.3f} "
                    f"| {q['cpu_total']:.3f} |")
    return "\n".join(rows)


def _case_list(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in item.lower().split("x")) for item in text.split(",") if item.strip()]


if __name__ == "__main__":
    main()
