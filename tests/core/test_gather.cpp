// The row gather core: host gather/scatter against a byte-by-byte reference
// (random row sizes 1..4100 bytes, unaligned tables and outputs, int32/int64
// indices with duplicates, sorted runs and slices, 1 or 2 threads, streaming
// stores on and off), index validation before any write, and the GPU gather
// kernel through the host emulation of its grid (gather_index.cuh): every
// output byte written exactly once, nothing else, and every step of a row
// group reading inside one aligned line (the circular shift).
//
// Env: HAULER_TEST_SEED (default: random, printed), HAULER_TEST_CASES (default 400).
// Last line: "N passed, M failed"; exit status 1 on any failure.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/gpu.hpp"
#include "common/settings.hpp"
#include "common/status.hpp"
#include "common/gpu_emulation.hpp"
#include "gather/gather.hpp"
#include "gather/gather_index.cuh"
#include "gather/gpu_gather.hpp"

using namespace hauler;
using namespace hauler::gather;

namespace {

int g_passed = 0, g_failed = 0, g_reported = 0;
std::mt19937_64 g_rng;

void report(bool ok, const std::string& what) {
  if (ok) { ++g_passed; return; }
  ++g_failed;
  if (g_reported++ < 25) std::printf("FAIL: %s\n", what.c_str());
}
#define CHECK(cond, msg) report((cond), std::string(msg) + "  [" #cond "]")

int64_t rnd(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(g_rng); }

// ---- emulation hooks --------------------------------------------------------------------------
struct Tracker {
  uint8_t* lo = nullptr;
  uint8_t* hi = nullptr;
  std::vector<uint32_t> counts;
  int64_t stray = 0;
  // (row, step) -> [min, max] address loaded
  std::map<std::pair<int64_t, int64_t>, std::pair<uintptr_t, uintptr_t>> steps;
} g_t;

void store_hook(const void* dst, int bytes) {
  auto* p = static_cast<const uint8_t*>(dst);
  if (p < g_t.lo || p + bytes > g_t.hi) { ++g_t.stray; return; }
  for (int i = 0; i < bytes; ++i) ++g_t.counts[static_cast<size_t>(p - g_t.lo + i)];
}

void load_hook(const void* src, int bytes, int64_t row, int64_t step, int) {
  auto a = reinterpret_cast<uintptr_t>(src);
  auto& e = g_t.steps[{row, step}];
  if (e.first == 0 && e.second == 0) e = {a, a + bytes};
  e.first = std::min(e.first, a);
  e.second = std::max(e.second, a + static_cast<uintptr_t>(bytes));
}

// Counts the emulation's stores into `buf` (and any outside it) from now on.
void track(std::vector<uint8_t>& buf) {
  g_t.lo = buf.data();
  g_t.hi = buf.data() + buf.size();
  g_t.counts.assign(buf.size(), 0);
  g_t.stray = 0;
  g_t.steps.clear();
}

struct Case {
  int64_t rows, row_bytes, row_stride, n;
  int width;
  int toff, ooff;  // misalignment of the table and the output
  std::string shape;
};

std::vector<int64_t> make_index(int64_t n, int64_t rows, const std::string& shape) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  if (shape == "slice") {
    int64_t a = rnd(0, rows - std::min(rows, n));
    for (int64_t i = 0; i < n; ++i) v[i] = std::min(rows - 1, a + i);
  } else if (shape == "dups") {
    int64_t k = rnd(1, std::max<int64_t>(1, std::min<int64_t>(rows, 4)));
    for (auto& x : v) x = rnd(0, k - 1);
  } else {
    for (auto& x : v) x = rnd(0, rows - 1);
    if (shape == "sorted") std::sort(v.begin(), v.end());
  }
  return v;
}

// Index storage of the case's width.
struct IndexBuf {
  std::vector<int32_t> i32;
  std::vector<int64_t> i64;
  Index view(int width, int64_t n) const {
    return Index{width == 4 ? static_cast<const void*>(i32.data()) : static_cast<const void*>(i64.data()), n, width};
  }
};

IndexBuf index_buf(const std::vector<int64_t>& v) {
  IndexBuf b;
  b.i64 = v;
  b.i32.assign(v.begin(), v.end());
  return b;
}

void host_gather_case(const Case& c, int threads, int stream) {
  std::vector<uint8_t> tbuf(static_cast<size_t>(c.rows * c.row_stride + 64));
  for (auto& x : tbuf) x = static_cast<uint8_t>(rnd(0, 255));
  Table t{tbuf.data() + c.toff, c.rows, c.row_bytes, c.row_stride};
  auto v = make_index(c.n, c.rows, c.shape);
  auto ib = index_buf(v);
  const int64_t bytes = c.n * c.row_bytes;
  std::vector<uint8_t> out(static_cast<size_t>(bytes + 128), 0xA5);
  gather::gather(t, ib.view(c.width, c.n), out.data() + c.ooff, Options{threads, stream, -1});
  bool ok = true;
  for (int64_t i = 0; i < c.n && ok; ++i)
    ok = std::memcmp(out.data() + c.ooff + i * c.row_bytes, t.data + v[i] * c.row_stride, c.row_bytes) == 0;
  for (int64_t k = 0; k < c.ooff; ++k) ok = ok && out[k] == 0xA5;
  for (size_t k = c.ooff + bytes; k < out.size(); ++k) ok = ok && out[k] == 0xA5;
  char msg[200];
  std::snprintf(msg, sizeof msg, "host gather rows=%" PRId64 " row=%" PRId64 " stride=%" PRId64 " n=%" PRId64
                " w=%d %s threads=%d stream=%d", c.rows, c.row_bytes, c.row_stride, c.n, c.width, c.shape.c_str(),
                threads, stream);
  CHECK(ok, msg);
}

void scatter_case(const Case& c, Reduce red, int threads) {
  // float32 rows for add (row bytes a multiple of 4), bytes for assign
  const int64_t rb = red == Reduce::add ? std::max<int64_t>(4, c.row_bytes / 4 * 4) : c.row_bytes;
  const int64_t stride = std::max(c.row_stride, rb);
  std::vector<uint8_t> tb(static_cast<size_t>(c.rows * stride));
  std::vector<uint8_t> src(static_cast<size_t>(c.n * rb));
  if (red == Reduce::add) {
    for (int64_t k = 0; k + 4 <= static_cast<int64_t>(tb.size()); k += 4) {
      float f = static_cast<float>(rnd(-1000, 1000)) / 7.0f;
      std::memcpy(&tb[k], &f, 4);
    }
    for (int64_t k = 0; k + 4 <= static_cast<int64_t>(src.size()); k += 4) {
      float f = static_cast<float>(rnd(-1000, 1000)) / 3.0f;
      std::memcpy(&src[k], &f, 4);
    }
  } else {
    for (auto& x : tb) x = static_cast<uint8_t>(rnd(0, 255));
    for (auto& x : src) x = static_cast<uint8_t>(rnd(0, 255));
  }
  std::vector<uint8_t> ref = tb;
  auto v = make_index(c.n, c.rows, c.shape);
  auto ib = index_buf(v);
  for (int64_t i = 0; i < c.n; ++i) {  // the sequential definition
    uint8_t* d = ref.data() + v[i] * stride;
    if (red == Reduce::assign) std::memcpy(d, src.data() + i * rb, rb);
    else
      for (int64_t e = 0; e < rb / 4; ++e) {
        float a, b;
        std::memcpy(&a, d + 4 * e, 4);
        std::memcpy(&b, src.data() + i * rb + 4 * e, 4);
        a += b;
        std::memcpy(d + 4 * e, &a, 4);
      }
  }
  Table t{tb.data(), c.rows, rb, stride};
  scatter(t, ib.view(c.width, c.n), src.data(), red, Elem::f32, Options{threads, -1, -1});
  char msg[160];
  std::snprintf(msg, sizeof msg, "scatter %s rows=%" PRId64 " row=%" PRId64 " n=%" PRId64 " %s threads=%d",
                red == Reduce::add ? "add" : "assign", c.rows, rb, c.n, c.shape.c_str(), threads);
  CHECK(tb == ref, msg);
}

void emulated_gather_case(const Case& c, int sms, int max_blocks) {
  std::vector<uint8_t> tbuf(static_cast<size_t>(c.rows * c.row_stride + 256));
  for (auto& x : tbuf) x = static_cast<uint8_t>(rnd(0, 255));
  Table t{tbuf.data() + c.toff, c.rows, c.row_bytes, c.row_stride};
  auto v = make_index(c.n, c.rows, c.shape);
  auto ib = index_buf(v);
  const int64_t bytes = c.n * c.row_bytes;
  std::vector<uint8_t> out(static_cast<size_t>(bytes + 256), 0x5A);
  uint8_t* o = out.data() + c.ooff;
  track(out);
  gpu::set_emulated_sm_count(sms);
  gpu_gather(t, ib.view(c.width, c.n), o, nullptr, max_blocks);
  bool data_ok = true, once = true, outside = true;
  for (int64_t i = 0; i < c.n && data_ok; ++i)
    data_ok = std::memcmp(o + i * c.row_bytes, t.data + v[i] * c.row_stride, c.row_bytes) == 0;
  for (size_t k = 0; k < out.size(); ++k) {
    const bool inside = static_cast<int64_t>(k) >= c.ooff && static_cast<int64_t>(k) < c.ooff + bytes;
    if (inside) once = once && g_t.counts[k] == 1;
    else outside = outside && g_t.counts[k] == 0 && out[k] == 0x5A;
  }
  // Circular shift: the loads of one group step lie within one aligned unit.
  const GpuChoice ch = gpu_choice(t, o);
  const int64_t unit = shift_unit(ch.group, ch.word);
  const int64_t span = static_cast<int64_t>(ch.group) * ch.word;
  bool aligned = true;
  for (const auto& kv : g_t.steps) {
    const uintptr_t base = kv.second.first - kv.second.first % static_cast<uintptr_t>(unit);
    aligned = aligned && kv.second.second <= base + static_cast<uintptr_t>(span);
  }
  char msg[220];
  std::snprintf(msg, sizeof msg, "emulated gather rows=%" PRId64 " row=%" PRId64 " stride=%" PRId64 " n=%" PRId64
                " w=%d toff=%d ooff=%d %s sms=%d cap=%d word=%d group=%d", c.rows, c.row_bytes, c.row_stride, c.n,
                c.width, c.toff, c.ooff, c.shape.c_str(), sms, max_blocks, ch.word, ch.group);
  CHECK(data_ok, std::string(msg) + " data");
  CHECK(once, std::string(msg) + " each output byte written once");
  CHECK(outside && g_t.stray == 0, std::string(msg) + " nothing outside written");
  CHECK(aligned, std::string(msg) + " group steps inside aligned lines");
}

// The GPU scatter through the emulation against the host scatter, byte for
// byte: assign (bytes; duplicates resolved on the host, so each table byte is
// written at most once) and add (float32 holding small integers, exact in any
// order, or int64 wrapping).
void emulated_scatter_case(const Case& c, Reduce red, Elem e, int sms, int max_blocks) {
  const int64_t es = red == Reduce::add ? (e == Elem::f32 ? 4 : 8) : 1;
  const int64_t rb = std::max<int64_t>(es, c.row_bytes / es * es);
  const int64_t stride = std::max<int64_t>(rb, c.row_stride / es * es);
  const int64_t toff = c.toff / es * es, soff = c.ooff / es * es;
  std::vector<uint8_t> host(static_cast<size_t>(c.rows * stride + 128)), src(static_cast<size_t>(c.n * rb + 128));
  auto fill = [&](std::vector<uint8_t>& b) {
    for (size_t k = 0; k + es <= b.size(); k += static_cast<size_t>(es)) {
      if (red == Reduce::add && e == Elem::f32) {
        float f = static_cast<float>(rnd(-1000, 1000));
        std::memcpy(&b[k], &f, 4);
      } else {
        for (int64_t j = 0; j < es; ++j) b[k + j] = static_cast<uint8_t>(rnd(0, 255));
      }
    }
  };
  fill(host);
  fill(src);
  std::vector<uint8_t> dev = host;
  auto v = make_index(c.n, c.rows, c.shape);
  auto ib = index_buf(v);
  scatter(Table{host.data() + toff, c.rows, rb, stride}, ib.view(c.width, c.n), src.data() + soff, red, e,
          Options{1, -1, -1});
  track(dev);
  gpu::set_emulated_sm_count(sms);
  gpu_scatter(Table{dev.data() + toff, c.rows, rb, stride}, ib.view(c.width, c.n), src.data() + soff, red, e, nullptr,
              max_blocks);
  bool once = true;
  for (uint32_t k : g_t.counts) once = once && k <= 1;
  char msg[220];
  std::snprintf(msg, sizeof msg, "emulated scatter %s rows=%" PRId64 " row=%" PRId64 " stride=%" PRId64 " n=%" PRId64
                " w=%d toff=%" PRId64 " soff=%" PRId64 " %s sms=%d cap=%d", red == Reduce::add ? "add" : "assign",
                c.rows, rb, stride, c.n, c.width, toff, soff, c.shape.c_str(), sms, max_blocks);
  CHECK(dev == host, std::string(msg) + " equals the host scatter");
  CHECK(g_t.stray == 0, std::string(msg) + " nothing outside the table written");
  if (red == Reduce::assign) CHECK(once, std::string(msg) + " each table byte written at most once");
}

Case random_case() {
  static const int64_t sizes[] = {1, 2, 3, 4, 8, 12, 16, 24, 32, 48, 64, 100, 128, 256, 384, 512, 1024, 4096, 4100};
  Case c;
  c.row_bytes = rnd(0, 3) == 0 ? rnd(1, 600) : sizes[rnd(0, sizeof sizes / sizeof sizes[0] - 1)];
  c.row_stride = c.row_bytes + (rnd(0, 3) == 0 ? rnd(0, 40) : 0);
  c.rows = rnd(1, 300);
  c.n = rnd(0, 3) == 0 ? rnd(0, 5) : rnd(1, 700);
  c.width = rnd(0, 1) ? 4 : 8;
  c.toff = static_cast<int>(rnd(0, 2) == 0 ? rnd(0, 63) : 0);
  c.ooff = static_cast<int>(rnd(0, 2) == 0 ? rnd(0, 63) : 0);
  static const char* shapes[] = {"random", "sorted", "slice", "dups"};
  c.shape = shapes[rnd(0, 3)];
  return c;
}

void validation_tests() {
  std::vector<uint8_t> tb(10 * 8, 7);
  Table t{tb.data(), 10, 8, 8};
  for (int width : {4, 8}) {
    for (int64_t bad : {int64_t(-1), int64_t(10), int64_t(1) << 40, int64_t(-5)}) {
      if (width == 4 && (bad > INT32_MAX)) continue;
      std::vector<int64_t> v = {1, 2, 3, bad, 4};
      auto ib = index_buf(v);
      std::vector<uint8_t> out(5 * 8, 0xA5);
      std::string msg;
      Status st = Status::ok;
      try {
        gather::gather(t, ib.view(width, 5), out.data(), Options{2, -1, -1});
      } catch (const Error& e) {
        st = e.status();
        msg = e.what();
      }
      const std::string want = "index[3] = " + std::to_string(bad);
      CHECK(st == Status::out_of_range && msg.find(want) != std::string::npos,
            "bad index " + std::to_string(bad) + " (width " + std::to_string(width) + "): '" + msg + "'");
      CHECK(std::all_of(out.begin(), out.end(), [](uint8_t x) { return x == 0xA5; }),
            "nothing written before a bad index is reported");
      std::vector<uint8_t> before = tb, src(5 * 8, 1);
      try {
        scatter(t, ib.view(width, 5), src.data(), Reduce::assign, Elem::u8);
      } catch (const Error&) {
      }
      CHECK(tb == before, "scatter with a bad index leaves the table as it was");
    }
  }
  // Long indices are checked by several threads: the first bad position is still the one named,
  // and order facts (a slice: one memcpy) hold across the ranges.
  {
    const int64_t n = 200000, rows = 300000;
    std::vector<uint8_t> big(static_cast<size_t>(rows * 4));
    for (size_t k = 0; k < big.size(); ++k) big[k] = static_cast<uint8_t>(k * 7);
    Table bt{big.data(), rows, 4, 4};
    for (int64_t at : {int64_t(150001), int64_t(99999), int64_t(100000), int64_t(0)}) {
      std::vector<int64_t> v(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) v[i] = 50000 + i;
      IndexInfo info;
      check_index(Index{v.data(), n, 8}, rows, &info, 2);
      CHECK(info.sorted && info.consecutive, "a long slice is seen as consecutive by two threads");
      std::swap(v[100000], v[100001]);
      check_index(Index{v.data(), n, 8}, rows, &info, 2);
      CHECK(!info.sorted && !info.consecutive, "a swap at the range boundary breaks the order");
      std::swap(v[100000], v[100001]);
      v[at] = rows + at;
      v[at + 7] = -1;
      std::string msg;
      try {
        check_index(Index{v.data(), n, 8}, rows, nullptr, 2);
      } catch (const Error& e) {
        msg = e.what();
      }
      CHECK(msg.find("index[" + std::to_string(at) + "] = " + std::to_string(rows + at)) == 0,
            "first bad of a long index: '" + msg + "'");
    }
    std::vector<int64_t> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[i] = 1000 + i;
    std::vector<uint8_t> out(static_cast<size_t>(n * 4));
    gather::gather(bt, Index{v.data(), n, 8}, out.data(), Options{2, -1, -1});
    CHECK(std::memcmp(out.data(), big.data() + 4000, out.size()) == 0, "long slice gathered by memcpy");
  }
  bool threw = false;
  try {
    gather::gather(t, Index{nullptr, 1, 2}, tb.data());
  } catch (const Error& e) {
    threw = e.status() == Status::invalid_argument;
  }
  CHECK(threw, "index width 2 rejected");
}

}  // namespace

int main() {
  uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("HAULER_TEST_SEED")) seed = std::strtoull(s, nullptr, 10);
  int cases = 400;
  if (const char* s = std::getenv("HAULER_TEST_CASES")) cases = std::atoi(s);
  std::printf("seed %" PRIu64 " (HAULER_TEST_SEED), %d cases\n", seed, cases);
  g_rng.seed(seed);
  settings::set_override("HAULER_GATHER_PARALLEL_MIN", 0);  // small calls split too
  validation_tests();
  for (int k = 0; k < cases; ++k) {
    Case c = random_case();
    host_gather_case(c, static_cast<int>(rnd(1, 3)), static_cast<int>(rnd(-1, 1)));
    Case s = c;
    scatter_case(s, rnd(0, 1) ? Reduce::add : Reduce::assign, static_cast<int>(rnd(1, 3)));
  }
  // The GPU kernel through the emulation (no GPU here or there: the same code).
  gpu::use_emulation(true);
  gather_store_hook = store_hook;
  gather_load_hook = load_hook;
  for (int k = 0; k < cases / 2; ++k) {
    Case c = random_case();
    c.n = std::min<int64_t>(c.n, 300);
    emulated_gather_case(c, static_cast<int>(rnd(1, 4)), static_cast<int>(rnd(0, 3) == 0 ? rnd(1, 3) : -1));
    const int sms = static_cast<int>(rnd(1, 4)), cap = static_cast<int>(rnd(0, 3) == 0 ? rnd(1, 3) : -1);
    emulated_scatter_case(c, Reduce::assign, Elem::u8, sms, cap);
    emulated_scatter_case(c, Reduce::add, rnd(0, 1) ? Elem::f32 : Elem::i64, sms, cap);
  }
  gather_store_hook = nullptr;
  gather_load_hook = nullptr;
  gpu::use_emulation(false);
  // Without a backend (no GPU, emulation off) the GPU gather says so.
  if (!gpu::available()) {
    std::vector<uint8_t> tb(64), out(64);
    int64_t one = 0;
    Status st = Status::ok;
    try {
      gpu_gather(Table{tb.data(), 1, 64, 64}, Index{&one, 1, 8}, out.data());
    } catch (const Error& e) {
      st = e.status();
    }
    CHECK(st == Status::no_device, "GPU gather without a GPU: no_device");
    st = Status::ok;
    try {
      gpu_scatter(Table{tb.data(), 1, 64, 64}, Index{&one, 1, 8}, out.data(), Reduce::assign, Elem::u8);
    } catch (const Error& e) {
      st = e.status();
    }
    CHECK(st == Status::no_device, "GPU scatter without a GPU: no_device");
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
