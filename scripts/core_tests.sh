#!/usr/bin/env bash
# Build and run the C++ core tests: one binary per tests/core/*.cpp (each has its own main() and
# exits non-zero on failure), linked with the host core (csrc/<capability>/**/*.cpp, not bindings).
#   bash scripts/core_tests.sh              -> build/core-tests/
#   bash scripts/core_tests.sh --sanitize   -> build/core-tests-asan/ (AddressSanitizer + UBSan)
# Incremental (a generated Makefile with header dependencies). Ends with "N passed, M failed".
# CXX picks the compiler (default g++); CORE_TEST_TIMEOUT the seconds per test (default 900).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SANITIZE=0
for arg in "$@"; do
  case "$arg" in
    --sanitize) SANITIZE=1 ;;
    -h|--help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "core_tests.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

# The host core's capability folders: setup.py's CORE_DIRS without bindings.
CORE_DIRS=(common datatype io gather kv)

TESTS=()
if [ -d tests/core ]; then
  while IFS= read -r -d '' f; do TESTS+=("$f"); done < <(find tests/core -maxdepth 1 -name '*.cpp' -print0 | sort -z)
fi
if [ "${#TESTS[@]}" = 0 ]; then
  echo "core_tests.sh: no C++ core tests found (tests/core/*.cpp): nothing tested is a failure" >&2
  exit 1
fi
LIB=()
for d in "${CORE_DIRS[@]}"; do
  [ -d "csrc/$d" ] || continue
  while IFS= read -r -d '' f; do LIB+=("$f"); done < <(find "csrc/$d" -name '*.cpp' -print0 | sort -z)
done

CXX="${CXX:-g++}"
CXXFLAGS="-std=c++17 -O1 -g -Icsrc -pthread"
OUT=build/core-tests
if [ "$SANITIZE" = 1 ]; then
  CXXFLAGS="$CXXFLAGS -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
  OUT=build/core-tests-asan
fi
LDLIBS="-ldl"
# csrc/io's io_uring backend, as setup.py builds it, when liburing is installed
if [ -f /usr/include/liburing.h ] || [ -f /usr/local/include/liburing.h ]; then
  CXXFLAGS="$CXXFLAGS -DHAULER_HAVE_LIBURING"
  LDLIBS="$LDLIBS -luring"
fi
mkdir -p "$OUT"

# Objects depend on the flags: rewrite the flags file only when they change.
FLAGS_FILE="$OUT/flags"
if [ "$(cat "$FLAGS_FILE" 2>/dev/null || true)" != "$CXX $CXXFLAGS $LDLIBS" ]; then
  echo "$CXX $CXXFLAGS $LDLIBS" > "$FLAGS_FILE"
fi

obj() { local s=$1; echo "$OUT/obj/${s%.cpp}.o"; }
bin() { local t; t=$(basename "$1"); echo "$OUT/${t%.cpp}"; }

MK="$OUT/Makefile"
{
  echo "CXX := $CXX"
  echo "CXXFLAGS := $CXXFLAGS"
  echo "LDLIBS := $LDLIBS"
  printf 'LIBOBJS :='; for s in "${LIB[@]}"; do printf ' %s' "$(obj "$s")"; done; echo
  printf 'all:'; for t in "${TESTS[@]}"; do printf ' %s' "$(bin "$t")"; done; echo
  for s in "${LIB[@]}" "${TESTS[@]}"; do
    o=$(obj "$s")
    printf '%s: %s %s\n\t@mkdir -p $(@D)\n\t@echo "  CXX $<"\n\t@$(CXX) $(CXXFLAGS) -MMD -MP -c $< -o $@\n' "$o" "$s" "$FLAGS_FILE"
    echo "-include ${o%.o}.d"
  done
  for t in "${TESTS[@]}"; do
    printf '%s: %s $(LIBOBJS)\n\t@echo "  LINK $@"\n\t@$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)\n' "$(bin "$t")" "$(obj "$t")"
  done
} > "$MK"

JOBS="$(nproc 2>/dev/null || echo 2)"
echo "core_tests.sh: building ${#TESTS[@]} test program(s) in $OUT ($CXXFLAGS)"
make -f "$MK" -k -j "$JOBS" all || true   # a test that does not build counts as failed below

if [ "$SANITIZE" = 1 ]; then
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
else
  export ASAN_OPTIONS="detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
fi

PASSED=0
FAILED=0
FAILED_NAMES=()
for t in "${TESTS[@]}"; do
  b=$(bin "$t")
  name=$(basename "$b")
  if [ ! -x "$b" ] || ! make -f "$MK" -q "$b" >/dev/null 2>&1; then
    echo "FAIL $name (did not build)"
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name"); continue
  fi
  log="$OUT/$name.log"
  start=$(date +%s)
  set +e
  timeout "${CORE_TEST_TIMEOUT:-900}" "$b" >"$log" 2>&1
  rc=$?
  set -e
  secs=$(( $(date +%s) - start ))
  if [ "$rc" = 0 ]; then
    echo "PASS $name (${secs}s)"
    PASSED=$((PASSED + 1))
  else
    [ "$rc" = 124 ] && why="timed out after ${CORE_TEST_TIMEOUT:-900}s" || why="exit $rc"
    echo "FAIL $name ($why, ${secs}s); last lines of $log:"
    tail -n 60 "$log" | sed 's/^/    /'
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name")
  fi
done

[ "$FAILED" = 0 ] || echo "core_tests.sh: failed: ${FAILED_NAMES[*]}"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
