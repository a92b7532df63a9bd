"""`r2vpo eval`'s driver: command-line arguments → `EvalSettings` → run, table, JSON.

It sits beside the CLI (it parses `--vllm-arg key=value` with the config's override parser)
so that evaluation/bench.py, below the trainer, never imports it.
"""

from __future__ import annotations

from r2vpo_ascend.evaluation.bench import EvalSettings, format_table, run_eval, write_results
from r2vpo_ascend.trainer.config import parse_overrides


def settings_from_args(args) -> EvalSettings:
    benches = [b.strip() for b in args.bench.split(",") if b.strip()]
    return EvalSettings(model=args.model, benches=benches, n=args.n, limit=args.limit,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        max_prompt_length=args.max_prompt_length, engine=args.engine, dtype=args.dtype,
                        seed=args.seed, batch_size=args.batch_size, tokenizer=args.tokenizer,
                        trust_remote_code=args.trust_remote_code, prompt_template=args.template,
                        system_prompt=args.system_prompt, verify_timeout_s=args.verify_timeout, out=args.out,
                        vllm_kwargs=parse_overrides(getattr(args, "vllm_arg", None) or []))


def main_from_args(args) -> int:
    """`r2vpo eval`: run, print the table, write the JSON."""
    settings = settings_from_args(args)
    results = run_eval(settings)
    print(format_table(results), flush=True)
    if settings.out:
        print(f"[eval] results written to {write_results(results, settings.out)}", flush=True)
    return 0
