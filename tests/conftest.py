"""Shared pytest set-up."""


# --- markers (device layer) -------------------------------------------------------------
# Tests split by the hardware they need; CPU-only CI deselects nothing and the hardware tests
# skip themselves. Keep this hook minimal: other sections may add their own set-up below.
def pytest_configure(config):
    for marker in (
        "cuda: needs an NVIDIA GPU (skipped without one)",  # hw-ok
        "npu: needs an Ascend NPU with torch_npu (skipped without one)",  # hw-ok
        "slow: takes more than a few seconds",
        "multiproc: starts several processes (torch.distributed on gloo)",
    ):
        config.addinivalue_line("markers", marker)
