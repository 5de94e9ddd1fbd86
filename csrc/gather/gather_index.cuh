// Index math of the GPU row-gather and row-scatter kernels, compiled by nvcc
// into the kernels (gather_cuda.cu) and by the host compiler into the grid
// emulator (gather_emulate.cpp), so the tests run the very code the GPU runs.
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
// The scatter (src rows on the device -> table rows) is the same loop with the
// roles swapped: the circular shift aligns the TABLE side (the host memory
// written over the link). assign: each destination row appears once (the core
// resolves duplicates on the host, last position wins, and passes src_row);
// add: W is the element size and every word is an atomicAdd, so duplicates
// may add in any order (exact for integers, not bit-fixed for floats).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <cstdio>
#include <cstdlib>

#include "../common/device_word.cuh"
#include "../common/gpu_abi.h"

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

// Plain data: the ABI struct of the scatter and its kernel argument.
struct HaulerScatterArgs {
  void* table;            // device-accessible address of row 0 (written)
  int64_t rows;
  int64_t row_bytes;
  int64_t row_stride;
  const void* index;      // n destination rows; host memory at the ABI, device memory in the kernel
  const int64_t* src_row; // n source row numbers, or null for 0..n-1 (same memory rules as index)
  int64_t n;
  const void* src;        // source rows back to back
  int32_t index_width;    // 4 or 8
  int32_t word;           // bytes per access: the element size for add
  int32_t group;          // threads per row
  int32_t max_blocks;     // cap on thread blocks; 0 = 2 per multiprocessor
  int32_t op;             // HAULER_GPU_SCATTER_* (gpu_abi.h)
};

namespace hauler::gather {

constexpr uint32_t kGpuThreadsPerBlock = 256;
constexpr int64_t kAlignBytes = 128;  // the GPU's memory request (and PCIe read) granule

// The widest access every row read and write allows.
HAULER_HD inline int gather_word(const void* table, int64_t row_stride, int64_t row_bytes, const void* out) {
  int w = word_align(reinterpret_cast<uintptr_t>(table));
  int x = word_align(static_cast<uint64_t>(row_stride));
  w = x < w ? x : w;
  x = word_align(static_cast<uint64_t>(row_bytes));
  w = x < w ? x : w;
  x = word_align(reinterpret_cast<uintptr_t>(out));
  return x < w ? x : w;
}

// Threads per row: the smallest power of two covering the row's words, at
// most a warp (32).
HAULER_HD inline int gather_group(int64_t row_bytes, int word) {
  const int64_t words = row_bytes / word;
  int g = 1;
  while (g < 32 && g < words) g *= 2;
  return g;
}

// Bytes the circular shift aligns each group step to: 128, or the step
// itself when a group moves fewer bytes per step.
HAULER_HD inline int64_t shift_unit(int group, int word) {
  const int64_t step = static_cast<int64_t>(group) * word;
  return step < kAlignBytes ? step : kAlignBytes;
}

HAULER_HD inline void gather_launch_shape(int64_t n, int group, int sm_count, int max_blocks, uint32_t* grid,
                                           uint32_t* block) {
  const int64_t per_block = kGpuThreadsPerBlock / group;  // rows in flight per block
  int64_t blocks = (n + per_block - 1) / per_block;
  const int64_t cap = max_blocks > 0 ? max_blocks : 2 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  *grid = static_cast<uint32_t>(blocks);
  *block = kGpuThreadsPerBlock;
}

// Host (emulation) only: called with every load and store address, so tests
// can count writes per byte and check that each group step reads within
// aligned lines. Null outside tests; device code never reads them.
inline void (*gather_store_hook)(const void* dst, int bytes) = nullptr;
inline void (*gather_load_hook)(const void* src, int bytes, int64_t row, int64_t step, int lane) = nullptr;

// Host (emulation) only: every access goes through the hooks and is checked
// for alignment (a misaligned vector access would fault on the GPU).
template <int W>
inline void emulated_access(const void* s, void* d, int64_t row, int64_t step, int64_t lane) {
  if (reinterpret_cast<uintptr_t>(s) % W != 0 || reinterpret_cast<uintptr_t>(d) % W != 0) {
    std::fprintf(stderr, "hauler emulation: misaligned %d-byte row access (%p -> %p)\n", W, s, d);
    std::abort();
  }
  if (gather_load_hook) gather_load_hook(s, W, row, step, static_cast<int>(lane));
  if (gather_store_hook) gather_store_hook(d, W);
}

// Moves one word: d[j] = s[j] (CopyWord: W-byte words), or d[j] += s[j]
// atomically (AddWord: E elements). T is the word type; on the host it is a
// may_alias type (rows are raw bytes), taken from a typedef rather than a
// template argument, which would drop the attribute.
template <int W>
struct CopyWord {
  using T = typename Word<W>::type;
  HAULER_HD void operator()(T* d, const T* s) const { *d = *s; }
};

#ifdef __CUDACC__
template <class E> struct AddAlias { using type = E; };
#else
typedef float __attribute__((may_alias)) HostF32;
typedef double __attribute__((may_alias)) HostF64;
template <class E> struct AddAlias;
template <> struct AddAlias<float> { using type = HostF32; };
template <> struct AddAlias<double> { using type = HostF64; };
template <> struct AddAlias<uint32_t> { using type = HostWord4; };
template <> struct AddAlias<uint64_t> { using type = HostWord8; };
#endif

#ifdef __CUDACC__
__device__ inline void atomic_add_word(float* d, float v) { atomicAdd(d, v); }
__device__ inline void atomic_add_word(double* d, double v) { atomicAdd(d, v); }  // sm_60+; nvcc 13 builds sm_75+
__device__ inline void atomic_add_word(uint32_t* d, uint32_t v) { atomicAdd(reinterpret_cast<unsigned int*>(d), v); }
__device__ inline void atomic_add_word(uint64_t* d, uint64_t v) {
  atomicAdd(reinterpret_cast<unsigned long long*>(d), static_cast<unsigned long long>(v));
}
#endif

template <class E>
struct AddWord {
  using T = typename AddAlias<E>::type;
  HAULER_HD void operator()(T* d, const T* s) const {
#ifdef __CUDA_ARCH__
    atomic_add_word(d, *s);
#else
    *d += *s;  // the emulation runs one thread after another; integers are unsigned: wrapping adds
#endif
  }
};

// One group's pass over the rows: group tid/G of nthreads/G takes rows grid-stride; lane l of a
// row moves words l - shift, l - shift + G, ..., where `shift` puts the row's `anchor` side (the
// side in host memory across the link) at the start of an aligned unit.
// rows(i, &src, &dst, &anchor) names row i's source and destination.
template <int W, class Rows, class Move>
HAULER_HD inline void move_rows(int64_t n, int group, int64_t row_bytes, uint64_t tid, uint64_t nthreads,
                                 const Rows& rows, const Move& move) {
  using T = typename Move::T;
  static_assert(sizeof(T) == W, "the word type has W bytes");
  const int64_t g = group;
  const int64_t lane = static_cast<int64_t>(tid % static_cast<uint64_t>(g));
  const int64_t ngroups = static_cast<int64_t>(nthreads / static_cast<uint64_t>(g));
  const int64_t words = row_bytes / W;
  const int64_t unit = shift_unit(group, W);
  for (int64_t i = static_cast<int64_t>(tid / static_cast<uint64_t>(g)); i < n; i += ngroups) {
    const uint8_t* src;
    uint8_t* dst;
    const uint8_t* anchor;
    rows(i, &src, &dst, &anchor);
    const int64_t shift = static_cast<int64_t>(reinterpret_cast<uintptr_t>(anchor) % static_cast<uint64_t>(unit)) / W;
    const T* s = reinterpret_cast<const T*>(src);
    T* d = reinterpret_cast<T*>(dst);
    int64_t step = 0;
    for (int64_t j = lane - shift; j < words; j += g, ++step) {
      if (j < 0) continue;
#ifndef __CUDA_ARCH__
      emulated_access<W>(s + j, d + j, i, step, lane);
#endif
      move(d + j, s + j);
    }
  }
}

template <class I>
struct GatherRows {
  const HaulerGatherArgs& a;
  const I* index;
  HAULER_HD void operator()(int64_t i, const uint8_t** src, uint8_t** dst, const uint8_t** anchor) const {
    *src = static_cast<const uint8_t*>(a.table) + static_cast<int64_t>(index[i]) * a.row_stride;
    *dst = static_cast<uint8_t*>(a.out) + i * a.row_bytes;
    *anchor = *src;  // reads cross the link
  }
};

template <class I>
struct ScatterRows {
  const HaulerScatterArgs& a;
  const I* index;
  HAULER_HD void operator()(int64_t i, const uint8_t** src, uint8_t** dst, const uint8_t** anchor) const {
    const int64_t from = a.src_row ? a.src_row[i] : i;
    *src = static_cast<const uint8_t*>(a.src) + from * a.row_bytes;
    *dst = static_cast<uint8_t*>(a.table) + static_cast<int64_t>(index[i]) * a.row_stride;
    *anchor = *dst;  // writes cross the link
  }
};

// The per-thread bodies: thread `tid` of `nthreads` (a multiple of the group).
template <int W, class I>
HAULER_HD inline void gather_rows(const HaulerGatherArgs& a, const I* index, uint64_t tid, uint64_t nthreads) {
  move_rows<W>(a.n, a.group, a.row_bytes, tid, nthreads, GatherRows<I>{a, index}, CopyWord<W>{});
}

// Move: CopyWord<W> (assign) or AddWord<E> (add, W = sizeof(E)).
template <int W, class Move, class I>
HAULER_HD inline void scatter_rows(const HaulerScatterArgs& a, const I* index, uint64_t tid, uint64_t nthreads) {
  move_rows<W>(a.n, a.group, a.row_bytes, tid, nthreads, ScatterRows<I>{a, index}, Move{});
}

// Runtime-dispatched bodies for the emulator (the CUDA kernels instantiate
// the templates per word and index width).
HAULER_HD inline void gather_thread(const HaulerGatherArgs& a, uint64_t tid, uint64_t nthreads) {
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

template <int W, class Move>
HAULER_HD inline void scatter_width(const HaulerScatterArgs& a, uint64_t tid, uint64_t nthreads) {
  if (a.index_width == 4) scatter_rows<W, Move>(a, static_cast<const int32_t*>(a.index), tid, nthreads);
  else scatter_rows<W, Move>(a, static_cast<const int64_t*>(a.index), tid, nthreads);
}

HAULER_HD inline void scatter_thread(const HaulerScatterArgs& a, uint64_t tid, uint64_t nthreads) {
  switch (a.op) {
    case HAULER_GPU_SCATTER_ADD_F32: scatter_width<4, AddWord<float>>(a, tid, nthreads); return;
    case HAULER_GPU_SCATTER_ADD_F64: scatter_width<8, AddWord<double>>(a, tid, nthreads); return;
    case HAULER_GPU_SCATTER_ADD_U32: scatter_width<4, AddWord<uint32_t>>(a, tid, nthreads); return;
    case HAULER_GPU_SCATTER_ADD_U64: scatter_width<8, AddWord<uint64_t>>(a, tid, nthreads); return;
    default: break;
  }
  switch (a.word) {
    case 16: scatter_width<16, CopyWord<16>>(a, tid, nthreads); return;
    case 8: scatter_width<8, CopyWord<8>>(a, tid, nthreads); return;
    case 4: scatter_width<4, CopyWord<4>>(a, tid, nthreads); return;
    case 2: scatter_width<2, CopyWord<2>>(a, tid, nthreads); return;
    default: scatter_width<1, CopyWord<1>>(a, tid, nthreads); return;
  }
}

// Argument checks shared by every backend (host side): a bad argument
// becomes an error string, never a fault on the device. Index VALUES were
// checked by the core (gather::check_index) before the call.
#define HAULER_GCHECK_FAIL(rc, ...)                          \
  do {                                                       \
    if (err && errlen) snprintf(err, errlen, __VA_ARGS__);   \
    return rc;                                               \
  } while (0)
// `rows_buf` is the gather's output or the scatter's source.
inline int check_rows(const char* what, const void* table, const void* index, const void* rows_buf, int64_t n,
                      int64_t row_bytes, int64_t row_stride, int index_width, int w, int g, char* err,
                      size_t errlen) {
  if (n < 0) HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "index count %lld is negative", static_cast<long long>(n));
  if (n == 0) return HAULER_GPU_OK;
  if (!table || !index || !rows_buf)
    HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "%s pointer is null", !table ? "table" : !index ? "index" : what);
  if (row_bytes <= 0 || row_stride < row_bytes)
    HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "row size %lld / stride %lld are not a valid row layout",
                       static_cast<long long>(row_bytes), static_cast<long long>(row_stride));
  if (index_width != 4 && index_width != 8)
    HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "index width %d is not 4 or 8", index_width);
  if (w != 1 && w != 2 && w != 4 && w != 8 && w != 16)
    HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "word size %d is not 1, 2, 4, 8 or 16", w);
  if (gather_word(table, row_stride, row_bytes, rows_buf) % w != 0)
    HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "word size %d does not divide the table address %p, the stride, the row "
                       "size %lld and the %s address %p", w, table, static_cast<long long>(row_bytes), what, rows_buf);
  if (g < 1 || g > 32 || (g & (g - 1)) != 0)
    HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "group of %d threads per row is not a power of two <= 32", g);
  return HAULER_GPU_OK;
}

inline int check_gather(const HaulerGatherArgs* a, char* err, size_t errlen) {
  if (!a) HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "gather arguments are null");
  return check_rows("output", a->table, a->index, a->out, a->n, a->row_bytes, a->row_stride, a->index_width, a->word,
                    a->group, err, errlen);
}

// The element size of a scatter op: 0 for assign, -1 for an unknown op.
HAULER_HD inline int scatter_elem_bytes(int op) {
  switch (op) {
    case HAULER_GPU_SCATTER_ASSIGN: return 0;
    case HAULER_GPU_SCATTER_ADD_F32: case HAULER_GPU_SCATTER_ADD_U32: return 4;
    case HAULER_GPU_SCATTER_ADD_F64: case HAULER_GPU_SCATTER_ADD_U64: return 8;
    default: return -1;
  }
}

inline int check_scatter(const HaulerScatterArgs* a, char* err, size_t errlen) {
  if (!a) HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "scatter arguments are null");
  const int e = scatter_elem_bytes(a->op);
  if (e < 0) HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "scatter op %d is unknown", static_cast<int>(a->op));
  if (e > 0 && a->word != e)
    HAULER_GCHECK_FAIL(HAULER_GPU_EINVAL, "an add of %d-byte elements needs %d-byte words, got %d", e, e,
                       static_cast<int>(a->word));
  return check_rows("source", a->table, a->index, a->src, a->n, a->row_bytes, a->row_stride, a->index_width, a->word,
                    a->group, err, errlen);
}
#undef HAULER_GCHECK_FAIL

}  // namespace hauler::gather
