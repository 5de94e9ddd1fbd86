#!/usr/bin/env bash
# The main job (README): bring the machine to a working state, then run every benchmark (pack, mpi,
# gather, io, kv) as `hauler-bench all`, which writes each one's JSON, CSV, a PASS/MISS summary of
# the targets and plots into bench-results/<date-time>/ (about 10-15 minutes on 2 cores).
# With arguments, runs just `hauler-bench ARGS...` instead (e.g. `bash scripts/run.sh pack --json`).
# setup.sh keeps stamps of what it installed and built: when nothing changed it runs no package
# manager and no build, so the benchmarks start within seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
if [ "$#" -gt 0 ]; then
  exec "$ROOT/.venv/bin/hauler-bench" "$@"
fi
OUT="$ROOT/bench-results/$(date +%Y%m%d-%H%M%S)"
rc=0
"$ROOT/.venv/bin/hauler-bench" all --out "$OUT" || rc=$?
echo
echo "run.sh: results (JSON, CSV, summary.txt, plots) in $OUT"
exit "$rc"
