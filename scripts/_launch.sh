#!/usr/bin/env bash
# Shared launcher for scripts/train_pangu7b.sh and scripts/train_pangu1b.sh (source it, then call
# r2vpo_launch CONFIG "$@"). Cluster-ready: single node by default, multi-node through the usual
# torchrun variables, Ascend NPU or NVIDIA GPU detected by the device layer.
#
#   bash scripts/train_pangu7b.sh [--dry-run] [MODEL_PATH=dir] [DATA=file] [key=value ...]
#
# Arguments
#   --dry-run        print the resolved config and the command, then stop
#   MODEL_PATH=dir   local checkpoint directory        (same as model=dir)
#   DATA=path        training prompts (.jsonl/.parquet) (same as dataset=path)
#   key=value        any R2VPOConfig override (`r2vpo train --help-config` lists them)
# Environment
#   NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500): multi-node; run the
#       same command on every node with its own NODE_RANK.
#   NPROC_PER_NODE   processes per node (default: the number of visible NPUs/GPUs; 1 on CPU)
#   CONFIG           another YAML file instead of the script's default
#   HOSTFILE         DeepSpeed hostfile ("host slots=N" lines), needed by the DeepSpeed launcher
#                    on more than one node (without it the job is launched with torchrun)
#   PYTHON           interpreter with r2vpo-ascend installed (default: .venv/bin/python, else python3)
#   R2VPO_DEVICE     npu | cuda | cpu to override the detection
set -euo pipefail

R2VPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_r2vpo_python() {
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"
    elif [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$R2VPO_ROOT/.venv/bin/python" ]; then
        echo "$R2VPO_ROOT/.venv/bin/python"
    else
        command -v python3 || command -v python
    fi
}

_r2vpo_source_cann() {
    # The CANN toolkit (and the ATB library torch_npu's fused ops use) must be on the library
    # path before torch_npu can be imported (or detected); each is sourced unless already set up.
    local f
    for f in "${ASCEND_HOME:-/usr/local/Ascend}/ascend-toolkit/set_env.sh" \
             "${ASCEND_HOME:-/usr/local/Ascend}/nnal/atb/set_env.sh"; do
        case "$f" in
            */ascend-toolkit/*) [ -n "${ASCEND_TOOLKIT_HOME:-}" ] && continue ;;
            */atb/*) [ -n "${ATB_HOME_PATH:-}" ] && continue ;;
        esac
        if [ -f "$f" ]; then
            set +u
            # shellcheck disable=SC1090
            . "$f"
            set -u
        fi
    done
}

r2vpo_launch() {
    local default_config="$1"
    shift
    local dry_run=0 config="${CONFIG:-$default_config}"
    local -a overrides=()
    local arg
    for arg in "$@"; do
        case "$arg" in
            --dry-run) dry_run=1 ;;
            -h|--help) sed -n '2,21p' "$R2VPO_ROOT/scripts/_launch.sh"; return 0 ;;
            MODEL_PATH=*) overrides+=("model=${arg#MODEL_PATH=}") ;;
            DATA=*) overrides+=("dataset=${arg#DATA=}") ;;
            -*) echo "error: unexpected argument '$arg' (the only option is --dry-run; settings are key=value)" >&2
                return 2 ;;
            *=*) overrides+=("$arg") ;;
            *) echo "error: unexpected argument '$arg' (expected --dry-run, MODEL_PATH=..., DATA=... or key=value)" >&2
               return 2 ;;
        esac
    done
    cd "$R2VPO_ROOT"
    local py
    py="$(_r2vpo_python)"
    _r2vpo_source_cann

    # A fresh clone has no environment yet: say how to make one instead of a Python traceback.
    if ! "$py" -c 'import torch, r2vpo_ascend' >/dev/null 2>&1; then
        echo "error: $py cannot import torch and r2vpo_ascend: set the environment up first with 'bash scripts/_install.sh' (creates .venv; on Ascend source CANN's set_env.sh first, docs/deployment.md), or set PYTHON= to an interpreter that has them" >&2
        return 2
    fi

    # --- hardware, through the device layer ---------------------------------------------------
    local hw backend count
    hw="$("$py" -c 'import device; b = device.current(); print(b.name, b.device_count())')"
    read -r backend count <<<"$hw"
    # The Ascend runtime variables (HCCL timeouts, task queue, allocator, ...) are set by each
    # rank's `r2vpo train` from the run's config (sleep mode changes the allocator setting).
    local nnodes="${NNODES:-1}" node_rank="${NODE_RANK:-0}"
    local master_addr="${MASTER_ADDR:-127.0.0.1}" master_port="${MASTER_PORT:-29500}"
    local nproc="${NPROC_PER_NODE:-}"
    if [ -z "$nproc" ]; then
        if [ "$backend" = "cpu" ] || [ "${count:-0}" -lt 1 ]; then nproc=1; else nproc="$count"; fi
    fi

    # --- the resolved config (no model is loaded) ----------------------------------------------
    local -a train_args=(train --config "$config" "${overrides[@]}")
    local resolved engine
    resolved="$("$py" -m r2vpo_ascend.cli "${train_args[@]}" --print-config)"
    engine="$(sed -n 's/^engine: *//p' <<<"$resolved")"
    if [ "$engine" = "deepspeed" ]; then
        # Spelled out on the command line so that the job's log says which engine and ZeRO config ran.
        train_args+=(engine=deepspeed "deepspeed_config=$(sed -n 's/^deepspeed_config: *//p' <<<"$resolved")")
    fi

    # --- the launch command ---------------------------------------------------------------------
    local -a cmd
    local note=""
    if [ "$engine" = "deepspeed" ] && "$py" -c 'import deepspeed' >/dev/null 2>&1 \
            && { [ "$nnodes" -eq 1 ] || [ -n "${HOSTFILE:-}" ]; }; then
        local ds
        ds="$(dirname "$py")/deepspeed"
        [ -x "$ds" ] || ds="deepspeed"
        cmd=("$ds" --num_nodes="$nnodes" --num_gpus="$nproc" --master_addr="$master_addr"
             --master_port="$master_port" --no_local_rank)
        if [ "$nnodes" -gt 1 ]; then
            cmd+=(--hostfile="$HOSTFILE" --no_ssh --node_rank="$node_rank")
        fi
        cmd+=(--module r2vpo_ascend.cli "${train_args[@]}")
    else
        if [ "$engine" = "deepspeed" ]; then
            note="engine=deepspeed: launching with torchrun (the DeepSpeed launcher needs deepspeed installed, and HOSTFILE on more than one node)"
        fi
        local tr
        tr="$(dirname "$py")/torchrun"
        [ -x "$tr" ] || tr="torchrun"
        cmd=("$tr" --nnodes="$nnodes" --nproc_per_node="$nproc")
        if [ "$nnodes" -eq 1 ] && [ -z "${MASTER_PORT:-}" ]; then
            cmd+=(--standalone)
        else
            cmd+=(--node_rank="$node_rank" --master_addr="$master_addr" --master_port="$master_port")
        fi
        cmd+=(-m r2vpo_ascend.cli "${train_args[@]}")
    fi

    echo "[launch] backend=$backend devices=$count nnodes=$nnodes node_rank=$node_rank nproc_per_node=$nproc"
    [ -n "$note" ] && echo "[launch] $note"
    echo "[launch] resolved config ($config + overrides):"
    sed 's/^/    /' <<<"$resolved"
    printf '[launch] command:'
    printf ' %q' "${cmd[@]}"
    printf '\n'
    if [ "$dry_run" -eq 1 ]; then
        echo "[launch] --dry-run: not starting"
        return 0
    fi
    exec "${cmd[@]}"
}
