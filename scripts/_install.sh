#!/usr/bin/env bash
# Shared set-up for scripts/quickstart.sh and scripts/test.sh: a virtual environment in
# .venv with the right PyTorch build installed FIRST, then this package and its extras.
#
#   CPU (default, CI):   torch==2.13.0 CPU build, pinned by constraints-cpu.txt so that no
#                        later install can pull a multi-GB CUDA build.
#   CUDA / NPU clusters: set R2VPO_TORCH_SPEC (e.g. "torch==2.13.0" from the CUDA index, or
#                        the torch version your torch-npu/CANN release pairs with; see
#                        docs/ascend.md) and R2VPO_EXTRAS (e.g. "cuda" or "npu").
#
# Idempotent: a stamp file records what was installed; a second run with the same
# setup.py and constraints does nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${R2VPO_VENV:-$ROOT/.venv}"
EXTRAS="${R2VPO_EXTRAS:-test}"
TORCH_SPEC="${R2VPO_TORCH_SPEC:-torch==2.13.0}"
CONSTRAINTS="${R2VPO_CONSTRAINTS:-$ROOT/constraints-cpu.txt}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[install] creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

stamp="$VENV/.r2vpo-install-stamp"
want="$(cat "$ROOT/setup.py" "$CONSTRAINTS" | sha256sum | cut -c1-16) $TORCH_SPEC [$EXTRAS]"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "[install] $TORCH_SPEC (first, so nothing else picks the torch build)"
python -m pip install -q "$TORCH_SPEC"
echo "[install] r2vpo-ascend[$EXTRAS] (editable) with constraints $(basename "$CONSTRAINTS")"
python -m pip install -q -c "$CONSTRAINTS" -e "$ROOT[$EXTRAS]"
python -c "import torch, transformers; print(f'[install] torch {torch.__version__}, transformers {transformers.__version__}')"
echo "$want" > "$stamp"
