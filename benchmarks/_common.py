"""Helpers every benchmark shares: what machine it ran on, peak memory, timing, JSON output.

    from benchmarks._common import machine_info, run_isolated, PeakMemory, time_call, write_results

Benchmarks measure and record; they assert nothing. Each result file carries `machine_info()`
(CPU model and cores, RAM, torch/python versions, the device backend, git commit, date, load),
so numbers from different machines are never compared unknowingly.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch

import device
from device.flops import cpu_matrix_flags, cpu_model

ROOT = Path(__file__).resolve().parent.parent
_GIB = 1 << 30


def machine_info() -> dict[str, Any]:
    """Where and with what a benchmark ran (JSON-serialisable)."""
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_matrix_flags": cpu_matrix_flags(),  # amx_bf16 etc.: bf16 matrix units (mixed precision's gain)
        "cpu_logical_cores": os.cpu_count(),
        "cpu_usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "ram_total_gb": round(_meminfo_gb("MemTotal"), 2),
        "ram_available_gb": round(_meminfo_gb("MemAvailable"), 2),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }
    with contextlib.suppress(Exception):  # no usable backend (e.g. R2VPO_DEVICE forced): still record the rest
        backend = device.current()
        info["backend"] = backend.describe()
        info["accelerator_versions"] = {k: v for k, v in device.hardware_versions().items() if v is not None}
    return info


def write_results(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` as indented JSON (creating folders); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def run_isolated(fn: Callable[..., Any], *args: Any, env: dict[str, str] | None = None) -> Any:
    """Run `fn(*args)` in a fresh spawned process and return its (picklable) result.

    A fresh process makes peak-memory numbers honest: nothing allocated by an earlier case is
    cached in the allocator. `env` is set in the child's environment before it starts (e.g.
    MALLOC_MMAP_THRESHOLD_, which glibc reads at start-up). `fn` must be importable (top level).
    """
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            return pool.apply(fn, args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# glibc returns allocations above this size to the OS on free (and stops raising the threshold
# dynamically), so resident memory falls back after each call and the peak is the real one.
HONEST_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


class PeakMemory:
    """Peak memory above a baseline, in bytes, for this process, from the device backend's
    `memory_stats()` (default: the CPU backend).

    CPU: resident set size (VmRSS; peak VmHWM, reset through /proc/self/clear_refs on Linux).
    Accelerator: the backend's allocated / max allocated device memory.
    """

    def __init__(self, backend: Any | None = None):
        self.backend = backend if backend is not None else device.get_backend("cpu")
        self.baseline = 0

    def reset(self) -> None:
        """Start a new measurement: the baseline is what is in use now."""
        self.backend.synchronize()
        self.backend.reset_peak_memory_stats()
        self.baseline = round(self.backend.memory_stats()["allocated_gb"] * _GIB)

    def peak_above_baseline(self) -> int:
        self.backend.synchronize()
        return round(self.backend.memory_stats()["max_allocated_gb"] * _GIB) - self.baseline


def time_call(fn: Callable[[], Any], *, sync: Callable[[], None] | None = None) -> tuple[float, float]:
    """(wall-clock seconds, process CPU seconds) of one call, waiting for queued device work.

    CPU seconds (all threads) are the steadier number on a shared machine: time spent waiting
    for a core taken by another process is not counted, while wall time is.
    """
    if sync is not None:
        sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _meminfo_gb(key: str) -> float:
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024 / _GIB
    return float("nan")


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, check=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    return None
