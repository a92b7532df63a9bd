#!/usr/bin/env bash
# The runs behind docs/real_model.md's measured tables: SmolLM2-135M-Instruct on
# configs/smollm2_math.yaml, one run per arm, then GSM8K (first 100 test problems) for the
# untrained model and each final model, then the report.
#
#   bash experiments/real_model_runs.sh train r2vpo ppo_clip   # two arms side by side, 1 thread each
#   bash experiments/real_model_runs.sh train r2vpo_4pass       # R²VPO's new defaults (4 passes, δ 0.016)
#   STEPS=30 bash experiments/real_model_runs.sh train r2vpo_nofmt   # r2vpo, correctness reward only
#   bash experiments/real_model_runs.sh gsm8k base r2vpo        # r2vpo eval --limit 100, n=1 and n=4
#   SEED=1 STEPS=30 bash experiments/real_model_runs.sh train r2vpo_nofmt   # -> r2vpo_nofmt_s1
#   python -m experiments.real_model_report --arms r2vpo ppo_clip r2vpo_4pass
#
# STEPS (default 40), OUT (default runs/real_model), SEED (default 0; another seed's run and its
# files get a _s<SEED> suffix) and EXTRA (more key=value overrides for `train`) override. A run killed or stopped resumes
# from its last checkpoint (save_every: 10) when the same command runs again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
. .venv/bin/activate
OUT="${OUT:-runs/real_model}"
STEPS="${STEPS:-40}"
SEED="${SEED:-0}"
EXTRA="${EXTRA:-}"
suffix=""
[ "$SEED" = 0 ] || suffix="_s$SEED"
mkdir -p "$OUT"

arm_overrides() {
    case "$1" in
        r2vpo)       echo "loss=r2vpo replay_ratio=0.5 ppo_epochs=1" ;;
        ppo_clip)    echo "loss=ppo_clip replay_ratio=0.5 ppo_epochs=1" ;;
        # R²VPO's defaults since the sample-efficiency study: 4 passes, replay 0.5, δ 0.016, η_λ 3.125
        r2vpo_4pass) echo "loss=r2vpo replay_ratio=0.5 ppo_epochs=4 ratio_var_target=0.016 dual_lr=3.125" ;;
        # the r2vpo arm without the 0.2 \boxed{} bonus, which the first two arms learned to game
        # (the shipped config has had format_reward_weight 0 since: r2vpo_nofmt is its r2vpo arm)
        r2vpo_nofmt) echo "loss=r2vpo replay_ratio=0.5 ppo_epochs=1 format_reward_weight=0" ;;
        *) echo "unknown arm $1 (r2vpo, ppo_clip, r2vpo_4pass, r2vpo_nofmt)" >&2; exit 2 ;;
    esac
}

what="${1:?train or gsm8k}"; shift
case "$what" in
    train)  # the arms side by side, one thread each; data_seed 0: every seed on the same problems

        pids=()
        for arm in "$@"; do
            # shellcheck disable=SC2046,SC2086  # the overrides are separate words
            /usr/bin/time -v r2vpo train --config configs/smollm2_math.yaml $(arm_overrides "$arm") \
                steps="$STEPS" seed="$SEED" data_seed=0 num_threads=1 $EXTRA output_dir="$OUT/$arm$suffix" \
                >> "$OUT/$arm$suffix.log" 2>&1 &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid"; done
        ;;
    gsm8k)  # one model after the other, one thread
        # NS (default "1 4"): which --n to run
        for arm in "$@"; do
            model="$OUT/$arm/final"
            [ "$arm" = base ] && model=smollm2-135m-instruct
            for n in ${NS:-1 4}; do
                OMP_NUM_THREADS=1 r2vpo eval --model "$model" --bench gsm8k --limit 100 --n "$n" \
                    --max-new-tokens 256 --out "$OUT/gsm8k_${arm}_n$n.json" >> "$OUT/gsm8k_$arm.log" 2>&1
            done
        done
        ;;
    *) echo "first argument: train or gsm8k" >&2; exit 2 ;;
esac
