#!/usr/bin/env bash
# The GPU check on a leased device machine, from the repository root (issue 19):
#   bash benchmarks/gpu_check/device.sh [python -m benchmarks.gpu_check flags]
# It installs the staged wheels (.gpu-stage/wheels, made here by `make gpu-stage`) into a
# temporary folder, puts that folder and the source tree on PYTHONPATH (nothing is installed
# into the machine's Python: its own torch and JAX are used), and runs the check with --out
# $OUT (the device tool brings that folder back) or runs/gpu-check without it.
set -u
STAGE=${GPU_CHECK_STAGE:-.gpu-stage}
RESULTS=${OUT:-runs/gpu-check}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"
if ! ls "$STAGE"/wheels/*.whl >/dev/null 2>&1; then
    echo "no wheels in $STAGE/wheels: run 'make gpu-stage' where pip has a network, and name" \
         "$STAGE in the device tool's carry" >&2
    exit 3
fi
SITE=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$STAGE"/wheels/*.whl || { echo "installing the staged wheels failed" >&2; exit 3; }
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# Scratch (shards, checkpoints, stores) outside $OUT: only the results travel back.
exec "$PY" -m benchmarks.gpu_check --out "$RESULTS" --work "$(mktemp -d /tmp/gpu-check-work.XXXXXX)" \
    --data "$STAGE" "$@"
