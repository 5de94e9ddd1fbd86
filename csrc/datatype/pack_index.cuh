// Index math of the GPU pack/unpack kernels, compiled twice: by nvcc into the
// kernels (pack_cuda.cu) and by the host compiler into the grid emulator
// (pack_emulate.cpp), so the tests run the very code the GPU runs.
//
// Work split: one thread per *word* of the window [pos, pos + n) of the packed
// stream, grid-stride. Consecutive threads take consecutive words, so writes
// to the packed buffer (pack) or reads from it (unpack) coalesce, and reads of
// each block coalesce too whenever a block spans several words.
//
//   word q (in stream words) -> repetition rep = q / words_per_rep, byte `in`
//   within the repetition -> memory offset dim_offset(rep) + run offset + ...
//
// Strided form (one run): the byte within the repetition is the byte within
// the block. Run-list form: a binary search over the run prefix sums finds the
// run. The alternative, a thread block per run, idles most of its threads on
// the short runs that make a type irregular in the first place and needs a
// second scheme for long runs; the search costs log2(runs) loads that hit
// L1/L2 because neighbouring threads search for neighbouring keys.
//
// The word size (16/8/4/2/1 bytes) divides every block/run length and offset,
// every stride, pos, n and both base addresses, so every access is naturally
// aligned (the GPU faults otherwise) and no word straddles two blocks.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <cstdio>
#include <cstdlib>

#include "../common/device_word.cuh"
#include "../common/gpu_abi.h"

#define HAULER_DEV_MAX_DIMS 8

// Binary-compatible with hauler::dt::Run (asserted in gpu_pack.cpp).
struct HaulerRun {
  int64_t offset;
  int64_t length;
};

// Plain data, passed by value as a kernel argument.
struct HaulerDevLayout {
  int32_t ndims;                        // 0..8, outermost first (as in Layout)
  int32_t word;                         // bytes per access, set per call by the host
  int64_t count[HAULER_DEV_MAX_DIMS];   // all >= 2
  int64_t stride[HAULER_DEV_MAX_DIMS];  // bytes, may be negative
  int64_t base;                         // strided form: offset of the block at index 0
  int64_t block;                        // bytes of one repetition (block or run_bytes), > 0
  int64_t nruns;                        // 1: strided form; > 1: run list
  const HaulerRun* runs;                // run list: nruns runs (device memory on the GPU)
  const int64_t* prefix;                // run list: nruns + 1 prefix sums of the lengths
  int64_t total;                        // bytes of the whole packed stream
  int64_t span_lo, span_hi;             // bytes touched, relative to the origin
  int32_t align;                        // largest word (<= 16) dividing the layout's own quantities
  int32_t reserved;
};

namespace hauler::dt {

using DevLayout = HaulerDevLayout;

HAULER_HD inline int min_word(int a, int b) { return a < b ? a : b; }

// The word for one call: the layout's own alignment, narrowed by the window
// and by where the two buffers sit.
HAULER_HD inline int pick_word(int layout_align, const void* origin, const void* buf, int64_t pos, int64_t n) {
  int w = layout_align;
  w = min_word(w, word_align(reinterpret_cast<uintptr_t>(origin)));
  w = min_word(w, word_align(reinterpret_cast<uintptr_t>(buf)));
  w = min_word(w, word_align(static_cast<uint64_t>(pos)));
  w = min_word(w, word_align(static_cast<uint64_t>(n)));
  return w;
}

// Launch shape, shared by the CUDA launcher and the emulator so both
// distribute the same words over the same threads: 256 threads a block, at
// most 16 blocks per multiprocessor (two waves at full occupancy); beyond that
// the grid-stride loop takes over.
constexpr uint32_t kThreadsPerBlock = 256;
constexpr int64_t kBlocksPerSm = 16;

HAULER_HD inline void launch_shape(int64_t words, int sm_count, uint32_t* grid, uint32_t* block) {
  int64_t blocks = (words + kThreadsPerBlock - 1) / kThreadsPerBlock;
  int64_t cap = static_cast<int64_t>(sm_count > 0 ? sm_count : 1) * kBlocksPerSm;
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  *grid = static_cast<uint32_t>(blocks);
  *block = kThreadsPerBlock;
}

// a / b for a >= 0, b > 0. The GPU has no 64-bit divide instruction (it is a
// long emulated sequence); when both fit in 32 bits, as they mostly do, the
// 32-bit divide is several times cheaper.
HAULER_HD inline int64_t div_nonneg(int64_t a, int64_t b) {
  if (((static_cast<uint64_t>(a) | static_cast<uint64_t>(b)) >> 32) == 0)
    return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
  return a / b;
}

// Memory offset of repetition `rep` (innermost dimension fastest).
HAULER_HD inline int64_t dim_offset(const DevLayout& l, int64_t rep) {
  int64_t off = 0;
  for (int d = l.ndims - 1; d >= 0; --d) {
    int64_t c = l.count[d];
    int64_t q = div_nonneg(rep, c);
    off += (rep - q * c) * l.stride[d];
    rep = q;
  }
  return off;
}

// Index of the run holding byte `in` (0 <= in < block) of a repetition:
// the largest j with prefix[j] <= in. Runs are non-empty, so it is unique.
HAULER_HD inline int64_t find_run(const int64_t* prefix, int64_t nruns, int64_t in) {
  int64_t lo = 0, hi = nruns;
  while (hi - lo > 1) {
    int64_t mid = lo + (hi - lo) / 2;
    if (prefix[mid] <= in) lo = mid;
    else hi = mid;
  }
  return lo;
}

// Host (emulation) only: called with the destination of every store, so tests
// can count writes per byte. Null outside tests; device code never reads it.
inline void (*emulation_store_hook)(const void* dst, int bytes) = nullptr;

// The per-thread body: words tid, tid + nthreads, ... of the window.
// `origin` is the type's origin (memory), `buf` the packed bytes of the window.
template <int W, bool kPack, bool kRuns>
HAULER_HD inline void pack_words(const DevLayout& l, uint8_t* origin, uint8_t* buf, int64_t pos, int64_t n,
                                 uint64_t tid, uint64_t nthreads) {
  using T = typename Word<W>::type;
  const int64_t words = n / W;
  const int64_t first = pos / W;         // stream word of buf[0]
  const int64_t per_rep = l.block / W;   // words per repetition
  const bool flat = !kRuns && l.ndims == 0;
  for (int64_t i = static_cast<int64_t>(tid); i < words; i += static_cast<int64_t>(nthreads)) {
    const int64_t q = first + i;
    int64_t off;
    if (flat) {
      off = l.base + q * W;
    } else {
      const int64_t rep = div_nonneg(q, per_rep);
      const int64_t in = (q - rep * per_rep) * W;
      if (kRuns) {
        const int64_t j = find_run(l.prefix, l.nruns, in);
        off = l.runs[j].offset + (in - l.prefix[j]);
      } else {
        off = l.base + in;
      }
      off += dim_offset(l, rep);
    }
    T* mem = reinterpret_cast<T*>(origin + off);
    T* packed = reinterpret_cast<T*>(buf + i * W);
#ifndef __CUDA_ARCH__
    // The GPU faults on a misaligned access; make the emulation fail as loudly.
    if (reinterpret_cast<uintptr_t>(mem) % W != 0 || reinterpret_cast<uintptr_t>(packed) % W != 0) {
      std::fprintf(stderr, "hauler emulation: misaligned %d-byte access (memory %p, packed %p)\n", W,
                   static_cast<void*>(mem), static_cast<void*>(packed));
      std::abort();
    }
    if (emulation_store_hook) emulation_store_hook(kPack ? static_cast<void*>(packed) : static_cast<void*>(mem), W);
#endif
    if (kPack) *packed = *mem;
    else *mem = *packed;
  }
}

// Runtime-dispatched form of the body, for the emulator. The CUDA kernels
// instantiate pack_words directly, one kernel per (word, direction, form).
HAULER_HD inline void pack_thread(const DevLayout& l, uint8_t* origin, uint8_t* buf, int64_t pos, int64_t n,
                                  uint64_t tid, uint64_t nthreads, bool pack) {
  const bool runs = l.nruns > 1;
#define HAULER_PACK_CASE(W)                                                                       \
  case W:                                                                                         \
    if (pack) {                                                                                   \
      if (runs) pack_words<W, true, true>(l, origin, buf, pos, n, tid, nthreads);                 \
      else pack_words<W, true, false>(l, origin, buf, pos, n, tid, nthreads);                     \
    } else {                                                                                      \
      if (runs) pack_words<W, false, true>(l, origin, buf, pos, n, tid, nthreads);                \
      else pack_words<W, false, false>(l, origin, buf, pos, n, tid, nthreads);                    \
    }                                                                                             \
    break;
  switch (l.word) {
    HAULER_PACK_CASE(16)
    HAULER_PACK_CASE(8)
    HAULER_PACK_CASE(4)
    HAULER_PACK_CASE(2)
    HAULER_PACK_CASE(1)
    default: break;  // rejected by check_call before any launch
  }
#undef HAULER_PACK_CASE
}

// Validation shared by every backend entry point (host side): a bad argument
// must become an error string, never a fault on the device. The layout's own
// alignment (`align`) is trusted: the core computed it from the Plan.
inline int check_call(const DevLayout* l, const void* origin, const void* buf, int64_t pos, int64_t n, char* err,
                      size_t errlen) {
#define HAULER_CHECK_FAIL(rc, ...)                           \
  do {                                                       \
    if (err && errlen) snprintf(err, errlen, __VA_ARGS__);   \
    return rc;                                               \
  } while (0)
  if (!l) HAULER_CHECK_FAIL(HAULER_GPU_EINVAL, "layout is null");
  if (pos < 0 || n < 0 || pos > l->total || n > l->total - pos)
    HAULER_CHECK_FAIL(HAULER_GPU_ERANGE, "window of %lld bytes at position %lld is outside the packed stream of %lld bytes",
                      static_cast<long long>(n), static_cast<long long>(pos), static_cast<long long>(l->total));
  if (n == 0) return HAULER_GPU_OK;
  if (!origin || !buf)
    HAULER_CHECK_FAIL(HAULER_GPU_EINVAL, "%s pointer is null", !origin ? "origin" : "packed buffer");
  if (l->ndims < 0 || l->ndims > HAULER_DEV_MAX_DIMS)
    HAULER_CHECK_FAIL(HAULER_GPU_EINVAL, "layout has %d dimensions, at most %d are supported", static_cast<int>(l->ndims),
                      HAULER_DEV_MAX_DIMS);
  if (l->nruns < 1 || l->block <= 0)
    HAULER_CHECK_FAIL(HAULER_GPU_EINVAL, "layout has %lld runs and %lld bytes per repetition",
                      static_cast<long long>(l->nruns), static_cast<long long>(l->block));
  if (l->nruns > 1 && (!l->runs || !l->prefix))
    HAULER_CHECK_FAIL(HAULER_GPU_EINVAL, "run list of %lld runs has no run or prefix array",
                      static_cast<long long>(l->nruns));
  const int w = l->word;
  if (w != 1 && w != 2 && w != 4 && w != 8 && w != 16)
    HAULER_CHECK_FAIL(HAULER_GPU_EINVAL, "word size %d is not 1, 2, 4, 8 or 16", w);
  if (l->align % w != 0 || pick_word(w, origin, buf, pos, n) != w)
    HAULER_CHECK_FAIL(HAULER_GPU_EINVAL,
                      "word size %d does not divide the layout (alignment %d), the window (%lld at %lld) and both "
                      "addresses (%p, %p)",
                      w, static_cast<int>(l->align), static_cast<long long>(n), static_cast<long long>(pos), origin, buf);
#undef HAULER_CHECK_FAIL
  return HAULER_GPU_OK;
}

}  // namespace hauler::dt
