#!/usr/bin/env bash
# The GPU check (issue 16): build hauler for the device (sm_90), run the real-GPU tests, the GPU
# benchmarks and compute-sanitizer memcheck, and write gpu_check.json + gpu_check.txt into --out
# (default $OUT when set, else ./gpu-check). Without a GPU it says why, measures nothing, exits 0.
#   bash scripts/gpu_check.sh [--out DIR] [--budget SECONDS] [--dry-run] [--only STEPS] [--no-build] [--help]
# PYTHON picks the interpreter (default python3: on the GPU machine the one that holds torch).
# The logic is in scripts/gpu_check.py; this wrapper only adds an outer time limit.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || { echo "gpu_check.sh: $PY not found" >&2; exit 2; }
BUDGET=480
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --budget) BUDGET="${args[$((i + 1))]:-480}" ;;
    --budget=*) BUDGET="${args[$i]#--budget=}" ;;
  esac
done
# the driver keeps to its budget step by step; this is the backstop should it hang
case "$BUDGET" in ''|*[!0-9.]*) OUTER=600 ;; *) OUTER=$(( ${BUDGET%.*} + 60 )) ;; esac
PYTHONUNBUFFERED=1 exec timeout -k 10 "$OUTER" "$PY" "$ROOT/scripts/gpu_check.py" --python "$PY" "$@"
