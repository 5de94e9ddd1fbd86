// Index math of the KV block-copy kernel, compiled by nvcc into kv_cuda.cu and
// by the host compiler into the grid emulator (kv_emulate.cpp), so the tests
// run the very code the GPU runs.
//
// One launch moves a whole plan: its pieces (src, dst, nbytes) are handed out
// to warps grid-stride (one piece per warp at a time: KV pieces are 256 B to
// MiBs, so a warp streams a piece with 32 lanes of the widest word dividing
// both addresses and the length). Addresses may be device memory or mapped
// pinned host memory (UVA), so device <-> host block sets are one launch too.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "../common/device_word.cuh"

// Plain data: the launch argument. At the entry point `segs` is host memory;
// the kernel receives a device copy.
struct HaulerKVCopyArgs {
  const int64_t* segs;  // n triples (src, dst, nbytes)
  int64_t n;
  int32_t max_blocks;   // cap on thread blocks; 0 = 4 per multiprocessor
  const int64_t* boxes; // nboxes rows of kKvBoxFields (plan.hpp's Box), after the n triples in the device copy
  int64_t nboxes;
};

namespace hauler::kv {

constexpr uint32_t kKvThreadsPerBlock = 256;
constexpr uint32_t kKvWarp = 32;

// The widest of 16/8/4/2/1 bytes dividing both addresses and the length.
HAULER_HD inline int kv_word(int64_t src, int64_t dst, int64_t n) {
  return word_align(static_cast<uint64_t>(src) | static_cast<uint64_t>(dst) | static_cast<uint64_t>(n));
}

// Grid for n pieces: one warp per piece up to the cap (4 blocks per
// multiprocessor keeps every SM busy; more only queues).
HAULER_HD inline void kv_launch_shape(int64_t n, int sms, int max_blocks, uint32_t* grid, uint32_t* block) {
  const int64_t warps_per_block = kKvThreadsPerBlock / kKvWarp;
  int64_t want = (n + warps_per_block - 1) / warps_per_block;
  int64_t cap = max_blocks > 0 ? max_blocks : 4 * (sms > 0 ? sms : 1);
  if (want > cap) want = cap;
  if (want < 1) want = 1;
  *grid = static_cast<uint32_t>(want);
  *block = kKvThreadsPerBlock;
}

// What thread `tid` of `nthreads` does: for every piece its warp takes, the
// words lane, lane + 32, ... of it. copy(dst, src, word) moves one word.
template <class Copy>
HAULER_HD inline void kv_copy_thread(const int64_t* segs, int64_t n, uint64_t tid, uint64_t nthreads, Copy copy) {
  const uint64_t warp = tid / kKvWarp, nwarps = nthreads / kKvWarp;
  const int64_t lane = static_cast<int64_t>(tid % kKvWarp);
  for (uint64_t i = warp; i < static_cast<uint64_t>(n); i += nwarps) {
    const int64_t src = segs[3 * i], dst = segs[3 * i + 1], len = segs[3 * i + 2];
    const int w = kv_word(src, dst, len);
    const int64_t words = len / w;
    for (int64_t k = lane; k < words; k += kKvWarp) copy(dst + k * w, src + k * w, w);
  }
}

// A box row: src, dst, unit, n[3], ss[3], ds[3] (plan.hpp's Box).
constexpr int kKvBoxFields = 12;

HAULER_HD inline int64_t kv_mag(int64_t v) { return v < 0 ? -v : v; }

// The loop order of a box: `in` the axis the destination is densest along
// (writes in order: coalesced on the GPU), `mid` the axis the source is
// densest along among the others (a tile of in x mid reads whole lines),
// `out` the third.
HAULER_HD inline void kv_box_axes(const int64_t* n, const int64_t* ss, const int64_t* ds, int* out, int* mid,
                                   int* in) {
  int a_in = 0;
  for (int a = 1; a < 3; ++a)
    if (n[a] > 1 && (n[a_in] == 1 || kv_mag(ds[a]) < kv_mag(ds[a_in]))) a_in = a;
  int a_mid = a_in == 0 ? 1 : 0;
  for (int a = 0; a < 3; ++a)
    if (a != a_in && n[a] > 1 && (n[a_mid] == 1 || kv_mag(ss[a]) < kv_mag(ss[a_mid]))) a_mid = a;
  *out = 3 - a_in - a_mid;
  *mid = a_mid;
  *in = a_in;
}

// What thread `tid` of `nthreads` does for the boxes: warps take boxes
// grid-stride; in a box, the warp walks tiles of 32 pieces along `in` by every
// `mid` row, lane j moving piece j of the tile's row, so a warp's stores are
// consecutive pieces and its loads stay in the tile's lines.
// Pieces wider than 16 bytes go word by word across the lanes instead.
template <class Copy>
HAULER_HD inline void kv_box_thread(const int64_t* boxes, int64_t nboxes, uint64_t tid, uint64_t nthreads,
                                     Copy copy) {
  const uint64_t warp = tid / kKvWarp, nwarps = nthreads / kKvWarp;
  const int64_t lane = static_cast<int64_t>(tid % kKvWarp);
  for (uint64_t b = warp; b < static_cast<uint64_t>(nboxes); b += nwarps) {
    const int64_t* r = boxes + b * kKvBoxFields;
    const int64_t src = r[0], dst = r[1], unit = r[2];
    const int64_t *n = r + 3, *ss = r + 6, *ds = r + 9;
    int out = 0, mid = 1, in = 2;
    kv_box_axes(n, ss, ds, &out, &mid, &in);
    if (unit > 16) {
      const int w = kv_word(src | ss[0] | ss[1] | ss[2], dst | ds[0] | ds[1] | ds[2], unit);
      for (int64_t o = 0; o < n[out]; ++o)
        for (int64_t m = 0; m < n[mid]; ++m)
          for (int64_t i = 0; i < n[in]; ++i) {
            const int64_t s0 = src + o * ss[out] + m * ss[mid] + i * ss[in];
            const int64_t d0 = dst + o * ds[out] + m * ds[mid] + i * ds[in];
            for (int64_t k = lane; k < unit / w; k += kKvWarp) copy(d0 + k * w, s0 + k * w, w);
          }
      continue;
    }
    const int w = kv_word(src | ss[0] | ss[1] | ss[2], dst | ds[0] | ds[1] | ds[2], unit);
    for (int64_t o = 0; o < n[out]; ++o)
      for (int64_t i0 = 0; i0 < n[in]; i0 += kKvWarp) {
        const int64_t i = i0 + lane;
        if (i >= n[in]) continue;
        for (int64_t m = 0; m < n[mid]; ++m) {
          const int64_t s0 = src + o * ss[out] + m * ss[mid] + i * ss[in];
          const int64_t d0 = dst + o * ds[out] + m * ds[mid] + i * ds[in];
          for (int64_t k = 0; k < unit; k += w) copy(d0 + k, s0 + k, w);
        }
      }
  }
}

}  // namespace hauler::kv
