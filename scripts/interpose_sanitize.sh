#!/usr/bin/env bash
# The MPI interposer built with AddressSanitizer + UndefinedBehaviorSanitizer (core included) and
# run under each installed MPI on the p2p, halo, mixed, threads and decode test programs (and the
# Fortran one where mpif90 exists), packing every message, and on halo with the fake driver +
# emulated kernels (the GPU staging path); the outputs must equal the library's alone. Used by .ci/run; needs gcc's libasan/libubsan.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# a fresh directory per run: two runs at once (CI beside a developer's run) must not delete each other's objects
OUT="$(mktemp -d "${TMPDIR:-/tmp}/hauler-interpose-sanitize.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT
mkdir -p "$OUT/core"
pids=()
SAN=(-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -fPIC -fvisibility=hidden)
for f in $(find csrc -name '*.cpp' -not -path 'csrc/bindings/*' | sort); do
  obj="${f#csrc/}"; obj="${obj//\//_}"  # by path: io/settings.cpp and common/settings.cpp both exist
  c++ -std=c++17 "${SAN[@]}" -Icsrc -c "$f" -o "$OUT/core/${obj%.cpp}.o" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done  # each one: a bare `wait` would hide a failed compile
# the fake GPU (tests/interpose/fakecuda.c, emukernels.cpp): "device" memory is host memory
cc -DFAKE_DRIVER -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$OUT/libcuda.so.1" tests/interpose/fakecuda.c
c++ -std=c++17 -O1 -shared -fPIC -Icsrc -o "$OUT/libhauler_cuda.so" tests/interpose/emukernels.cpp \
  csrc/common/gpu_emulation.cpp csrc/datatype/pack_emulate.cpp csrc/gather/gather_emulate.cpp csrc/kv/kv_emulate.cpp
ASAN="$(gcc -print-file-name=libasan.so)"; UBSAN="$(gcc -print-file-name=libubsan.so)"
printf 'max_block 1000000000\nmin_bytes 0\n' > "$OUT/model.txt"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none HYDRA_IFACE=lo
ran=0
for flav in openmpi mpich; do
  command -v "mpicc.$flav" >/dev/null && command -v "mpiexec.$flav" >/dev/null || { echo "skip $flav (not installed)"; continue; }
  d="$OUT/$flav"; mkdir -p "$d"
  for f in interpose/*.cpp; do
    "mpicc.$flav" -std=c++17 "${SAN[@]}" -Icsrc -c "$f" -o "$d/$(basename "${f%.cpp}").o"
  done
  "mpicc.$flav" -shared -fsanitize=address,undefined -o "$d/libhauler_interpose.so" "$d"/*.o "$OUT"/core/*.o \
    -lstdc++ -ldl -pthread -Wl,--version-script=interpose/exports.map
  for prog in p2p halo mixed threads decode largecount; do "mpicc.$flav" -O1 -w "tests/interpose/$prog.c" -o "$d/$prog"; done
  progs=(mixed threads decode largecount)
  if command -v "mpif90.$flav" >/dev/null; then
    "mpif90.$flav" -O1 -w -fallow-argument-mismatch tests/interpose/fort.F90 -o "$d/fort"; progs+=(fort)
    if [ "$flav" = openmpi ]; then  # MPICH's mpi_f08 never reaches the shim (see the README)
      "mpif90.$flav" -O1 -w -DHAULER_F08 tests/interpose/fort.F90 -o "$d/fort08"; progs+=(fort08)
    fi
  fi
  if [ "$flav" = openmpi ]; then
    run() { timeout 300 mpiexec.openmpi --oversubscribe --bind-to none -n "$1" "${@:2}"; }
    pre() { timeout 300 mpiexec.openmpi --oversubscribe --bind-to none -n "$1" -x ASAN_OPTIONS=detect_leaks=0 \
              -x LD_PRELOAD="$ASAN:$UBSAN:$d/libhauler_interpose.so${GPU:+:$GPU}" -x HAULER_CUDA_LIB="$OUT/libhauler_cuda.so" \
              -x HAULER_INTERPOSE_MODEL="$OUT/model.txt" "${@:2}"; }
  else
    run() { timeout 300 mpiexec.mpich -n "$1" "${@:2}"; }
    pre() { timeout 300 mpiexec.mpich -n "$1" -genv ASAN_OPTIONS detect_leaks=0 \
              -genv LD_PRELOAD "$ASAN:$UBSAN:$d/libhauler_interpose.so${GPU:+:$GPU}" -genv HAULER_CUDA_LIB "$OUT/libhauler_cuda.so" \
              -genv HAULER_INTERPOSE_MODEL "$OUT/model.txt" "${@:2}"; }
  fi
  seed=$RANDOM
  run 3 "$d/p2p" "$d/lib" "$seed"; pre 3 "$d/p2p" "$d/san" "$seed"
  run 4 "$d/halo" "$d/hlib" 6 2; pre 4 "$d/halo" "$d/hsan" 6 2
  for r in 0 1 2; do cmp "$d/lib.$r" "$d/san.$r"; done
  for r in 0 1 2 3; do cmp "$d/hlib.$r" "$d/hsan.$r"; done
  for prog in "${progs[@]}"; do
    run 3 "$d/$prog" "$d/${prog}lib"; pre 3 "$d/$prog" "$d/${prog}san"
    for r in 0 1 2; do cmp "$d/${prog}lib.$r" "$d/${prog}san.$r"; done
  done
  GPU="$OUT/libcuda.so.1" pre 2 "$d/halo" "$d/gsan" 6 1; run 2 "$d/halo" "$d/glib" 6 1
  for r in 0 1; do cmp "$d/glib.$r" "$d/gsan.$r"; done
  echo "ok   $flav: interposer under ASan+UBSan, outputs equal the library's (seed $seed)"
  ran=$((ran + 1))
done
[ "$ran" -gt 0 ] || { echo "no MPI flavour installed: nothing sanitized" >&2; exit 1; }
