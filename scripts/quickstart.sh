#!/usr/bin/env bash
# One command on a fresh machine: install (CPU torch first), then train. By default the embedded
# default, a tiny Llama-architecture model on integer arithmetic: a short SFT warm start, then
# R²VPO. No downloads. Prints the held-out accuracy before/after RL and writes training_curves.png.
#   bash scripts/quickstart.sh                    # the default run (configs/tiny_cpu.yaml, runs/quickstart)
#   bash scripts/quickstart.sh steps=20 loss=ppo_clip output_dir=runs/clip   # any override
#   bash scripts/quickstart.sh --config configs/smollm2_math.yaml steps=10   # a real pretrained LLM
#                                                 # (SmolLM2-135M-Instruct, installed by _install.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
config=configs/tiny_cpu.yaml
if [ "${1:-}" = "--config" ]; then
    if [ $# -lt 2 ]; then echo "[quickstart] --config needs a YAML file" >&2; exit 2; fi
    config="$2"; shift 2
elif [[ "${1:-}" == --config=* ]]; then
    config="${1#--config=}"; shift
fi
if [ ! -f "$config" ]; then echo "[quickstart] config file $config not found" >&2; exit 2; fi
bash scripts/_install.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec r2vpo train --config "$config" "$@"
