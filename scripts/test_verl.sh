#!/usr/bin/env bash
# The verl plugin's tests (tests/test_integration_verl.py) against the real verl 0.9.1, in an
# environment of their own: verl pins transformers<5.11, the main environment has 5.19.
#   bash scripts/test_verl.sh            # creates/updates the environment, then runs the tests
#   bash scripts/test_verl.sh -k lambda  # any pytest arguments
# Environment: R2VPO_VERL_VENV (default .venv-verl beside .venv). Only what `import verl` and
# verl.trainer.ppo.core_algos need on a CPU is installed (not verl's Ray/vLLM/W&B stack): verl
# itself with --no-deps, then its import-time dependencies, all with torch pinned to the CPU
# 2.13.0 build installed first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${R2VPO_VERL_VENV:-$ROOT/.venv-verl}"
PY="${PYTHON:-python3}"
CONSTRAINTS="$ROOT/constraints-cpu.txt"
# verl's import-time needs on CPU; transformers inside verl's own pin.
VERL_DEPS=(packaging numpy "ray>=2.41" "tensordict>=0.8,<=0.10.0,!=0.9.0" omegaconf hydra-core
           "transformers>=5.5.3,<5.11,!=5.6.0" codetiming orjson pytest pytest-timeout safetensors pyyaml)

if [ ! -x "$VENV/bin/python" ]; then
    echo "[test_verl] creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.r2vpo-verl-stamp"
want="$(cat "$0" "$CONSTRAINTS" setup.py | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # torch first, pinned (the CPU build of constraints-cpu.txt), so nothing after changes it.
    python -m pip install -q --upgrade pip setuptools wheel
    python -m pip install -q -c "$CONSTRAINTS" torch
    pins="$VENV/.torch-pin.txt"
    python -c "import torch; print(f'torch=={torch.__version__}')" > "$pins"
    python -m pip install -q --no-deps "verl==0.9.1"
    python -m pip install -q -c "$pins" "${VERL_DEPS[@]}"
    # Our package without its dependencies (its transformers pin differs): the entry point in
    # the group verl.plugins is what makes `import verl` register the loss.
    python -m pip install -q -c "$pins" --no-deps --no-build-isolation -e .
    echo "$want" > "$stamp"
fi
python -c "import torch, transformers, verl; print(f'[test_verl] torch {torch.__version__}, transformers {transformers.__version__}, verl {verl.__version__}')"
exec python -m pytest tests/test_integration_verl.py -q -p no:cacheprovider "$@"
