#!/usr/bin/env bash
# R²VPO on openPangu-Embedded-7B (configs/pangu7b_r2vpo.yaml), single node or a cluster.
#   bash scripts/train_pangu7b.sh --dry-run MODEL_PATH=/ckpt/openPangu-Embedded-7B DATA=/data/math_train.jsonl
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash scripts/train_pangu7b.sh MODEL_PATH=... DATA=... steps=300
# Options, environment variables and what happens: scripts/_launch.sh and docs/deployment.md.
set -euo pipefail
# shellcheck source=scripts/_launch.sh
. "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
r2vpo_launch configs/pangu7b_r2vpo.yaml "$@"
