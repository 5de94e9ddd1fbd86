#include "copy.hpp"

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "../common/settings.hpp"
#include "../common/status.hpp"
#include "../common/thread_pool.hpp"

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
// One piece. Transposing moves (vLLM's legacy value cache <-> token-major)
// are pieces of one element or one x group: fixed-size copies, not calls.
inline void copy_piece(int64_t dst, int64_t src, int64_t n) {
  void* d = reinterpret_cast<void*>(dst);
  const void* s = reinterpret_cast<const void*>(src);
  switch (n) {
    case 1: std::memcpy(d, s, 1); return;
    case 2: std::memcpy(d, s, 2); return;
    case 4: std::memcpy(d, s, 4); return;
    case 8: std::memcpy(d, s, 8); return;
    case 16: std::memcpy(d, s, 16); return;
    default: std::memcpy(d, s, static_cast<size_t>(n)); return;
  }
}

// Copies bytes [lo, hi) of the concatenated pieces; `start` holds each piece's
// first byte in that concatenation.
void copy_range(const Segment* segs, const std::vector<int64_t>& start, int64_t lo, int64_t hi) {
  int64_t i = std::upper_bound(start.begin(), start.end(), lo) - start.begin() - 1;
  for (; lo < hi; ++i) {
    const Segment& g = segs[i];
    const int64_t off = lo - start[i], n = std::min(g.n - off, hi - lo);
    copy_piece(g.dst + off, g.src + off, n);
    lo += n;
  }
}
}  // namespace

void copy_segments(const Segment* segs, int64_t n, int threads) {
  if (threads <= 0) threads = settings::threads();
  const int64_t total = segments_bytes(segs, n);
  if (threads <= 1 || total < settings::pack_parallel_min() || total < 2 * 4096) {
    for (int64_t i = 0; i < n; ++i) copy_piece(segs[i].dst, segs[i].src, segs[i].n);
    return;
  }
  std::vector<int64_t> start(static_cast<size_t>(n));
  int64_t acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    start[i] = acc;
    acc += segs[i].n;
  }
  // Equal byte ranges of at least 4 KiB each, whatever the piece sizes.
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, total / 4096));
  parallel_for(static_cast<int>(parts), [&](int k) {
    const int64_t lo = total * k / parts, hi = total * (k + 1) / parts;
    if (lo < hi) copy_range(segs, start, lo, hi);
  });
}

}  // namespace hauler::kv
