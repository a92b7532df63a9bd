#!/usr/bin/env bash
# Container entrypoint: put CANN (Ascend toolkit, ATB) on the library path when the image has it,
# then run the command (default `r2vpo info`). Without CANN (the CUDA image) it only runs the command.
set -eo pipefail
for f in "${ASCEND_HOME:-/usr/local/Ascend}/ascend-toolkit/set_env.sh" "${ASCEND_HOME:-/usr/local/Ascend}/nnal/atb/set_env.sh"; do
    if [ -f "$f" ]; then
        # shellcheck disable=SC1090
        . "$f"
    fi
done
exec "$@"
