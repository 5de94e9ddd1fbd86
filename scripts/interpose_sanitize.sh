#!/usr/bin/env bash
# The MPI interposer built with AddressSanitizer + UndefinedBehaviorSanitizer (core included) and
# run under each installed MPI on the p2p and halo test programs, packing every message; the
# outputs must equal the library's alone. Used by .ci/run; needs gcc's libasan/libubsan.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${TMPDIR:-/tmp}/hauler-interpose-sanitize"
rm -rf "$OUT" && mkdir -p "$OUT/core"
SAN=(-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -fPIC -fvisibility=hidden)
for f in $(find csrc -name '*.cpp' -not -path 'csrc/bindings/*' | sort); do
  obj="${f#csrc/}"; obj="${obj//\//_}"  # by path: io/settings.cpp and common/settings.cpp both exist
  c++ -std=c++17 "${SAN[@]}" -Icsrc -c "$f" -o "$OUT/core/${obj%.cpp}.o" &
done
wait
ASAN="$(gcc -print-file-name=libasan.so)"; UBSAN="$(gcc -print-file-name=libubsan.so)"
printf 'max_block 1000000000\nmin_bytes 0\n' > "$OUT/model.txt"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none HYDRA_IFACE=lo
ran=0
for flav in openmpi mpich; do
  command -v "mpicc.$flav" >/dev/null && command -v "mpiexec.$flav" >/dev/null || { echo "skip $flav (not installed)"; continue; }
  d="$OUT/$flav"; mkdir -p "$d"
  "mpicc.$flav" -std=c++17 "${SAN[@]}" -Icsrc -c interpose/interpose.cpp -o "$d/interpose.o"
  "mpicc.$flav" -shared -fsanitize=address,undefined -o "$d/libhauler_interpose.so" "$d/interpose.o" "$OUT"/core/*.o \
    -lstdc++ -ldl -pthread -Wl,--version-script=interpose/exports.map
  for prog in p2p halo; do "mpicc.$flav" -O1 -w "tests/interpose/$prog.c" -o "$d/$prog"; done
  if [ "$flav" = openmpi ]; then
    run() { timeout 300 mpiexec.openmpi --oversubscribe --bind-to none -n "$1" "${@:2}"; }
    pre() { timeout 300 mpiexec.openmpi --oversubscribe --bind-to none -n "$1" -x ASAN_OPTIONS=detect_leaks=0 \
              -x LD_PRELOAD="$ASAN:$UBSAN:$d/libhauler_interpose.so" -x HAULER_INTERPOSE_MODEL="$OUT/model.txt" "${@:2}"; }
  else
    run() { timeout 300 mpiexec.mpich -n "$1" "${@:2}"; }
    pre() { timeout 300 mpiexec.mpich -n "$1" -genv ASAN_OPTIONS detect_leaks=0 \
              -genv LD_PRELOAD "$ASAN:$UBSAN:$d/libhauler_interpose.so" -genv HAULER_INTERPOSE_MODEL "$OUT/model.txt" "${@:2}"; }
  fi
  seed=$RANDOM
  run 3 "$d/p2p" "$d/lib" "$seed"; pre 3 "$d/p2p" "$d/san" "$seed"
  run 4 "$d/halo" "$d/hlib" 6 2; pre 4 "$d/halo" "$d/hsan" 6 2
  for r in 0 1 2; do cmp "$d/lib.$r" "$d/san.$r"; done
  for r in 0 1 2 3; do cmp "$d/hlib.$r" "$d/hsan.$r"; done
  echo "ok   $flav: interposer under ASan+UBSan, outputs equal the library's (seed $seed)"
  ran=$((ran + 1))
done
[ "$ran" -gt 0 ] || { echo "no MPI flavour installed: nothing sanitized" >&2; exit 1; }
