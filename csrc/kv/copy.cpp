#include "copy.hpp"

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "../common/copy.hpp"
#include "../common/settings.hpp"
#include "../common/status.hpp"
#include "../common/thread_pool.hpp"
#include "kv_index.cuh"

namespace hauler::kv {

int64_t segments_bytes(const Segment* segs, int64_t n) {
  int64_t t = 0;
  for (int64_t i = 0; i < n; ++i) t += segs[i].n;
  return t;
}

void check_disjoint(const Segment* segs, int64_t n) {
  struct Iv {
    int64_t lo, hi;
    bool dst;
  };
  std::vector<Iv> iv;
  iv.reserve(static_cast<size_t>(2 * n));
  for (int64_t i = 0; i < n; ++i) {
    if (segs[i].n <= 0) continue;
    iv.push_back({segs[i].src, segs[i].src + segs[i].n, false});
    iv.push_back({segs[i].dst, segs[i].dst + segs[i].n, true});
  }
  std::sort(iv.begin(), iv.end(), [](const Iv& a, const Iv& b) { return a.lo < b.lo; });
  // Sources may overlap each other (repeated blocks); a destination may overlap nothing.
  int64_t src_end = INT64_MIN, dst_end = INT64_MIN, dst_lo = 0;
  for (const Iv& v : iv) {
    if (v.dst) {
      if (v.lo < src_end || v.lo < dst_end)
        fail(Status::invalid_argument, "destination bytes [" + std::to_string(v.lo) + ", " + std::to_string(v.hi) +
                                           ") are also " + (v.lo < dst_end ? "written" : "read") +
                                           " by another piece of the plan: a block both read and written in one move");
      dst_end = v.hi;
      dst_lo = v.lo;
    } else {
      if (v.lo < dst_end)
        fail(Status::invalid_argument, "source bytes [" + std::to_string(v.lo) + ", " + std::to_string(v.hi) +
                                           ") overlap destination bytes from " + std::to_string(dst_lo) +
                                           " of the same plan: a block both read and written in one move");
      src_end = std::max(src_end, v.hi);
    }
  }
}

namespace {

// One piece. Element-sized pieces are fixed-size moves, not calls.
inline void copy_piece(int64_t dst, int64_t src, int64_t n, bool nt) {
  void* d = reinterpret_cast<void*>(dst);
  const void* s = reinterpret_cast<const void*>(src);
  switch (n) {
    case 1: std::memcpy(d, s, 1); return;
    case 2: std::memcpy(d, s, 2); return;
    case 4: std::memcpy(d, s, 4); return;
    case 8: std::memcpy(d, s, 8); return;
    case 16: std::memcpy(d, s, 16); return;
    default: break;
  }
#if defined(__x86_64__)
  // large outputs bypass the cache (read later by someone else: no read-for-ownership)
  if (nt && n >= 256 && (dst | n) % 16 == 0)
    return copy::Stream16{n}(static_cast<uint8_t*>(d), static_cast<const uint8_t*>(s));
#else
  (void)nt;
#endif
  std::memcpy(d, s, static_cast<size_t>(n));
}

// The first lines of the next piece's source: KV pieces start at random
// blocks, where the hardware prefetcher needs a few misses to catch on.
inline void prefetch_piece(const Segment& g) {
  const char* p = reinterpret_cast<const char*>(g.src);
  const int64_t lines = std::min<int64_t>((g.n + 63) / 64, 8);
  for (int64_t l = 0; l < lines; ++l) __builtin_prefetch(p + 64 * l, 0, 3);
}

// Copies bytes [lo, hi) of the concatenated pieces; `start` holds each piece's
// first byte in that concatenation.
void copy_range(const Segment* segs, int64_t n, const std::vector<int64_t>& start, int64_t lo, int64_t hi, bool nt) {
  int64_t i = std::upper_bound(start.begin(), start.end(), lo) - start.begin() - 1;
  for (; lo < hi; ++i) {
    const Segment& g = segs[i];
    if (i + 1 < n) prefetch_piece(segs[i + 1]);
    const int64_t off = lo - start[i], len = std::min(g.n - off, hi - lo);
    copy_piece(g.dst + off, g.src + off, len, nt);
    lo += len;
  }
}

// Box pieces of a fixed size W (0: b.unit bytes), axis `in` innermost, in
// (mid x in) tiles of kTile x kTile pieces, so the lines a transposing tile
// reads and writes stay in L1 until it is done.
template <int W>
void box_loops(const Box& b, int out, int mid, int in) {
  constexpr int64_t kTile = 16;
  const size_t w = W ? W : static_cast<size_t>(b.unit);
  auto* const sb = reinterpret_cast<const uint8_t*>(b.src);
  auto* const db = reinterpret_cast<uint8_t*>(b.dst);
  for (int64_t o = 0; o < b.n[out]; ++o)
    for (int64_t m0 = 0; m0 < b.n[mid]; m0 += kTile) {
      const int64_t m1 = std::min(m0 + kTile, b.n[mid]);
      for (int64_t i0 = 0; i0 < b.n[in]; i0 += kTile) {
        const int64_t i1 = std::min(i0 + kTile, b.n[in]);
        for (int64_t m = m0; m < m1; ++m) {
          const uint8_t* s = sb + o * b.ss[out] + m * b.ss[mid];
          uint8_t* d = db + o * b.ds[out] + m * b.ds[mid];
          for (int64_t i = i0; i < i1; ++i) std::memcpy(d + i * b.ds[in], s + i * b.ss[in], W ? W : w);
        }
      }
    }
}

}  // namespace

void copy_box(const Box& b) {
  if (b.n[0] <= 0 || b.n[1] <= 0 || b.n[2] <= 0) return;
  int out = 0, mid = 1, in = 2;
  kv_box_axes(b.n, b.ss, b.ds, &out, &mid, &in);
  switch (b.unit) {
    case 1: return box_loops<1>(b, out, mid, in);
    case 2: return box_loops<2>(b, out, mid, in);
    case 4: return box_loops<4>(b, out, mid, in);
    case 8: return box_loops<8>(b, out, mid, in);
    case 16: return box_loops<16>(b, out, mid, in);
    default: return box_loops<0>(b, out, mid, in);
  }
}

void copy_moves(const Segment* segs, int64_t n, const Box* boxes, int64_t nboxes, int threads) {
  const int64_t seg_total = segments_bytes(segs, n);
  std::vector<int64_t> box_start(static_cast<size_t>(nboxes));  // first byte of each box, after the pieces
  int64_t total = seg_total;
  for (int64_t i = 0; i < nboxes; ++i) {
    box_start[i] = total;
    total += box_bytes(boxes[i]);
  }
  if (threads <= 0) threads = total < kParallelMin ? 1 : settings::threads();
  const bool nt = total >= settings::pack_stream_min();
  if (threads <= 1 || total < settings::pack_parallel_min() || total < 2 * 4096) {
    for (int64_t i = 0; i < n; ++i) {
      if (i + 1 < n) prefetch_piece(segs[i + 1]);
      copy_piece(segs[i].dst, segs[i].src, segs[i].n, nt);
    }
    for (int64_t i = 0; i < nboxes; ++i) copy_box(boxes[i]);
  } else {
    std::vector<int64_t> start(static_cast<size_t>(n));
    int64_t acc = 0;
    for (int64_t i = 0; i < n; ++i) {
      start[i] = acc;
      acc += segs[i].n;
    }
    // Equal byte ranges of at least 4 KiB each, whatever the piece sizes; a
    // box goes whole to the range holding its first byte.
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, total / 4096));
    parallel_for(static_cast<int>(parts), [&](int k) {
      const int64_t lo = total * k / parts, hi = total * (k + 1) / parts;
      if (lo < std::min(hi, seg_total)) copy_range(segs, n, start, lo, std::min(hi, seg_total), nt);
      for (auto i = std::lower_bound(box_start.begin(), box_start.end(), lo) - box_start.begin();
           i < nboxes && box_start[i] < hi; ++i)
        copy_box(boxes[i]);
    });
  }
#if defined(__x86_64__)
  if (nt) _mm_sfence();  // streaming stores are weakly ordered: publish them before returning
#endif
}

}  // namespace hauler::kv
