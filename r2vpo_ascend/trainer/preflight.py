"""Checks run when a trainer is built, before any model loads: whatever a config names must
exist (a loss in the registry — looked up here, not in `R2VPOConfig`, since users may
register losses after building the config —, an importable `python:` reward, model weights
that are all there). Each failure is one line naming the field (`r2vpo train` exits 2)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from r2vpo_ascend.algos import POLICY_LOSSES
from r2vpo_ascend.algos.errors import ConfigError, ModelLoadError
from r2vpo_ascend.rewards.registry import check_reward_spec
from r2vpo_ascend.trainer.config import R2VPOConfig

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json", "*.bin.index.json")


def preflight(config: R2VPOConfig, *, model=None, reward_fn=None) -> None:
    """Raise ConfigError / ModelLoadError / RewardError for what the config names but cannot be had."""
    if config.loss not in POLICY_LOSSES:
        raise ConfigError(f"config field `loss`: unknown policy loss {config.loss!r}; registered: "
                          f"{', '.join(sorted(POLICY_LOSSES))} (add one with `register_policy_loss`)")
    if reward_fn is None:
        check_reward_spec(config.reward)
    if model is None or isinstance(model, (str, Path)):
        check_model_dir(str(model or config.model))


def check_model_dir(spec: str) -> None:
    """A checkpoint directory must hold weights, and every safetensors file must be whole
    (its header's tensors end exactly at the end of the file: a truncated download fails)."""
    path = Path(spec).expanduser()
    if not (path.is_dir() and (path / "config.json").exists()):
        return  # `tiny`, presets and missing paths are reported by the model loader itself
    weights = [p for pattern in WEIGHT_PATTERNS for p in path.glob(pattern)]
    if not weights:
        raise ModelLoadError(f"config field `model`: {path} has a config.json but no weights "
                             "(*.safetensors or *.bin); is the download complete?")
    for index in path.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ModelLoadError(f"config field `model`: {index} is not a valid weight index: {e}") from None
        missing = sorted(s for s in shards if not (path / s).exists())
        if missing:
            raise ModelLoadError(f"config field `model`: {index.name} names missing shards {missing[:3]}"
                                 f"{' ...' if len(missing) > 3 else ''}; is the download complete?")
    for file in path.glob("*.safetensors"):
        check_safetensors(file)


def check_safetensors(file: Path) -> None:
    """Header-only integrity check: 8-byte little-endian header length, JSON header, and the
    last tensor's end offset equal to the data size."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"config field `model`: {file} is not a readable safetensors file ({e}); "
                             "re-download it") from None
    if 8 + header_len + end != size:
        raise ModelLoadError(f"config field `model`: {file} is truncated or corrupt ({size} bytes, its header "
                             f"describes {8 + header_len + end}); re-download it")
