#!/usr/bin/env bash
# One command on a fresh machine: install (CPU torch first), then train the embedded default,
# a tiny Llama-architecture model on integer arithmetic: a short SFT warm start, then R²VPO.
# No downloads. Prints the held-out accuracy before/after RL and writes training_curves.png.
#   bash scripts/quickstart.sh                    # the default run (runs/quickstart)
#   bash scripts/quickstart.sh steps=20 loss=ppo_clip output_dir=runs/clip   # any override
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/_install.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec r2vpo train --config configs/tiny_cpu.yaml "$@"
