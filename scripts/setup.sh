#!/usr/bin/env bash
# Bring a Debian machine to a working state for hauler; safe to re-run (fast when nothing changed).
#   1. system packages (MPI, liburing, ...): apt-get when root, else print the exact command and stop
#   2. a virtualenv at .venv in the repo root (reused)
#   3. torch 2.13.0 (CPU), mpi4py built against Open MPI, hauler itself: pip install -e '.[test,torch,plot]'
# Quiet by default; -v / --verbose shows every command's output. Errors always show.
# PYTHON picks the interpreter for a new venv (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VERBOSE=0
for arg in "$@"; do
  case "$arg" in
    -v|--verbose) VERBOSE=1 ;;
    -h|--help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

LOG_DIR="$ROOT/build/setup-logs"
mkdir -p "$LOG_DIR"
say() { echo "setup.sh: $*"; }

# run NAME CMD...: quiet unless -v; on failure show the log's tail and stop.
run() {
  local name=$1; shift
  local log="$LOG_DIR/$name.log" rc=0
  if [ "$VERBOSE" = 1 ]; then
    echo "+ $*"
    set +e; "$@" 2>&1 | tee "$log"; rc=${PIPESTATUS[0]}; set -e
  else
    set +e; "$@" >"$log" 2>&1; rc=$?; set -e
  fi
  if [ "$rc" != 0 ]; then
    {
      echo "setup.sh: FAILED ($name, exit $rc): $*"
      echo "---- last lines of $log ----"
      tail -n 80 "$log"
      echo "---- end; full log: $log ----"
    } >&2
    exit "$rc"
  fi
}

# ---- 0. a stamp of what steps 1-3b installed: when it still holds, they are skipped -----------
# (no dpkg, apt-get or pip: a re-run starts the main job in seconds); step 3c has its own stamp.
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || { echo "setup.sh: $PY not found; install Python >= 3.9" >&2; exit 1; }
DEPS_STAMP_FILE="$ROOT/.venv/.hauler-deps-stamp"
deps_stamp() {
  { cat "${BASH_SOURCE[0]}"; "$PY" -V 2>&1; uname -m; id -u; } | sha256sum | cut -d' ' -f1
}
DEPS_STAMP="$(deps_stamp)"
DEPS_OK=0
if [ -x "$ROOT/.venv/bin/python" ] && [ "$(cat "$DEPS_STAMP_FILE" 2>/dev/null || true)" = "$DEPS_STAMP" ]; then
  DEPS_OK=1
fi

# ---- 1. system packages ---------------------------------------------------------------------
if [ "$DEPS_OK" != 1 ]; then
PKGS=(openmpi-bin libopenmpi-dev mpich libmpich-dev liburing-dev libaio-dev fio build-essential)
# The interpreter's own needs (Debian's python3 lacks venv / headers unless these are installed).
"$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || PKGS+=(python3-venv)
"$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || PKGS+=(python3-dev)

if command -v dpkg >/dev/null 2>&1; then
  MISSING=()
  for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || MISSING+=("$p"); done
  if [ "${#MISSING[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      say "installing system packages: ${MISSING[*]}"
      export DEBIAN_FRONTEND=noninteractive
      run apt-get bash -c "apt-get update -qq && apt-get install -y -qq ${MISSING[*]}"
    else
      {
        echo "setup.sh: missing system packages: ${MISSING[*]}"
        echo "setup.sh: install them, then run this script again:"
        echo "  sudo apt-get update && sudo apt-get install -y ${MISSING[*]}"
      } >&2
      exit 1
    fi
  fi
else
  say "WARNING: no dpkg (not Debian): make sure the equivalents of these are installed: ${PKGS[*]}" >&2
fi

fi  # DEPS_OK

# ---- 2. the virtualenv ------------------------------------------------------------------------
VPY="$ROOT/.venv/bin/python"
if [ "$DEPS_OK" != 1 ] && ! { [ -x "$VPY" ] && "$VPY" -c 'import sys, pip; sys.exit(sys.version_info < (3, 9))' >/dev/null 2>&1; }; then
  say "creating .venv with $("$PY" -V 2>&1)"
  rm -rf "$ROOT/.venv"
  run venv "$PY" -m venv "$ROOT/.venv"
fi
PIP=("$VPY" -m pip --disable-pip-version-check)
# torch is pinned for every pip call below: pip must never resolve a different torch.
CONSTRAINTS="$ROOT/build/setup-logs/constraints.txt"
echo "torch==2.13.0" > "$CONSTRAINTS"

have() { "$VPY" - "$@" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    v = version(sys.argv[1])
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if len(sys.argv) < 3 or v.split("+")[0] == sys.argv[2] else 1)
EOF
}

if [ "$DEPS_OK" != 1 ]; then
# build requirements (the package is built without build isolation: faster, no downloads on re-run)
if ! "$VPY" -c 'import setuptools, wheel, pybind11, sys
from importlib.metadata import version
v = lambda n: tuple(int(x) for x in version(n).split(".")[:2])
sys.exit(not (v("setuptools") >= (64, 0) and v("pybind11") >= (2, 11)))' >/dev/null 2>&1; then
  run build-reqs "${PIP[@]}" install 'setuptools>=64' wheel 'pybind11>=2.11'
fi

# ---- 3a. torch 2.13.0, CPU build, from the wheel on local disk when there is one --------------
if ! have torch 2.13.0; then
  WHEEL=""
  PYTAG="cp$("$VPY" -c 'import sys; print("%d%d" % sys.version_info[:2])')"
  for d in ${PIP_FIND_LINKS:-} /opt/wheels; do
    for w in "$d"/torch-2.13.0*-"$PYTAG"-*.whl; do [ -f "$w" ] && { WHEEL="$w"; break 2; }; done
  done
  say "installing torch 2.13.0 (${WHEEL:-from the index})"
  run torch "${PIP[@]}" install -c "$CONSTRAINTS" "${WHEEL:-torch==2.13.0}"
fi

# ---- 3b. mpi4py built from source against Open MPI --------------------------------------------
mpi4py_ok() { "$VPY" - <<'EOF' >/dev/null 2>&1
import sys
import mpi4py
mpi4py.rc.initialize = False   # no MPI_Init: only ask which library it is linked to
mpi4py.rc.finalize = False
from mpi4py import MPI
sys.exit(0 if "Open MPI" in MPI.Get_library_version() else 1)
EOF
}
if ! mpi4py_ok; then
  command -v mpicc.openmpi >/dev/null 2>&1 || { echo "setup.sh: mpicc.openmpi not found (package libopenmpi-dev)" >&2; exit 1; }
  say "building mpi4py against Open MPI (takes a minute or two)"
  run mpi4py env MPICC=mpicc.openmpi "${PIP[@]}" install --no-binary mpi4py --no-cache-dir \
    --force-reinstall --no-deps 'mpi4py>=3.1'
  mpi4py_ok || { echo "setup.sh: mpi4py installed but not linked to Open MPI" >&2; exit 1; }
fi
echo "$DEPS_STAMP" > "$DEPS_STAMP_FILE"
fi  # DEPS_OK

# ---- 3c. hauler itself (editable), skipped when nothing that the build reads has changed ------
stamp() {
  {
    "$VPY" -V 2>&1
    env | grep -E '^(HAULER_(NO_CUDA|FORCE_CUDA|CUDA_ARCH|NVCC|BUILD_JOBS|MPICC)|CUDA_HOME|MPICC)=' | sort || true
    command -v nvcc mpicc mpicc.openmpi mpicc.mpich || true
    find setup.py pyproject.toml runtime/_version.py runtime/config.py runtime/mpi_find.py csrc interpose -type f \
      \( -name '*.py' -o -name '*.toml' -o -name '*.c' -o -name '*.cpp' -o -name '*.h' -o -name '*.map' \
         -o -name '*.hpp' -o -name '*.inl' -o -name '*.cu' -o -name '*.cuh' \) -print0 \
      | sort -z | xargs -0 sha256sum
    find runtime bench -name __init__.py | sort
  } | sha256sum | cut -d' ' -f1
}
STAMP_FILE="$ROOT/.venv/.hauler-build-stamp"
NEW_STAMP="$(stamp)"
installed_here() {
  "$VPY" - "$ROOT" <<'EOF' >/dev/null 2>&1
import os, sys
import hauler, hauler._core
sys.exit(os.path.realpath(os.path.dirname(hauler.__file__)) != os.path.realpath(os.path.join(sys.argv[1], "runtime")))
EOF
}
if [ "$(cat "$STAMP_FILE" 2>/dev/null || true)" != "$NEW_STAMP" ] || ! installed_here; then
  say "building and installing hauler (pip install -e '.[test,torch,plot]')"
  rm -f "$STAMP_FILE"
  run hauler "${PIP[@]}" install --no-build-isolation -c "$CONSTRAINTS" -e '.[test,torch,plot]'
  echo "$NEW_STAMP" > "$STAMP_FILE"
fi

# ---- summary: always say whether the GPU kernels were built --------------------------------
"$VPY" - "$ROOT/runtime/_build_info.json" <<'EOF'
import json, sys
try:
    info = json.load(open(sys.argv[1]))
except OSError:
    print("setup.sh: WARNING: no build info at %s" % sys.argv[1], file=sys.stderr)
    sys.exit(0)
cu = info["cuda"]
if cu["built"]:
    print("setup.sh: ready: hauler %s in .venv; GPU kernels built (sm %s, nvcc %s)"
          % (info["version"], ",".join(cu["arch"]), cu["nvcc_version"]))
elif cu["reason"].startswith("skipped"):
    print("setup.sh: ready: hauler %s in .venv; GPU kernels %s" % (info["version"], cu["reason"]))
else:
    print("setup.sh: ready: hauler %s in .venv; WARNING: GPU kernels NOT built: %s"
          % (info["version"], cu["reason"]), file=sys.stderr)
EOF
