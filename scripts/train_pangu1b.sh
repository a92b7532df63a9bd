#!/usr/bin/env bash
# R²VPO on openPangu-Embedded-1B (configs/pangu1b_r2vpo.yaml), single node or a cluster.
#   bash scripts/train_pangu1b.sh --dry-run MODEL_PATH=/ckpt/openPangu-Embedded-1B DATA=/data/math_train.jsonl
# Options, environment variables and what happens: scripts/_launch.sh and docs/deployment.md.
set -euo pipefail
# shellcheck source=scripts/_launch.sh
. "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
r2vpo_launch configs/pangu1b_r2vpo.yaml "$@"
