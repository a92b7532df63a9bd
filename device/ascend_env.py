"""The environment variables an Ascend run needs, set in one place.

Pure environment logic (no torch, no torch_npu): it runs, and is tested, on any machine.
Precedence, highest first: a variable already in the environment (the user's shell or job
script) > `overrides` (the run's config) > the defaults below. Nothing the user exported is
ever changed. Call `apply_ascend_env` at the start of the entry point, before the first NPU
operation and before `init_distributed`: torch_npu reads these when the device, the caching
allocator and the HCCL communicators are first created.

Meaning and defaults of each variable: docs/ascend.md (with links to the CANN and
Ascend Extension for PyTorch references).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, MutableMapping

logger = logging.getLogger(__name__)

ALLOC_CONF = "PYTORCH_NPU_ALLOC_CONF"


def ascend_env_defaults(*, sleep_mode: bool, deterministic: bool, collective_timeout_s: float = 1800) -> dict[str, str]:
    """The variables this package sets for an Ascend run, and their values.

    sleep_mode: vllm-ascend's sleep mode (weights offloaded, KV cache freed while training) is
        used; its NPU memory pool does not work with the allocator's expandable segments, so
        they are switched off instead of on.
    deterministic: make HCCL/LCCL reductions deterministic (slower), for train/rollout
        consistency checks and bit-exact reruns. Also call torch.use_deterministic_algorithms(True).
    collective_timeout_s: the process-group timeout given to `init_distributed`; the HCCL
        timeouts are set below it so that HCCL reports a hung collective first.
    """
    if collective_timeout_s <= 0:
        raise ValueError(f"collective_timeout_s must be > 0, got {collective_timeout_s}")
    env = {
        # Socket set-up between devices before the first collective: CANN default 120 s (range
        # 120..7200) is short when ranks load a 7B model and a vLLM engine at different speeds.
        "HCCL_CONNECT_TIMEOUT": str(_clamp(int(collective_timeout_s / 3), 120, 600)),
        # How long a device waits for its peers inside a collective (CANN default 1836 s).
        "HCCL_EXEC_TIMEOUT": str(max(68, int(collective_timeout_s * 0.8))),
        # Per-communicator buffer in MB (CANN default 200); each communicator takes 2x this.
        "HCCL_BUFFSIZE": "200",
        # torch_npu watchdog tears the process down on a failed/timed-out collective.
        "HCCL_ASYNC_ERROR_HANDLING": "1",
        # Two-stage operator dispatch with load balancing (default 1); recommended level.
        "TASK_QUEUE_ENABLE": "2",
        # Coarse-grained binding of each NPU process's threads to the CPU cores near its NPU.
        "CPU_AFFINITY_CONF": "1",
        # RL batches change shape every step: expandable segments limit fragmentation.
        ALLOC_CONF: "expandable_segments:False" if sleep_mode else "expandable_segments:True",
    }
    if deterministic:
        env["HCCL_DETERMINISTIC"] = "true"  # AllReduce / ReduceScatter / Reduce
        env["LCCL_DETERMINISTIC"] = "1"  # LCCL AllReduce (used by vllm-ascend / ATB inside a node)
    return env


def apply_ascend_env(
    overrides: Mapping[str, object] | None = None,
    *,
    sleep_mode: bool = False,
    deterministic: bool = False,
    collective_timeout_s: float = 1800,
    environ: MutableMapping[str, str] | None = None,
) -> dict[str, str]:
    """Set the Ascend variables that are not already set; return {name: value} of those set.

    overrides: values from the run's config, taking precedence over the defaults (e.g.
        {"HCCL_IF_BASE_PORT": 50000, "ASCEND_RT_VISIBLE_DEVICES": "0,1"}); any variable name
        is accepted and passed through.
    environ: the mapping to update (default `os.environ`; tests pass a dict).
    """
    environ = os.environ if environ is None else environ
    wanted = ascend_env_defaults(
        sleep_mode=sleep_mode, deterministic=deterministic, collective_timeout_s=collective_timeout_s
    )
    for name, value in (overrides or {}).items():
        if value is None:
            wanted.pop(name, None)  # None in the config means "leave this variable alone"
            continue
        wanted[name] = value if isinstance(value, str) else str(value)

    if sleep_mode and _expandable_segments_on(wanted.get(ALLOC_CONF, "")) and ALLOC_CONF not in environ:
        raise ValueError(
            f"overrides set {ALLOC_CONF}={wanted[ALLOC_CONF]!r} together with sleep_mode=True: "
            "vllm-ascend sleep mode does not work with expandable_segments:True; drop it or disable sleep mode"
        )
    if sleep_mode and _expandable_segments_on(environ.get(ALLOC_CONF, "")):
        warnings.warn(
            f"{ALLOC_CONF}={environ[ALLOC_CONF]!r} is set in your environment, but vllm-ascend sleep mode "
            "does not work with expandable_segments:True (memory is not released on sleep); "
            f"export {ALLOC_CONF}=expandable_segments:False or disable sleep mode",
            RuntimeWarning,
            stacklevel=2,
        )

    applied: dict[str, str] = {}
    for name, value in wanted.items():
        if name in environ:
            if environ[name] != value:
                logger.info("keeping %s=%s from the environment (package default %s)", name, environ[name], value)
            continue
        environ[name] = value
        applied[name] = value
    if applied:
        logger.info("Ascend environment set: %s", " ".join(f"{k}={v}" for k, v in applied.items()))
    return applied


def _expandable_segments_on(alloc_conf: str) -> bool:
    """Whether an allocator config string like "expandable_segments:True,max_split_size_mb:64" enables them."""
    for option in alloc_conf.split(","):
        key, _, value = option.partition(":")
        if key.strip() == "expandable_segments" and value.strip().lower() == "true":
            return True
    return False


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))
