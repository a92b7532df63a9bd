"""Device names and their peak dense matrix throughput, for MFU figures.

    from device.flops import device_name, peak_tflops
    name = device_name(backend)                  # "NVIDIA H100 80GB HBM3", "Ascend910B3", CPU model
    peak = peak_tflops(name, torch.bfloat16)     # 989.4, or None when we do not know the part

Peaks are the vendors' datasheet figures for dense bf16/fp16 tensor-core math (not the
"with sparsity" figures, which are twice as large). A part not in the table returns None: an
MFU is then only reported when the caller passes the peak itself (benchmarks: `--peak-tflops`).
Ascend parts are deliberately absent: the 910B variants (910B1–B4) differ in clocks and cube
count, and we did not have a datasheet figure per variant to check against; pass the number
from your own hardware documentation.
"""

from __future__ import annotations

import platform
from typing import Any

import torch

# (substrings that must all appear in the device name, TFLOP/s dense bf16/fp16), first match wins.
# Sources: NVIDIA H100 / H200 / A100 datasheets (dense = half the "with sparsity" figure).
_PEAK_BF16_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H100", "PCIe"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.4),          # SXM5 ("NVIDIA H100 80GB HBM3")
    (("H200", "NVL"), 835.0),
    (("H200",), 989.4),          # SXM ("NVIDIA H200")
    (("H800",), 989.4),
    (("A100",), 312.0),
    (("A800",), 312.0),
    (("L40S",), 362.0),
)


def device_name(backend: Any) -> str:
    """The accelerator's product name (device 0 of this process), or the CPU model."""
    if backend.is_accelerator:
        module = getattr(torch, backend.device_type)
        return str(module.get_device_name(backend.device.index or 0))
    return cpu_model()


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; `platform` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cpu_matrix_flags() -> list[str]:
    """The CPU's bf16/int8 matrix and vector extensions (amx_bf16, avx512_bf16, ...) from
    /proc/cpuinfo: whether bf16 GEMMs beat float32 ones on this CPU (empty elsewhere)."""
    wanted = ("amx_bf16", "amx_fp16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_fp16")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in present]
    except OSError:
        pass
    return []


def peak_tflops(name: str, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Datasheet peak dense TFLOP/s of the part called `name` for 16-bit math, or None if unknown.

    Only bf16/fp16 are tabulated: the MFU convention for mixed-precision training.
    """
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    upper = name.upper()
    for keys, tflops in _PEAK_BF16_TFLOPS:
        if all(k.upper() in upper for k in keys):
            return tflops
    return None
