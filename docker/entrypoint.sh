#!/bin/sh
# The images' entrypoint. A model volume holding model.yaml (at $SEQSERVE_MODEL_DIR, /models by
# default) replaces the built-in demo unless SEQSERVE_MODEL names a spec already.
# `seqserve serve` reads SEQSERVE_MODEL itself; `seqserve torchserve`, `archive` and `bench`
# (which checks answers against the served weights) take --model only, so they get it as a
# flag (a --model later on the line still wins).
set -eu
model_dir="${SEQSERVE_MODEL_DIR:-/models}"
if [ -z "${SEQSERVE_MODEL:-}" ] && [ -f "$model_dir/model.yaml" ]; then
    SEQSERVE_MODEL="$model_dir/model.yaml"
    export SEQSERVE_MODEL
elif [ -z "${SEQSERVE_MODEL:-}" ]; then
    # compose passes an unset variable through as empty, which `seqserve serve` would read as
    # the path "."; unset means the demo.
    unset SEQSERVE_MODEL
fi
if [ -n "${SEQSERVE_MODEL:-}" ] && [ "$#" -ge 2 ] && [ "$1" = seqserve ]; then
    case "$2" in
        torchserve | archive | bench)
            cmd=$1
            sub=$2
            shift 2
            set -- "$cmd" "$sub" --model "$SEQSERVE_MODEL" "$@"
            ;;
    esac
fi
exec "$@"
