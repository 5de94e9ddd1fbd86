#!/usr/bin/env bash
# The main job (README): bring the machine to a working state, then run the benchmark suite
# (for now `hauler-bench pack` on its defaults). Extra arguments go to hauler-bench pack.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
exec "$ROOT/.venv/bin/hauler-bench" pack "$@"
