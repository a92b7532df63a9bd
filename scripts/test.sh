#!/usr/bin/env bash
# One command on a fresh machine: install (CPU torch first, then the package with its test
# extra), then run the whole test suite. Tests that need CUDA or an NPU skip with a reason.
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -k losses    # any pytest arguments
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/_install.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec python -m pytest tests "$@"
