"""The `r2vpo` command: `train`, `plot`, `info`.

    r2vpo train --config configs/tiny_cpu.yaml lr=1e-4 steps=50
    r2vpo plot runs/tiny
    r2vpo info
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata

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
    from r2vpo_ascend.api import R2VPOConfig, R2VPOTrainer
    from r2vpo_ascend.trainer.config import parse_overrides
    if args.help_config:
        print(R2VPOConfig.describe())
        return 0
    if args.config:
        config = R2VPOConfig.from_yaml(args.config, args.overrides)
    else:
        config = R2VPOConfig.from_dict(parse_overrides(args.overrides), source="command line")
    print(f"[config] {config.to_dict()}", flush=True)
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


def cmd_plot(args) -> int:
    from r2vpo_ascend.plotting import plot_run
    print(plot_run(args.run_dir, args.out))
    return 0


def cmd_info(args) -> int:
    backend = device.current()
    versions = {}
    for dist in ("torch", "transformers", "r2vpo-ascend", "math-verify", "deepspeed", "vllm"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    info = {"backend": backend.name, "device": str(backend.device), "dist_backend": backend.dist_backend,
            "device_count": backend.device_count(), "default_dtype": str(backend.default_dtype),
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": {**versions, **device.hardware_versions()}}
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r2vpo", description="R²VPO RL fine-tuning for LLMs (Ascend, NVIDIA GPUs, CPU)")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy; config from YAML and/or key=value overrides")
    train.add_argument("--config", help="YAML config file (see configs/)")
    train.add_argument("--help-config", action="store_true", help="list every config field with its help")
    train.add_argument("--no-plot", action="store_true", help="do not write training_curves.png at the end")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lr=1e-5 steps=20")
    train.set_defaults(func=cmd_train)
    plot = sub.add_parser("plot", help="plot reward, λ, ratio variance, ESS and length of a run")
    plot.add_argument("run_dir")
    plot.add_argument("--out", default=None)
    plot.set_defaults(func=cmd_plot)
    info = sub.add_parser("info", help="backend, devices and versions")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device.prepare_runtime_env()  # hardware runtime variables, before the first device operation
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"r2vpo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
