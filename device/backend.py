"""Which hardware backend this process runs on, and the handful of operations that differ per backend.

One backend is chosen once (`current()`), in the order npu > cuda > cpu unless `R2VPO_DEVICE`
says otherwise, and is then passed down to the code that needs it. Everything here that differs
between Ascend NPUs and NVIDIA GPUs goes through the matching torch device module (`torch.npu`
once torch_npu is imported, `torch.cuda`), which expose the same API; the CPU backend answers
the same questions from the operating system.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import random
import resource
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

BACKEND_NAMES = ("npu", "cuda", "cpu")
DEVICE_ENV_VAR = "R2VPO_DEVICE"
_GIB = float(1 << 30)

_NPU_INSTALL_HINT = (
    "pip install 'r2vpo-ascend[npu]' (torch-npu matching your torch version) and source the CANN "
    "set_env.sh (e.g. `source /usr/local/Ascend/ascend-toolkit/set_env.sh`); see docs/ascend.md"
)
_NPU_BROKEN_HINT = (
    "source the CANN set_env.sh so torch_npu finds the Ascend libraries; on a machine without the "
    "Ascend toolkit, uninstall torch-npu or export TORCH_DEVICE_BACKEND_AUTOLOAD=0 so that "
    "`import torch` does not try to load it (docs/ascend.md)"
)


class BackendUnavailableError(RuntimeError):
    """The requested backend (by `R2VPO_DEVICE` or by name) cannot be used on this machine."""


@dataclass(frozen=True)
class Backend:
    """One hardware backend: its names, its collective backend and its per-device helpers.

    The base class is the CPU behaviour; `AcceleratorBackend` overrides what a device changes.
    """

    name: str  # "npu" | "cuda" | "cpu"
    device_type: str  # torch device type
    dist_backend: str  # torch.distributed backend: "hccl" | "nccl" | "gloo"
    visible_devices_env: str | None  # the variable that selects visible devices, None on CPU
    default_dtype: torch.dtype  # training dtype: bf16 on accelerators, float32 on CPU

    @property
    def is_accelerator(self) -> bool:
        return False

    @property
    def local_rank(self) -> int:
        """This process's rank on its node, from `LOCAL_RANK` (torchrun), 0 when unset."""
        return _int_env("LOCAL_RANK", 0)

    @property
    def device(self) -> torch.device:
        """The torch.device for this process (`LOCAL_RANK` picks the accelerator index)."""
        return torch.device("cpu")

    def device_count(self) -> int:
        return 1

    def set_device(self, local_rank: int) -> None:
        if local_rank < 0:
            raise ValueError(f"local_rank must be >= 0, got {local_rank}")

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on CPU, where work is synchronous)."""

    def memory_stats(self) -> dict[str, float]:
        """Memory in GiB. On CPU: resident set size and its peak for this process."""
        rss, peak = _process_rss_bytes()
        return {"allocated_gb": rss / _GIB, "reserved_gb": rss / _GIB, "max_allocated_gb": peak / _GIB}

    def max_memory_gb(self) -> float:
        """Total memory this process can use, in GiB (RAM, capped by a cgroup limit if any)."""
        return _host_memory_bytes() / _GIB

    def reset_peak_memory_stats(self) -> None:
        # Linux resets the VmHWM peak when "5" is written to clear_refs; best effort elsewhere.
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def manual_seed(self, seed: int) -> None:
        """Seed python `random`, numpy (if installed), torch and the device generator."""
        random.seed(seed)
        np = _numpy()
        if np is not None:
            np.random.seed(seed % (1 << 32))
        torch.manual_seed(seed)

    def rng_state(self) -> dict[str, Any]:
        """All RNG states that affect a run, picklable (CPU tensors), for exact resume."""
        np = _numpy()
        return {
            "backend": self.name,
            "python": random.getstate(),
            "numpy": np.random.get_state() if np is not None else None,
            "torch": torch.get_rng_state(),
            "device": self._device_rng_state(),
        }

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what `rng_state()` returned. A device state from another backend is skipped."""
        random.setstate(state["python"])
        np = _numpy()
        if np is not None and state.get("numpy") is not None:
            np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state.get("device") is None:
            return
        if state.get("backend") != self.name:
            warnings.warn(
                f"RNG state was saved on backend {state.get('backend')!r}, restoring on {self.name!r}: "
                "the device generator is not restored, so sampling will not match the original run",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        self._set_device_rng_state(state["device"])

    def describe(self) -> str:
        return f"{self.name} ({self.device_count()} device(s), collectives: {self.dist_backend})"

    # Device-generator hooks; the CPU generator is torch's default one, saved above.
    def _device_rng_state(self) -> torch.Tensor | None:
        return None

    def _set_device_rng_state(self, state: torch.Tensor) -> None:
        pass


@dataclass(frozen=True)
class AcceleratorBackend(Backend):
    """A device reached through a torch module with the `torch.cuda` API (`torch.cuda`, `torch.npu`)."""

    @property
    def is_accelerator(self) -> bool:
        return True

    @property
    def _module(self):
        return getattr(torch, self.device_type)

    @property
    def device(self) -> torch.device:
        return torch.device(self.device_type, self.local_rank)

    def device_count(self) -> int:
        return int(self._module.device_count())

    def set_device(self, local_rank: int) -> None:
        count = self.device_count()
        if not 0 <= local_rank < count:
            visible = os.environ.get(self.visible_devices_env or "", "<unset>")
            raise BackendUnavailableError(
                f"LOCAL_RANK={local_rank} but only {count} {self.name} device(s) are visible "
                f"({self.visible_devices_env}={visible}): start at most {count} processes per node "
                "or make more devices visible"
            )
        self._module.set_device(local_rank)

    def synchronize(self) -> None:
        self._module.synchronize()

    def memory_stats(self) -> dict[str, float]:
        index = self.device.index
        return {
            "allocated_gb": self._module.memory_allocated(index) / _GIB,
            "reserved_gb": self._module.memory_reserved(index) / _GIB,
            "max_allocated_gb": self._module.max_memory_allocated(index) / _GIB,
        }

    def max_memory_gb(self) -> float:
        return self._module.get_device_properties(self.device.index).total_memory / _GIB

    def reset_peak_memory_stats(self) -> None:
        self._module.reset_peak_memory_stats(self.device.index)

    def manual_seed(self, seed: int) -> None:
        super().manual_seed(seed)
        self._module.manual_seed_all(seed)

    def _device_rng_state(self) -> torch.Tensor | None:
        return self._module.get_rng_state(self.device.index).cpu()

    def _set_device_rng_state(self, state: torch.Tensor) -> None:
        self._module.set_rng_state(state.cpu(), self.device.index)


_BACKENDS: dict[str, Backend] = {
    "npu": AcceleratorBackend("npu", "npu", "hccl", "ASCEND_RT_VISIBLE_DEVICES", torch.bfloat16),
    "cuda": AcceleratorBackend("cuda", "cuda", "nccl", "CUDA_VISIBLE_DEVICES", torch.bfloat16),
    "cpu": Backend("cpu", "cpu", "gloo", None, torch.float32),
}

_current: Backend | None = None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast on `device`'s type (cpu, cuda, npu) in `dtype`; nothing when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def current() -> Backend:
    """The backend of this process, chosen on first call and cached.

    `R2VPO_DEVICE=npu|cuda|cpu` forces one (raising `BackendUnavailableError` if it is not
    usable); otherwise the first available of npu, cuda, cpu.
    """
    global _current
    if _current is None:
        _current = _select_backend()
        logger.info("device backend: %s", _current.describe())
    return _current


def reset_current() -> None:
    """Forget the cached backend (tests, or after changing `R2VPO_DEVICE`)."""
    global _current
    _current = None


def get_backend(name: str) -> Backend:
    """The backend called `name`, after checking it is usable here (not cached)."""
    return _checked_backend(_normalise(name, source="backend name"), requested_by=f"backend {name!r} was requested")


def hardware_versions() -> dict[str, str | None]:
    """Versions of the accelerator software stack (None where absent), for run metadata.

    Reads package metadata only: nothing is imported, so it is safe with a broken torch_npu.
    """
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for dist in ("torch-npu", "vllm-ascend", "triton", "deepspeed", "vllm"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    versions["torch.version.cuda"] = torch.version.cuda
    versions["cann"] = _cann_version()
    return versions


def _cann_version() -> str | None:
    """The CANN toolkit version from its install record (ASCEND_TOOLKIT_HOME is set by set_env.sh)."""
    import glob

    home = os.environ.get("ASCEND_TOOLKIT_HOME", "/usr/local/Ascend/ascend-toolkit/latest")
    for record in sorted(glob.glob(os.path.join(home, "*-linux", "ascend_toolkit_install.info"))):
        with contextlib.suppress(OSError):
            with open(record) as f:
                for line in f:
                    if line.startswith("version="):
                        return line.split("=", 1)[1].strip()
    return None


def _select_backend() -> Backend:
    forced = os.environ.get(DEVICE_ENV_VAR, "").strip()
    if forced and forced.lower() != "auto":
        name = _normalise(forced, source=DEVICE_ENV_VAR)
        return _checked_backend(name, requested_by=f"{DEVICE_ENV_VAR}={name}")
    npu_ok, npu_reason = _probe_npu()
    if npu_ok:
        return _BACKENDS["npu"]
    if importlib.util.find_spec("torch_npu") is not None:
        # Installed but unusable: say so, rather than silently training on another device.
        warnings.warn(
            f"torch_npu is installed but not usable ({npu_reason}); falling back", RuntimeWarning, stacklevel=3
        )
    if _probe_cuda()[0]:
        return _BACKENDS["cuda"]
    return _BACKENDS["cpu"]


def _checked_backend(name: str, requested_by: str) -> Backend:
    probe = {"npu": _probe_npu, "cuda": _probe_cuda, "cpu": lambda: (True, "")}[name]
    ok, reason = probe()
    if not ok:
        raise BackendUnavailableError(f"{requested_by} but {reason}")
    return _BACKENDS[name]


def _normalise(name: str, source: str) -> str:
    lowered = name.strip().lower()
    if lowered not in BACKEND_NAMES:
        raise ValueError(f"{source}={name!r} is not one of {', '.join(BACKEND_NAMES)} (or 'auto' for {DEVICE_ENV_VAR})")
    return lowered


def _probe_npu() -> tuple[bool, str]:
    """(usable, reason-if-not). Never raises: a broken torch_npu must not break a CPU machine."""
    if importlib.util.find_spec("torch_npu") is None:
        return False, f"torch_npu is not installed: {_NPU_INSTALL_HINT}"
    try:
        importlib.import_module("torch_npu")
    except Exception as exc:  # a missing CANN library surfaces as OSError, RuntimeError, ImportError...
        return False, f"torch_npu failed to import ({type(exc).__name__}: {exc}): {_NPU_BROKEN_HINT}"
    npu = getattr(torch, "npu", None)
    try:
        available = npu is not None and npu.is_available() and npu.device_count() > 0
    except Exception as exc:
        return False, f"torch_npu could not query the devices ({type(exc).__name__}: {exc}); check `npu-smi info`"
    if not available:
        visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "<unset>")
        return False, f"torch_npu sees no NPU (ASCEND_RT_VISIBLE_DEVICES={visible}); check `npu-smi info`"
    return True, ""


def _probe_cuda() -> tuple[bool, str]:
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        if torch.version.cuda is None:
            return False, (
                f"this torch ({torch.__version__}) is a CPU-only build: install a CUDA build "
                "(scripts/_install.sh with R2VPO_TORCH_SPEC and the CUDA wheel index)"
            )
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        return False, f"no CUDA device is visible (CUDA_VISIBLE_DEVICES={visible}); check `nvidia-smi`"
    return True, ""


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from None


def _numpy():
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _process_rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in bytes."""
    try:
        fields = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0]) * 1024  # reported in kB
        return fields["VmRSS"], fields["VmHWM"]
    except (OSError, KeyError, ValueError):
        # ru_maxrss is in kB on Linux, bytes on macOS; without /proc, current RSS is not known.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak *= 1 if sys.platform == "darwin" else 1024
        return peak, peak


def _host_memory_bytes() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/memory.max") as f:  # cgroup v2 limit, "max" when unlimited
            limit = f.read().strip()
        if limit != "max":
            total = min(total, int(limit))
    return total
