#include "gather.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../common/checked.hpp"
#include "../common/copy.hpp"
#include "../common/settings.hpp"
#include "../common/status.hpp"
#include "../common/thread_pool.hpp"

namespace hauler::gather {

// ---- validation ---------------------------------------------------------------------------------

namespace {

template <class I>
[[noreturn]] void bad_index(const I* p, int64_t n, int64_t rows) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = p[i];
    if (v < 0)
      fail(Status::out_of_range, "index[" + std::to_string(i) + "] = " + std::to_string(v) +
                                     " is negative (a table of " + std::to_string(rows) + " rows takes 0.." +
                                     std::to_string(rows - 1) + ")");
    if (v >= rows)
      fail(Status::out_of_range, "index[" + std::to_string(i) + "] = " + std::to_string(v) +
                                     " is out of range for a table of " + std::to_string(rows) + " rows");
  }
  fail(Status::internal, "index check found a bad index it cannot locate");
}

// One branch-free pass (vectorized by the compiler) over [lo, hi): any index
// whose unsigned value is >= rows is negative or too large. Positions are
// found only on failure, by a second pass. Order facts include the pair
// (lo - 1, lo), so ranges combine.
struct Scan {
  bool bad = false, sorted = true, consecutive = true;
};

template <class I>
Scan scan_range(const I* p, int64_t lo, int64_t hi, int64_t rows, bool order) {
  using U = std::make_unsigned_t<I>;
  const uint64_t limit = static_cast<uint64_t>(rows);
  Scan r;
  constexpr int64_t kChunk = 4096;
  for (int64_t c = lo; c < hi; c += kChunk) {
    const int64_t e = std::min(hi, c + kChunk);
    uint64_t any = 0;
    if (limit > static_cast<uint64_t>(std::numeric_limits<U>::max())) {
      for (int64_t i = c; i < e; ++i) any |= static_cast<uint64_t>(p[i] < 0);
    } else {
      for (int64_t i = c; i < e; ++i) any |= static_cast<uint64_t>(static_cast<U>(p[i]) >= limit);
    }
    if (any) {
      r.bad = true;
      return r;
    }
    if (order && (r.sorted || r.consecutive)) {
      int descents = 0, gaps = 0;
      for (int64_t i = std::max<int64_t>(c, 1); i < e; ++i) {
        descents += p[i] < p[i - 1];
        gaps += static_cast<int64_t>(p[i]) != static_cast<int64_t>(p[i - 1]) + 1;
      }
      r.sorted = r.sorted && descents == 0;
      r.consecutive = r.consecutive && gaps == 0;
    }
  }
  return r;
}

// Index arrays of at least this many entries are checked by several threads.
constexpr int64_t kParallelCheck = int64_t(1) << 16;

template <class I>
void check_typed(const I* p, int64_t n, int64_t rows, IndexInfo* info, int threads) {
  Scan all;
  if (threads > 1 && n >= kParallelCheck) {
    std::vector<Scan> parts(static_cast<size_t>(threads));
    const int64_t per = (n + threads - 1) / threads;
    parallel_for(threads, [&](int k) {
      const int64_t lo = std::min(n, k * per), hi = std::min(n, lo + per);
      parts[static_cast<size_t>(k)] = scan_range(p, lo, hi, rows, info != nullptr);
    });
    for (const Scan& s : parts) {
      all.bad = all.bad || s.bad;
      all.sorted = all.sorted && s.sorted;
      all.consecutive = all.consecutive && s.consecutive;
    }
  } else {
    all = scan_range(p, 0, n, rows, info != nullptr);
  }
  if (all.bad) bad_index(p, n, rows);
  if (info) {
    info->sorted = all.sorted;
    info->consecutive = all.consecutive && n > 0;
  }
}

}  // namespace

void check_index(const Index& idx, int64_t rows, IndexInfo* info, int threads) {
  if (idx.n < 0) fail(Status::invalid_argument, "index count must be >= 0, got " + std::to_string(idx.n));
  if (idx.width != 4 && idx.width != 8)
    fail(Status::invalid_argument, "index elements must be 4 (int32) or 8 (int64) bytes, got " +
                                       std::to_string(idx.width));
  if (idx.n > 0 && idx.data == nullptr) fail(Status::invalid_argument, "index pointer is null");
  if (idx.width == 4) check_typed(static_cast<const int32_t*>(idx.data), idx.n, rows, info, threads);
  else check_typed(static_cast<const int64_t*>(idx.data), idx.n, rows, info, threads);
}

void check_table(const Table& t) {
  if (t.rows < 0) fail(Status::invalid_argument, "table rows must be >= 0, got " + std::to_string(t.rows));
  if (t.row_bytes <= 0)
    fail(Status::invalid_argument, "table row size must be > 0 bytes, got " + std::to_string(t.row_bytes));
  if (t.row_stride < t.row_bytes)
    fail(Status::invalid_argument, "table row stride " + std::to_string(t.row_stride) +
                                       " is smaller than the row size " + std::to_string(t.row_bytes));
  mul64(t.rows, t.row_stride, "table bytes");
  if (t.rows > 0 && t.data == nullptr) fail(Status::invalid_argument, "table pointer is null");
}

Elem elem_of(const std::string& c) {
  if (c == "f4") return Elem::f32;
  if (c == "f8") return Elem::f64;
  if (c == "i4") return Elem::i32;
  if (c == "i8") return Elem::i64;
  if (c == "u1") return Elem::u8;
  if (c == "i1") return Elem::i8;
  if (c == "i2") return Elem::i16;
  if (c == "u2") return Elem::u16;
  if (c == "u4") return Elem::u32;
  if (c == "u8") return Elem::u64;
  fail(Status::invalid_argument, "scatter with reduce='add' supports float32/64 and (u)int8..64 elements, not '" +
                                     c + "'");
}

// ---- row copies ---------------------------------------------------------------------------------

namespace {

template <int R>
using FixedRow = copy::Fixed<R>;
using AnyRow = copy::Bytes;
#if defined(__x86_64__)
// Non-temporal stores: the gathered batch is written once and read later (by the training step
// or a copy to the GPU). Rows of a multiple of 16 B into a 16-byte aligned output.
using StreamRow = copy::Stream16;
#endif

// Rows up to 1 KiB are prefetched whole (17 lines: 16 plus the one an
// unaligned row straddles into): measured single-threaded on a 1 GiB table,
// 1 KiB rows went from ~10.4 to ~12.7 GB/s against 8 lines; 2-4 KiB rows
// gained nothing from more (the hardware streamer follows within a row).
constexpr int kMaxPrefetchLines = 17;

// Gathers positions [lo, hi) of the index into `out` (row lo first),
// prefetching the rows `pf` positions ahead (their first `lines` cache lines;
// the hardware streamer follows on within longer rows).
template <class C, class I>
void gather_range(const C& c, const Table& t, const I* idx, int64_t lo, int64_t hi, uint8_t* out, int pf) {
  const uint8_t* base = t.data;
  const int64_t stride = t.row_stride, r = c.bytes();
  const int lines = static_cast<int>(std::min<int64_t>((r + 63) / 64 + 1, kMaxPrefetchLines));
  int64_t i = lo;
  if (pf > 0) {
    const int64_t stop = hi - pf;
    for (; i < stop; ++i, out += r) {
      const uint8_t* ahead = base + static_cast<int64_t>(idx[i + pf]) * stride;
      for (int l = 0; l < lines; ++l) __builtin_prefetch(ahead + 64 * l, 0, 3);
      c(out, base + static_cast<int64_t>(idx[i]) * stride);
    }
  }
  for (; i < hi; ++i, out += r) c(out, base + static_cast<int64_t>(idx[i]) * stride);
}

template <class I>
void gather_dispatch(const Table& t, const I* idx, int64_t lo, int64_t hi, uint8_t* out, int pf, bool nt) {
  const int64_t r = t.row_bytes;
#if defined(__x86_64__)
  if (nt && r % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0) {
    gather_range(StreamRow{r}, t, idx, lo, hi, out, pf);
    _mm_sfence();  // streaming stores are weakly ordered: publish them before returning
    return;
  }
#endif
  switch (r) {
    case 4: return gather_range(FixedRow<4>{}, t, idx, lo, hi, out, pf);
    case 8: return gather_range(FixedRow<8>{}, t, idx, lo, hi, out, pf);
    case 12: return gather_range(FixedRow<12>{}, t, idx, lo, hi, out, pf);
    case 16: return gather_range(FixedRow<16>{}, t, idx, lo, hi, out, pf);
    case 32: return gather_range(FixedRow<32>{}, t, idx, lo, hi, out, pf);
    case 64: return gather_range(FixedRow<64>{}, t, idx, lo, hi, out, pf);
    case 128: return gather_range(FixedRow<128>{}, t, idx, lo, hi, out, pf);
    case 256: return gather_range(FixedRow<256>{}, t, idx, lo, hi, out, pf);
    default: return gather_range(AnyRow{r}, t, idx, lo, hi, out, pf);
  }
}

struct Split {
  int pieces;
  int64_t per;
};

// Pieces of whole rows for the pool: one per thread once the call moves at
// least HAULER_GATHER_PARALLEL_MIN bytes.
Split split(int64_t n, int64_t row_bytes, int threads) {
  if (threads <= 0) threads = settings::gather_threads();
  const int64_t bytes = n * row_bytes;
  if (threads <= 1 || n < 2 || bytes < settings::gather_parallel_min()) return {n > 0 ? 1 : 0, n};
  const int64_t per = (n + threads - 1) / threads;
  return {static_cast<int>((n + per - 1) / per), per};
}

// Runs fn(lo, hi) over [0, n) in chunks of at least 256 KiB of rows, which
// the split's threads take from a shared counter: a thread slowed down (a
// busy core, a page fault) takes fewer chunks instead of holding up the call.
template <class F>
void for_chunks(const Split& sp, int64_t n, int64_t row_bytes, const F& fn) {
  if (sp.pieces <= 1) {
    if (n > 0) fn(int64_t(0), n);
    return;
  }
  const int64_t min_rows = std::max<int64_t>(1, (int64_t(256) << 10) / row_bytes);
  const int64_t chunk = std::max(min_rows, (n + 8 * sp.pieces - 1) / (8 * sp.pieces));
  const int64_t nchunks = (n + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  parallel_for(sp.pieces, [&](int) {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < nchunks;
         c = next.fetch_add(1, std::memory_order_relaxed))
      fn(c * chunk, std::min(n, (c + 1) * chunk));
  });
}

// Default 16 MiB (HAULER_GATHER_STREAM_MIN): on a 2-core EPYC VM (32 MiB L3)
// non-temporal stores made 16-32 MiB random gathers of 256 B-1 KiB rows
// 2-34% faster; below that the output may still be cache-resident.
bool use_stream(const Options& o, int64_t bytes) {
  if (o.stream >= 0) return o.stream != 0;
  return bytes >= settings::gather_stream_min();
}

}  // namespace

const char* copy_kind(int64_t r, bool stream) {
  if (stream && r % 16 == 0) return "stream16";
  switch (r) {
    case 4: case 8: case 12: case 16: case 32: case 64: case 128: case 256: return "fixed";
    default: return "memcpy";
  }
}

void gather(const Table& t, const Index& idx, uint8_t* out, const Options& o) {
  check_table(t);
  if (idx.n < 0) fail(Status::invalid_argument, "index count must be >= 0, got " + std::to_string(idx.n));
  const int64_t bytes = mul64(idx.n, t.row_bytes, "gathered bytes");
  const Split sp = split(idx.n, t.row_bytes, o.threads);
  IndexInfo info;
  check_index(idx, t.rows, &info, sp.pieces);  // every index, before any byte is written
  if (idx.n == 0) return;
  if (out == nullptr) fail(Status::invalid_argument, "output pointer is null");
  const bool nt = use_stream(o, bytes);
  // Prefetch distance: HAULER_GATHER_PREFETCH bytes of rows ahead, as rows (2..64).
  const int64_t ahead = o.prefetch >= 0 ? o.prefetch : settings::gather_prefetch();
  const int pf = ahead == 0 ? 0 : static_cast<int>(std::clamp<int64_t>(ahead / t.row_bytes, 2, 64));
  if (info.consecutive && t.row_stride == t.row_bytes) {
    // A slice of the table: one contiguous copy, split over the pool.
    const uint8_t* src = t.data + idx.at(0) * t.row_bytes;
    for_chunks(sp, idx.n, t.row_bytes, [&](int64_t lo, int64_t hi) {
      std::memcpy(out + lo * t.row_bytes, src + lo * t.row_bytes, static_cast<size_t>((hi - lo) * t.row_bytes));
    });
    return;
  }
  for_chunks(sp, idx.n, t.row_bytes, [&](int64_t lo, int64_t hi) {
    uint8_t* o_at = out + lo * t.row_bytes;
    if (idx.width == 4) gather_dispatch(t, static_cast<const int32_t*>(idx.data), lo, hi, o_at, pf, nt);
    else gather_dispatch(t, static_cast<const int64_t*>(idx.data), lo, hi, o_at, pf, nt);
  });
}

// ---- scatter ------------------------------------------------------------------------------------

std::vector<uint8_t> last_writers(const Index& idx, int64_t rows, bool* any_dup) {
  std::vector<uint8_t> win(static_cast<size_t>(idx.n), 1);
  *any_dup = false;
  // A bitmap of the table's rows when it is not much larger than the index;
  // otherwise sort (row, position) pairs.
  if (rows / 64 <= std::max<int64_t>(int64_t(1) << 18, 4 * idx.n)) {
    std::vector<uint64_t> seen(static_cast<size_t>(rows / 64 + 1), 0);
    for (int64_t i = idx.n - 1; i >= 0; --i) {
      const int64_t v = idx.at(i);
      uint64_t& w = seen[static_cast<size_t>(v >> 6)];
      const uint64_t bit = uint64_t(1) << (v & 63);
      if (w & bit) {
        win[static_cast<size_t>(i)] = 0;
        *any_dup = true;
      }
      w |= bit;
    }
    return win;
  }
  std::vector<std::pair<int64_t, int64_t>> pairs(static_cast<size_t>(idx.n));
  for (int64_t i = 0; i < idx.n; ++i) pairs[static_cast<size_t>(i)] = {idx.at(i), i};
  std::sort(pairs.begin(), pairs.end());
  for (size_t k = 0; k + 1 < pairs.size(); ++k)
    if (pairs[k].first == pairs[k + 1].first) {
      win[static_cast<size_t>(pairs[k].second)] = 0;
      *any_dup = true;
    }
  return win;
}

namespace {

template <class T>
void add_row(uint8_t* d, const uint8_t* s, int64_t count) {
  typedef T __attribute__((aligned(1), may_alias)) UT;
  UT* dp = reinterpret_cast<UT*>(d);
  const UT* sp = reinterpret_cast<const UT*>(s);
  if constexpr (std::is_integral_v<T>) {
    // Integers wrap (as numpy's do): add as unsigned, where overflow is defined.
    using U = std::make_unsigned_t<T>;
    for (int64_t e = 0; e < count; ++e)
      dp[e] = static_cast<T>(static_cast<U>(static_cast<U>(dp[e]) + static_cast<U>(sp[e])));
  } else {
    for (int64_t e = 0; e < count; ++e) dp[e] = dp[e] + sp[e];
  }
}

using AddFn = void (*)(uint8_t*, const uint8_t*, int64_t);

AddFn add_fn(Elem e, int* size) {
  switch (e) {
    case Elem::f32: *size = 4; return add_row<float>;
    case Elem::f64: *size = 8; return add_row<double>;
    case Elem::i32: *size = 4; return add_row<int32_t>;
    case Elem::i64: *size = 8; return add_row<int64_t>;
    case Elem::u8: *size = 1; return add_row<uint8_t>;
    case Elem::i8: *size = 1; return add_row<int8_t>;
    case Elem::i16: *size = 2; return add_row<int16_t>;
    case Elem::u16: *size = 2; return add_row<uint16_t>;
    case Elem::u32: *size = 4; return add_row<uint32_t>;
    case Elem::u64: *size = 8; return add_row<uint64_t>;
  }
  *size = 1;
  return nullptr;
}

}  // namespace

void scatter(const Table& t, const Index& idx, const uint8_t* src, Reduce red, Elem e, const Options& o) {
  check_table(t);
  check_index(idx, t.rows, nullptr);
  int esize = 1;
  AddFn add = red == Reduce::add ? add_fn(e, &esize) : nullptr;
  if (red == Reduce::add && t.row_bytes % esize != 0)
    fail(Status::invalid_argument, "row size " + std::to_string(t.row_bytes) + " is not a multiple of the " +
                                       std::to_string(esize) + "-byte element of reduce='add'");
  if (idx.n == 0) return;
  if (src == nullptr) fail(Status::invalid_argument, "source pointer is null");
  mul64(idx.n, t.row_bytes, "scattered bytes");
  const int64_t r = t.row_bytes, stride = t.row_stride;
  bool dup = false;
  std::vector<uint8_t> win = last_writers(idx, t.rows, &dup);
  const Split sp = split(idx.n, r, o.threads);
  if (red == Reduce::assign) {
    // Only the last writer of each row writes: deterministic under any split.
    for_chunks(sp, idx.n, r, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i)
        if (!dup || win[static_cast<size_t>(i)])
          std::memcpy(t.data + idx.at(i) * stride, src + i * r, static_cast<size_t>(r));
    });
    return;
  }
  const int64_t count = r / esize;
  if (!dup) {
    for_chunks(sp, idx.n, r, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) add(t.data + idx.at(i) * stride, src + i * r, count);
    });
    return;
  }
  // Duplicates: each piece owns a range of table rows and adds, in index
  // order, every position naming one of its rows (no two threads touch a row).
  const int pieces = sp.pieces;
  parallel_for(pieces, [&](int k) {
    const int64_t rlo = t.rows * k / pieces, rhi = t.rows * (k + 1) / pieces;
    for (int64_t i = 0; i < idx.n; ++i) {
      const int64_t v = idx.at(i);
      if (v >= rlo && v < rhi) add(t.data + v * stride, src + i * r, count);
    }
  });
}

}  // namespace hauler::gather
