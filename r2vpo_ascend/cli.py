"""The `r2vpo` command: `train`, `eval`, `plot`, `info`.

    r2vpo train --config configs/tiny_cpu.yaml lr=1e-4 steps=50
    r2vpo train --config configs/pangu7b_r2vpo.yaml --print-config model=/ckpt   # resolved YAML, no model
    r2vpo eval --model runs/tiny/final --bench gsm8k,math500 --n 4 --out results.json
    r2vpo plot runs/tiny
    r2vpo info
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import device


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a user causes (config, data, paths, rewards): printed as one line, no traceback."""
    from r2vpo_ascend.data import DataError
    from r2vpo_ascend.models.loading import ModelLoadError
    from r2vpo_ascend.rewards import RewardError
    from r2vpo_ascend.trainer.checkpoint import CheckpointError
    from r2vpo_ascend.trainer.config import ConfigError
    from r2vpo_ascend.trainer.loggers import MissingExtraError
    return (ConfigError, DataError, ModelLoadError, RewardError, CheckpointError, MissingExtraError,
            device.BackendUnavailableError, FileNotFoundError)


def cmd_train(args) -> int:
    from r2vpo_ascend.trainer.config import R2VPOConfig, parse_overrides
    if args.help_config:
        print(R2VPOConfig.describe())
        return 0
    if args.config:
        config = R2VPOConfig.from_yaml(args.config, args.overrides)
    else:
        config = R2VPOConfig.from_dict(parse_overrides(args.overrides), source="command line")
    # Hardware runtime variables, before the first device operation, from THIS run's settings
    # (vLLM's sleep mode needs a different device allocator setting on some hardware).
    device.prepare_runtime_env(sleep_mode=config.rollout_engine == "vllm" and config.vllm_sleep_mode,
                               collective_timeout_s=config.collective_timeout_s)
    if args.print_config:
        print(config.to_yaml(), end="", flush=True)
        return 0
    print(f"[config] {config.to_dict()}", flush=True)
    from r2vpo_ascend.api import R2VPOTrainer
    result = R2VPOTrainer(config=config).train()
    print(f"[done] {result.steps} steps, {result.rollouts} rollouts, outputs in {result.output_dir}")
    if result.first_eval and result.last_eval:
        a0, a1 = result.first_eval["eval/accuracy"], result.last_eval["eval/accuracy"]
        print(f"[summary] held-out accuracy {a0:.3f} (start of RL) -> {a1:.3f} (after {result.steps} steps, "
              f"{result.rollouts} rollouts)")
    if not args.no_plot:
        try:
            from r2vpo_ascend.plotting import plot_run
            print(f"[plot] {plot_run(result.output_dir)}")
        except ImportError as e:
            print(f"[plot] skipped: {e}")
    return 0


def cmd_eval(args) -> int:
    from r2vpo_ascend.eval_command import main_from_args
    return main_from_args(args)


def cmd_plot(args) -> int:
    from r2vpo_ascend.plotting import plot_run
    print(plot_run(args.run_dir, args.out))
    return 0


def cmd_info(args) -> int:
    backend = device.current()
    from r2vpo_ascend.evaluation.bench import package_versions
    versions = package_versions()
    from r2vpo_ascend.models.presets import MODEL_PRESETS
    info = {"backend": backend.name, "device": str(backend.device), "dist_backend": backend.dist_backend,
            "device_count": backend.device_count(), "default_dtype": str(backend.default_dtype),
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": {**versions, **device.hardware_versions()},
            "model_presets": sorted(MODEL_PRESETS)}
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r2vpo", description="R²VPO RL fine-tuning for LLMs (Ascend, NVIDIA GPUs, CPU)")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy; config from YAML and/or key=value overrides")
    train.add_argument("--config", help="YAML config file (see configs/)")
    train.add_argument("--help-config", action="store_true", help="list every config field with its help")
    train.add_argument("--no-plot", action="store_true", help="do not write training_curves.png at the end")
    train.add_argument("--print-config", action="store_true",
                       help="print the fully resolved config as YAML and exit (loads no model)")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lr=1e-5 steps=20")
    train.set_defaults(func=cmd_train)
    ev = sub.add_parser("eval", help="accuracy (avg@n) and pass@n on math benchmarks, with the training verifier")
    ev.add_argument("--model", required=True, help="checkpoint directory, `tiny` or `pangu-tiny`")
    ev.add_argument("--bench", default="gsm8k,math500,aime24,aime25",
                    help="comma-separated: gsm8k, math500, aime24, aime25, arithmetic, or data files "
                         "(default: %(default)s)")
    ev.add_argument("--n", type=int, default=1, help="samples per problem; 1 = greedy (default: %(default)s)")
    ev.add_argument("--limit", type=int, default=None, help="first K problems of each benchmark")
    ev.add_argument("--max-new-tokens", type=int, default=1024, help="response length cap (default: %(default)s)")
    ev.add_argument("--temperature", type=float, default=0.6,
                    help="sampling temperature when n > 1 (default: %(default)s)")
    ev.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling when n > 1 (default: %(default)s)")
    ev.add_argument("--max-prompt-length", type=int, default=4096, help="prompt tokens kept, from the right")
    ev.add_argument("--engine", choices=("auto", "vllm", "hf"), default="auto",
                    help="generation engine: vLLM when available (auto), or HF generate (default: %(default)s)")
    ev.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=64, help="prompts x n per HF generate call")
    ev.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    ev.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own code")
    ev.add_argument("--template", default=None, help="prompt template with {problem} (default: the training one)")
    ev.add_argument("--system-prompt", default=None)
    ev.add_argument("--verify-timeout", type=float, default=5.0, help="seconds per math verification")
    ev.add_argument("--vllm-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="extra VLLMEngine argument, repeatable (e.g. gpu_memory_utilization=0.8)")
    ev.add_argument("--out", default=None, help="write the results (with every completion) to this JSON file")
    ev.set_defaults(func=cmd_eval)
    plot = sub.add_parser("plot", help="plot reward, λ, ratio variance, ESS and length of a run")
    plot.add_argument("run_dir")
    plot.add_argument("--out", default=None)
    plot.set_defaults(func=cmd_plot)
    info = sub.add_parser("info", help="backend, devices and versions")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is not cmd_train:  # `train` sets them itself, from its config
        device.prepare_runtime_env()  # hardware runtime variables, before the first device operation
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"r2vpo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
