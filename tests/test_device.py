"""The device layer on a CPU machine: backend choice and errors, RNG and memory helpers,
torch.distributed set-up (single process and two gloo processes), Ascend runtime variables.

Lines that must name the hardware carry the `# hw-ok` pragma (tests/test_hardware_names.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pickle
import random
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import _mp_helpers as helpers
import device
from device import ascend_env
from device import backend as backend_module

ACCELERATORS = [name for name in device.BACKEND_NAMES if name != "cpu"]
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (device.DEVICE_ENV_VAR, *TORCHRUN_VARS):
        monkeypatch.delenv(name, raising=False)
    device.reset_current()
    yield
    device.reset_current()


# --- choosing the backend ----------------------------------------------------------------


def test_detection_on_this_machine_is_cpu_with_gloo():
    backend = device.current()
    assert backend.name == "cpu" and backend.device_type == "cpu" and backend.dist_backend == "gloo"
    assert backend.device == torch.device("cpu") and backend.default_dtype == torch.float32
    assert backend.visible_devices_env is None and not backend.is_accelerator and backend.device_count() == 1
    assert device.current() is backend  # chosen once, cached


def test_env_var_can_force_cpu_and_auto(monkeypatch):
    monkeypatch.setenv(device.DEVICE_ENV_VAR, " CPU ")
    assert device.current().name == "cpu"
    device.reset_current()
    monkeypatch.setenv(device.DEVICE_ENV_VAR, "auto")
    assert device.current().name == "cpu"


# The hint each error must give: what is missing and how to get it.
FORCED_HINTS = {
    "npu": ["R2VPO_DEVICE=npu", "torch_npu is not installed", "pip install 'r2vpo-ascend[npu]'", "set_env.sh"],  # hw-ok
    "cuda": ["R2VPO_DEVICE=cuda", "CPU-only build", "R2VPO_TORCH_SPEC"],  # hw-ok
}


@pytest.mark.parametrize("name", ACCELERATORS)
def test_forcing_a_missing_accelerator_raises_a_helpful_error(monkeypatch, name):
    monkeypatch.setenv(device.DEVICE_ENV_VAR, name)
    with pytest.raises(device.BackendUnavailableError) as error:
        device.current()
    assert isinstance(error.value, RuntimeError)
    for hint in FORCED_HINTS[name]:
        assert hint in str(error.value)
    with pytest.raises(device.BackendUnavailableError):
        device.get_backend(name)


def test_unknown_backend_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="not one of"):
        device.get_backend("tpu")
    monkeypatch.setenv(device.DEVICE_ENV_VAR, "gpu")
    with pytest.raises(ValueError, match="R2VPO_DEVICE='gpu'"):
        device.current()


def test_get_backend_validates_and_does_not_cache():
    assert device.get_backend("cpu").name == "cpu"
    assert backend_module._current is None


@pytest.fixture
def broken_ascend_extension(monkeypatch):
    """The extension is installed but its import fails, as without the Ascend toolkit."""
    extension = "torch_npu"  # hw-ok
    real_find_spec, real_import = importlib.util.find_spec, importlib.import_module

    def find_spec(name, *args, **kwargs):
        if name == extension:
            return importlib.machinery.ModuleSpec(extension, loader=None)
        return real_find_spec(name, *args, **kwargs)

    def import_module(name, *args, **kwargs):
        if name == extension:
            raise OSError("libascendcl.so: cannot open shared object file: No such file or directory")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib, "import_module", import_module)


def test_broken_extension_falls_back_to_cpu_with_a_warning(broken_ascend_extension):
    with pytest.warns(RuntimeWarning, match="libascendcl.so"):
        backend = device.current()
    assert backend.name == "cpu"


def test_broken_extension_gives_a_clear_error_when_forced(broken_ascend_extension, monkeypatch):
    monkeypatch.setenv(device.DEVICE_ENV_VAR, "npu")  # hw-ok
    with pytest.raises(device.BackendUnavailableError) as error:
        device.current()
    message = str(error.value)
    for hint in ("failed to import", "OSError: libascendcl.so", "set_env.sh", "TORCH_DEVICE_BACKEND_AUTOLOAD=0"):
        assert hint in message


def test_backend_is_picklable_for_spawned_workers():
    backend = device.current()
    assert pickle.loads(pickle.dumps(backend)) == backend


def test_hardware_versions_reports_without_importing():
    versions = device.hardware_versions()
    assert "cann" in versions and all(v is None or isinstance(v, str) for v in versions.values())


# --- RNG, memory -------------------------------------------------------------------------


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_manual_seed_seeds_python_numpy_and_torch():
    backend = device.current()
    backend.manual_seed(1234)
    first = _draws()
    backend.manual_seed(1234)
    assert _draws() == first


def test_rng_state_round_trip_reproduces_the_same_numbers():
    backend = device.current()
    backend.manual_seed(7)
    _draws()
    state = pickle.loads(pickle.dumps(backend.rng_state()))  # as written in a checkpoint
    expected = _draws()
    _draws()
    backend.set_rng_state(state)
    assert _draws() == expected


def test_device_rng_state_from_another_backend_is_skipped_with_a_warning():
    backend = device.current()
    state = backend.rng_state()
    state.update(backend="cuda", device=torch.zeros(16, dtype=torch.uint8))  # hw-ok
    with pytest.warns(RuntimeWarning, match="not restored"):
        backend.set_rng_state(state)


def test_memory_stats_report_process_memory_in_gib():
    backend = device.current()
    backend.reset_peak_memory_stats()
    stats = backend.memory_stats()
    assert set(stats) == {"allocated_gb", "reserved_gb", "max_allocated_gb"}
    assert 0 < stats["allocated_gb"] <= stats["max_allocated_gb"] + 1e-3
    assert stats["max_allocated_gb"] < backend.max_memory_gb()
    backend.synchronize()


# --- torch.distributed -------------------------------------------------------------------


def test_single_process_needs_no_process_group():
    info = device.init_distributed(device.current())
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (0, 1, 0, True)
    assert not dist.is_initialized()
    tensor = torch.tensor([1.0, 2.0])
    assert device.all_reduce_sum(tensor) is tensor and tensor.tolist() == [1.0, 2.0]
    device.barrier()
    device.destroy_distributed()
    assert device.dist_info() == info


def test_bad_torchrun_environment_is_reported(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="MASTER_ADDR and MASTER_PORT not set"):
        device.init_distributed(device.current())
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 and WORLD_SIZE=2"):
        device.init_distributed(device.current())
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one' must be an integer"):
        device.init_distributed(device.current())


def _two_rank_worker(rank: int, port: int, failure: str, timeout_s: float, out_dir: str) -> None:
    """Both ranks all-reduce once; then rank 1 fails (`exits` or `hangs`) and rank 0 tries again."""
    result_file = os.path.join(out_dir, "rank0.json")
    info = helpers.join_group(rank, 2, port, timeout_s=timeout_s)
    total = device.all_reduce_sum(torch.tensor([float(rank + 1)])).item()
    if rank == 1:
        if failure == "hangs":  # stay alive without joining the collective, until rank 0 is done
            deadline = time.monotonic() + 60
            while not os.path.exists(result_file) and time.monotonic() < deadline:
                time.sleep(0.1)
        os._exit(0)
    started = time.monotonic()
    try:
        device.all_reduce_sum(torch.ones(1))
        error = None
    except Exception as exc:  # gloo raises RuntimeError on timeout or a closed peer
        error = f"{type(exc).__name__}: {exc}"
    record = {"rank": info.rank, "world_size": info.world_size, "is_main": info.is_main, "sum": total,
              "seconds": time.monotonic() - started, "error": error}
    with open(result_file + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(result_file + ".tmp", result_file)
    os._exit(0)  # the group is broken; skip its teardown


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("failure", ["exits", "hangs"])
def test_two_gloo_processes_sum_and_fail_in_bounded_time_when_a_rank_dies(tmp_path, failure):
    timeout_s = 4.0
    mp.spawn(_two_rank_worker, args=(helpers.free_port(), failure, timeout_s, str(tmp_path)), nprocs=2, join=True)
    record = json.loads((tmp_path / "rank0.json").read_text())
    assert (record["rank"], record["world_size"], record["is_main"]) == (0, 2, True)
    assert record["sum"] == 3.0  # 1 + 2
    assert record["error"] is not None, "the collective with a dead peer should fail, not hang"
    assert record["seconds"] < timeout_s + 6


# --- Ascend runtime variables (pure environment logic) -----------------------------------

DETERMINISM_VARS = {"HCCL_DETERMINISTIC", "LCCL_DETERMINISTIC"}  # hw-ok


def test_ascend_defaults_are_strings_and_documented():
    env = ascend_env.ascend_env_defaults(sleep_mode=False, deterministic=False)
    assert env and all(isinstance(v, str) for v in env.values())
    text = (Path(__file__).resolve().parent.parent / "docs" / "ascend.md").read_text()
    for name in ascend_env.ascend_env_defaults(sleep_mode=False, deterministic=True):
        assert name in text, f"{name} is set by device/ascend_env.py but not documented in docs/ascend.md"


def test_apply_never_overrides_what_the_user_set():
    defaults = ascend_env.ascend_env_defaults(sleep_mode=False, deterministic=False)
    user = {name: "user-value" for name in list(defaults)[:3]}
    environ = dict(user)
    applied = ascend_env.apply_ascend_env({list(defaults)[0]: "from-config"}, environ=environ)
    assert all(environ[name] == "user-value" for name in user)
    assert set(applied) == set(defaults) - set(user)
    assert ascend_env.apply_ascend_env(environ=environ) == {}  # idempotent


def test_overrides_beat_defaults_and_pass_through_other_variables():
    environ: dict[str, str] = {}
    applied = ascend_env.apply_ascend_env(
        {"TASK_QUEUE_ENABLE": 1, "ASCEND_RT_VISIBLE_DEVICES": "0,1", "CPU_AFFINITY_CONF": None}, environ=environ
    )
    assert applied["TASK_QUEUE_ENABLE"] == "1" and applied["ASCEND_RT_VISIBLE_DEVICES"] == "0,1"
    assert "CPU_AFFINITY_CONF" not in environ  # None: leave alone


def test_sleep_mode_never_enables_expandable_segments():
    on = ascend_env.ascend_env_defaults(sleep_mode=False, deterministic=False)[ascend_env.ALLOC_CONF]
    off = ascend_env.ascend_env_defaults(sleep_mode=True, deterministic=False)[ascend_env.ALLOC_CONF]
    assert on == "expandable_segments:True" and off == "expandable_segments:False"
    environ = {ascend_env.ALLOC_CONF: "max_split_size_mb:64,expandable_segments:true"}
    with pytest.warns(RuntimeWarning, match="sleep mode"):
        applied = ascend_env.apply_ascend_env(sleep_mode=True, environ=environ)
    assert ascend_env.ALLOC_CONF not in applied  # warned, but the user's value stays
    with pytest.raises(ValueError, match="sleep_mode=True"):
        ascend_env.apply_ascend_env({ascend_env.ALLOC_CONF: "expandable_segments:True"}, sleep_mode=True, environ={})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ascend_env.apply_ascend_env(sleep_mode=True, environ={ascend_env.ALLOC_CONF: "expandable_segments:False"})


def test_deterministic_adds_the_collective_switches():
    plain = ascend_env.ascend_env_defaults(sleep_mode=False, deterministic=False)
    strict = ascend_env.ascend_env_defaults(sleep_mode=False, deterministic=True)
    assert set(strict) - set(plain) == DETERMINISM_VARS


def test_collective_timeouts_stay_below_the_process_group_timeout():
    for timeout_s in (300, 1800, 7200):
        env = ascend_env.ascend_env_defaults(sleep_mode=False, deterministic=False, collective_timeout_s=timeout_s)
        for name in ("HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT"):  # hw-ok
            assert int(env[name]) < timeout_s


def test_prepare_runtime_env_does_nothing_off_ascend(monkeypatch):
    monkeypatch.setenv(device.DEVICE_ENV_VAR, "cpu")
    assert device.prepare_runtime_env() == {}
