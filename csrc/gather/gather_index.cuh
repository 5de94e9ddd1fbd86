// Index math of the GPU row-gather kernel, compiled by nvcc into the kernel
// (gather_cuda.cu) and by the host compiler into the grid emulator
// (gather_emulate.cpp), so the tests run the very code the GPU runs.
//
// Zero-copy: the table stays in host memory, registered (pinned in place and
// mapped), and GPU threads read its rows over PCIe/NVLink directly. Reads
// there come in 128-byte requests, so the kernel follows the GPU-oriented GCN
// training paper (Min et al., PyTorch-Direct):
//   * a group of G threads (G a power of two <= 32: a warp for rows of 32+
//     words) copies one row; groups take rows grid-stride;
//   * circular-shift alignment: a row starting `m` bytes past a 128-byte
//     boundary is read as if it started at that boundary: lane l takes word
//     l - m/W of the first G-word step (lanes before the row start idle), so
//     every step of the group covers whole aligned 128-byte lines instead of
//     straddling two;
//   * W, the access width, is the widest of 16/8/4/2/1 bytes dividing the table
//     address, the row stride, the row size and the output address;
//   * a cap on thread blocks (HAULER_GATHER_GPU_BLOCKS) so the gather leaves
//     multiprocessors to training kernels running concurrently.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <cstdio>
#include <cstdlib>

#include "../common/gpu_abi.h"

#ifdef __CUDACC__
#define HAULER_GHD __host__ __device__
#else
#define HAULER_GHD
#endif

// Plain data: the ABI struct and a kernel argument.
struct HaulerGatherArgs {
  const void* table;   // device-accessible address of row 0
  int64_t rows;        // table rows (indices were checked against it)
  int64_t row_bytes;   // bytes per row copied
  int64_t row_stride;  // bytes between table rows (>= row_bytes)
  const void* index;   // n indices; host memory at the ABI, device memory in the kernel
  int64_t n;
  void* out;           // n * row_bytes bytes, rows back to back
  int32_t index_width; // 4 or 8
  int32_t word;        // bytes per access (set by the host: gather_word)
  int32_t group;       // threads per row (set by the host: gather_group)
  int32_t max_blocks;  // cap on thread blocks; 0 = 2 per multiprocessor
};

namespace hauler::gather {

constexpr uint32_t kGpuThreadsPerBlock = 256;
constexpr int64_t kAlignBytes = 128;  // the GPU's memory request (and PCIe read) granule

HAULER_GHD inline int align_of(uint64_t v) {
  if (v % 16 == 0) return 16;
  if (v % 8 == 0) return 8;
  if (v % 4 == 0) return 4;
  if (v % 2 == 0) return 2;
  return 1;
}

// The widest access every row read and write allows.
HAULER_GHD inline int gather_word(const void* table, int64_t row_stride, int64_t row_bytes, const void* out) {
  int w = align_of(reinterpret_cast<uintptr_t>(table));
  int x = align_of(static_cast<uint64_t>(row_stride));
  w = x < w ? x : w;
  x = align_of(static_cast<uint64_t>(row_bytes));
  w = x < w ? x : w;
  x = align_of(reinterpret_cast<uintptr_t>(out));
  return x < w ? x : w;
}

// Threads per row: the smallest power of two covering the row's words, at
// most a warp (32).
HAULER_GHD inline int gather_group(int64_t row_bytes, int word) {
  const int64_t words = row_bytes / word;
  int g = 1;
  while (g < 32 && g < words) g *= 2;
  return g;
}

// Bytes the circular shift aligns each group step to: 128, or the step
// itself when a group moves fewer bytes per step.
HAULER_GHD inline int64_t shift_unit(int group, int word) {
  const int64_t step = static_cast<int64_t>(group) * word;
  return step < kAlignBytes ? step : kAlignBytes;
}

HAULER_GHD inline void gather_launch_shape(int64_t n, int group, int sm_count, int max_blocks, uint32_t* grid,
                                           uint32_t* block) {
  const int64_t per_block = kGpuThreadsPerBlock / group;  // rows in flight per block
  int64_t blocks = (n + per_block - 1) / per_block;
  const int64_t cap = max_blocks > 0 ? max_blocks : 2 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  *grid = static_cast<uint32_t>(blocks);
  *block = kGpuThreadsPerBlock;
}

#ifdef __CUDACC__
template <int W> struct GWord;
template <> struct GWord<16> { using type = uint4; };
template <> struct GWord<8> { using type = uint2; };
template <> struct GWord<4> { using type = uint32_t; };
template <> struct GWord<2> { using type = uint16_t; };
template <> struct GWord<1> { using type = uint8_t; };
#else
struct alignas(16) GHostWord16 {
  uint64_t lo, hi;
} __attribute__((may_alias));
typedef uint64_t __attribute__((may_alias)) GHostWord8;
typedef uint32_t __attribute__((may_alias)) GHostWord4;
typedef uint16_t __attribute__((may_alias)) GHostWord2;
template <int W> struct GWord;
template <> struct GWord<16> { using type = GHostWord16; };
template <> struct GWord<8> { using type = GHostWord8; };
template <> struct GWord<4> { using type = GHostWord4; };
template <> struct GWord<2> { using type = GHostWord2; };
template <> struct GWord<1> { using type = uint8_t; };
#endif

// Host (emulation) only: called with every load and store address, so tests
// can count writes per byte and check that each group step reads within
// aligned lines. Null outside tests; device code never reads them.
inline void (*gather_store_hook)(const void* dst, int bytes) = nullptr;
inline void (*gather_load_hook)(const void* src, int bytes, int64_t row, int64_t step, int lane) = nullptr;

// The per-thread body: thread `tid` of `nthreads` (a multiple of the group).
template <int W, class I>
HAULER_GHD inline void gather_rows(const HaulerGatherArgs& a, const I* index, uint64_t tid, uint64_t nthreads) {
  using T = typename GWord<W>::type;
  const int64_t g = a.group;
  const int64_t lane = static_cast<int64_t>(tid % static_cast<uint64_t>(g));
  const int64_t ngroups = static_cast<int64_t>(nthreads / static_cast<uint64_t>(g));
  const int64_t words = a.row_bytes / W;
  const int64_t unit = shift_unit(a.group, W);
  const uint8_t* table = static_cast<const uint8_t*>(a.table);
  uint8_t* out = static_cast<uint8_t*>(a.out);
  for (int64_t i = static_cast<int64_t>(tid / static_cast<uint64_t>(g)); i < a.n; i += ngroups) {
    const uint8_t* src = table + static_cast<int64_t>(index[i]) * a.row_stride;
    const int64_t shift = static_cast<int64_t>(reinterpret_cast<uintptr_t>(src) % static_cast<uint64_t>(unit)) / W;
    const T* s = reinterpret_cast<const T*>(src);
    T* d = reinterpret_cast<T*>(out + i * a.row_bytes);
    int64_t step = 0;
    for (int64_t j = lane - shift; j < words; j += g, ++step) {
      if (j < 0) continue;
#ifndef __CUDA_ARCH__
      if (reinterpret_cast<uintptr_t>(s + j) % W != 0 || reinterpret_cast<uintptr_t>(d + j) % W != 0) {
        std::fprintf(stderr, "hauler emulation: misaligned %d-byte gather access (%p -> %p)\n", W,
                     static_cast<const void*>(s + j), static_cast<void*>(d + j));
        std::abort();
      }
      if (gather_load_hook) gather_load_hook(s + j, W, i, step, static_cast<int>(lane));
      if (gather_store_hook) gather_store_hook(d + j, W);
#endif
      d[j] = s[j];
    }
  }
}

// Runtime-dispatched body for the emulator (the CUDA kernels instantiate
// gather_rows per word and index width).
HAULER_GHD inline void gather_thread(const HaulerGatherArgs& a, uint64_t tid, uint64_t nthreads) {
#define HAULER_GATHER_CASE(W)                                                                          \
  case W:                                                                                              \
    if (a.index_width == 4) gather_rows<W>(a, static_cast<const int32_t*>(a.index), tid, nthreads);    \
    else gather_rows<W>(a, static_cast<const int64_t*>(a.index), tid, nthreads);                       \
    break;
  switch (a.word) {
    HAULER_GATHER_CASE(16)
    HAULER_GATHER_CASE(8)
    HAULER_GATHER_CASE(4)
    HAULER_GATHER_CASE(2)
    HAULER_GATHER_CASE(1)
    default: break;
  }
#undef HAULER_GATHER_CASE
}

// Argument checks shared by every backend (host side): a bad argument
// becomes an error string, never a fault on the device. Index VALUES were
// checked by the core (gather::check_index) before the call.
inline int check_gather(const HaulerGatherArgs* a, char* err, size_t errlen) {
#define HAULER_GCHECK_FAIL(rc, ...)                          \
  do {                                                       \
    if (err && errlen) snprintf(err, errlen, __VA_ARGS__);   \
    return rc;                                               \
  } while (0)
  if (!a) HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "gather arguments are null");
  if (a->n < 0) HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "index count %lld is negative", static_cast<long long>(a->n));
  if (a->n == 0) return HAULER_GPU_OK;
  if (!a->table || !a->index || !a->out)
    HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "%s pointer is null", !a->table ? "table" : !a->index ? "index" : "output");
  if (a->row_bytes <= 0 || a->row_stride < a->row_bytes)
    HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "row size %lld / stride %lld are not a valid row layout",
                       static_cast<long long>(a->row_bytes), static_cast<long long>(a->row_stride));
  if (a->index_width != 4 && a->index_width != 8)
    HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "index width %d is not 4 or 8", static_cast<int>(a->index_width));
  const int w = a->word;
  if (w != 1 && w != 2 && w != 4 && w != 8 && w != 16)
    HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "word size %d is not 1, 2, 4, 8 or 16", w);
  if (gather_word(a->table, a->row_stride, a->row_bytes, a->out) % w != 0)
    HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "word size %d does not divide the table address %p, the stride, the row "
                       "size %lld and the output address %p", w, a->table, static_cast<long long>(a->row_bytes), a->out);
  const int g = a->group;
  if (g < 1 || g > 32 || (g & (g - 1)) != 0)
    HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "group of %d threads per row is not a power of two <= 32", g);
#undef HAULER_GCHECK_FAIL
  return HAULER_GPU_OK;
}

}  // namespace hauler::gather
