#!/usr/bin/env bash
# One command on a fresh machine: install (CPU torch first, then the package with its test
# extra), then run the whole test suite. Tests that need CUDA or an NPU skip with a reason.
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -k losses    # any pytest arguments
#   R2VPO_TEST_VERL=1 bash scripts/test.sh   # also the verl plugin's tests, in their own environment
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/_install.sh
# The verl plugin's tests need verl's own environment (scripts/test_verl.sh): building it from
# nothing took 6-7 min here, over the 3 min the default suite may spend on it, so they are opt-in.
if [ "${R2VPO_TEST_VERL:-0}" = "1" ]; then bash scripts/test_verl.sh; fi
# shellcheck disable=SC1091
. .venv/bin/activate
exec python -m pytest tests "$@"
