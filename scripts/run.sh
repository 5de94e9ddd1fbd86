#!/usr/bin/env bash
# The main job (README): bring the machine to a working state, then run the benchmark suite,
# each benchmark on its defaults: pack, mpi, gather, io (about 8-10 minutes on 2 cores).
# With arguments, runs just `hauler-bench ARGS...` instead (e.g. `bash scripts/run.sh pack --json`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
if [ "$#" -gt 0 ]; then
  exec "$ROOT/.venv/bin/hauler-bench" "$@"
fi
rc=0
for bench in pack mpi gather io; do
  echo
  echo "==== hauler-bench $bench"
  "$ROOT/.venv/bin/hauler-bench" "$bench" || rc=$?
done
exit "$rc"
