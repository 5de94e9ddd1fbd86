// Core datatype engine tests, independent of Python and MPI: random nested
// types are packed by the engine (whole, in random chunks, multi-threaded)
// and compared with a reference that walks the type tree directly, byte by
// byte, in type-map order. Output buffers are poisoned and guarded.
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/settings.hpp"
#include "common/status.hpp"
#include "datatype/layout.hpp"
#include "datatype/pack.hpp"
#include "datatype/type.hpp"
#include "check.hpp"

using namespace hauler;
using namespace hauler::dt;

// Reference type map: every primitive byte range, in order, by direct recursion.
static void walk(const TypeRef& t, int64_t at, std::vector<Run>& out) {
  if (t->primitive_size > 0) { out.push_back({at, t->primitive_size}); return; }
  for (int64_t r = 0; r < t->rep_count; ++r)
    for (const Member& m : t->members)
      for (int64_t j = 0; j < m.blocklen; ++j)
        walk(m.type, at + r * t->rep_stride + m.disp + j * m.type->b.extent(), out);
}

static std::mt19937_64 rng(12345);
static int64_t rnd(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }

static TypeRef random_type(int depth) {
  static const char* names[] = {"byte", "short", "int", "double", "c_double_complex", "double_int"};
  if (depth == 0 || rnd(0, 3) == 0) return named(names[rnd(0, 5)]);
  TypeRef old = random_type(depth - 1);
  switch (rnd(0, 10)) {
    case 0: return contiguous(rnd(0, 4), old);
    case 1: return vector(rnd(0, 4), rnd(0, 3), rnd(-4, 6), old);
    case 2: return hvector(rnd(0, 4), rnd(0, 3), rnd(-64, 64), old);
    case 3: {
      int n = static_cast<int>(rnd(0, 4));
      std::vector<int64_t> bl, d;
      for (int i = 0; i < n; ++i) { bl.push_back(rnd(0, 3)); d.push_back(rnd(-6, 10)); }
      return rnd(0, 1) ? indexed(bl, d, old) : hindexed(bl, d, old);
    }
    case 4: {
      int n = static_cast<int>(rnd(0, 4));
      std::vector<int64_t> d;
      for (int i = 0; i < n; ++i) d.push_back(rnd(-6, 10));
      return rnd(0, 1) ? indexed_block(rnd(0, 3), d, old) : hindexed_block(rnd(0, 3), d, old);
    }
    case 5: {
      TypeRef other = random_type(depth - 1);
      return structure({rnd(0, 2), rnd(0, 2)}, {rnd(-32, 32), rnd(-32, 64)}, {old, other});
    }
    case 6: {
      int n = static_cast<int>(rnd(1, 3));
      std::vector<int64_t> sz, sub, st;
      for (int i = 0; i < n; ++i) {
        sz.push_back(rnd(1, 5));
        sub.push_back(rnd(1, sz.back()));
        st.push_back(rnd(0, sz.back() - sub.back()));
      }
      return subarray(sz, sub, st, rnd(0, 1) ? Order::c : Order::fortran, old);
    }
    case 7: return resized(old, rnd(-16, 16), rnd(0, 48));
    case 8: {
      int n = static_cast<int>(rnd(1, 3));
      std::vector<int64_t> g, darg, ps;
      std::vector<Distrib> dist;
      int64_t size = 1;
      for (int i = 0; i < n; ++i) {
        g.push_back(rnd(1, 7));
        Distrib k = static_cast<Distrib>(rnd(0, 2));
        int64_t p = k == Distrib::none ? 1 : rnd(1, 3);
        int64_t a = kDefaultDarg;
        if (k == Distrib::cyclic && rnd(0, 1)) a = rnd(1, 3);
        if (k == Distrib::block && rnd(0, 1)) a = (g.back() + p - 1) / p + rnd(0, 2);
        dist.push_back(k);
        darg.push_back(a);
        ps.push_back(p);
        size *= p;
      }
      return darray(size, rnd(0, size - 1), g, dist, darg, ps, rnd(0, 1) ? Order::c : Order::fortran, old);
    }
    case 9: return dup(old);
    default: return contiguous(rnd(1, 3), old);
  }
}

static bool check_type(const TypeRef& t, int64_t count) {
  std::vector<Run> ref;
  for (int64_t c = 0; c < count; ++c) walk(t, c * t->b.extent(), ref);
  int64_t total = 0, lo = 0, hi = 0;
  for (const Run& r : ref) {
    lo = std::min(lo, r.offset);
    hi = std::max(hi, r.offset + r.length);
    total += r.length;
  }
  CHECK(count != 1 || total == t->b.size, "size %lld vs walk %lld", (long long)t->b.size, (long long)total);
  Plan p = make_plan(repeat(canonical(t), count, t->b.extent()));
  CHECK(p.total == total, "plan total %lld vs %lld\n%s", (long long)p.total, (long long)total,
        describe_tree(t).c_str());
  if (total > 0) CHECK(p.span_lo >= lo && p.span_hi <= hi, "span outside the type map");
  // Source memory with distinct bytes; the origin sits at -lo.
  const int64_t guard = 32;
  std::vector<uint8_t> src(static_cast<size_t>(hi - lo + 2 * guard));
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(rng());
  uint8_t* origin = src.data() + guard - lo;
  std::vector<uint8_t> expect;
  for (const Run& r : ref) expect.insert(expect.end(), origin + r.offset, origin + r.offset + r.length);

  // Whole pack, then random chunked pack, into poisoned buffers with a guard zone.
  if (total == 0) { ++g_pass; return true; }
  std::vector<uint8_t> out(static_cast<size_t>(total + guard), 0xA5);
  pack(p, origin, out.data(), 0, total, rnd(1, 3));
  CHECK(std::memcmp(out.data(), expect.data(), static_cast<size_t>(total)) == 0, "pack differs\n%s%s",
        describe_tree(t).c_str(), describe_layout(p.layout).c_str());
  for (int64_t i = total; i < total + guard; ++i) CHECK(out[i] == 0xA5, "pack wrote past the end");
  std::fill(out.begin(), out.end(), 0x5A);
  for (int64_t pos = 0; pos < total;) {
    int64_t n = std::min(total - pos, rnd(1, 37));
    pack_window(p, origin, out.data() + pos, pos, n);
    pos += n;
  }
  CHECK(std::memcmp(out.data(), expect.data(), static_cast<size_t>(total)) == 0, "chunked pack differs");

  // Unpack into a poisoned copy: type-map bytes restored, the rest untouched.
  std::vector<uint8_t> dst(src.size(), 0xC3);
  uint8_t* dorigin = dst.data() + guard - lo;
  for (int64_t pos = 0; pos < total;) {
    int64_t n = std::min(total - pos, rnd(1, 53));
    unpack_window(p, dorigin, expect.data() + pos, pos, n);
    pos += n;
  }
  std::vector<uint8_t> want(src.size(), 0xC3);
  int64_t at = 0;
  for (const Run& r : ref) {  // later entries win where a map overlaps itself, as in MPI_Unpack
    std::memcpy(want.data() + (guard - lo) + r.offset, expect.data() + at, static_cast<size_t>(r.length));
    at += r.length;
  }
  CHECK(dst == want, "unpack differs\n%s", describe_tree(t).c_str());
  std::vector<uint8_t> whole(src.size(), 0xC3);
  unpack(p, whole.data() + guard - lo, expect.data(), 0, total, static_cast<int>(rnd(1, 3)));
  CHECK(whole == want, "whole unpack differs\n%s", describe_tree(t).c_str());
  ++g_pass;
  return true;
}

// Whole aligned cache lines: the only case where unpack uses streaming stores.
static bool check_aligned_lines(int64_t b, int64_t stride, int64_t count) {
  Plan p = make_plan(canonical(hvector(count, 1, stride, contiguous(b, named("byte")))));
  const size_t span = static_cast<size_t>((count - 1) * stride + b);
  std::vector<uint8_t> mem(span + 128), packed(static_cast<size_t>(p.total) + 64), got(span + 128, 0x3C);
  for (auto& x : mem) x = static_cast<uint8_t>(rng());
  auto align64 = [](uint8_t* q) { return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(q) + 63) & ~uintptr_t(63)); };
  uint8_t *src = align64(mem.data()), *out = align64(packed.data()), *dst = align64(got.data());
  pack(p, src, out, 0, p.total, 2);
  unpack(p, dst, out, 0, p.total, 2);
  for (int64_t k = 0; k < count; ++k) {
    CHECK(std::memcmp(out + k * b, src + k * stride, static_cast<size_t>(b)) == 0, "aligned pack block %lld", (long long)k);
    CHECK(std::memcmp(dst + k * stride, src + k * stride, static_cast<size_t>(b)) == 0, "aligned unpack block %lld",
          (long long)k);
    for (int64_t g = b; g < stride && k + 1 < count; ++g) CHECK(dst[k * stride + g] == 0x3C, "unpack wrote a gap");
  }
  ++g_pass;
  return true;
}

static bool check_equivalent(const char* what, const TypeRef& a, const TypeRef& b) {
  Layout la = canonical(a), lb = canonical(b);
  CHECK(la == lb, "%s: %s vs %s", what, describe_layout(la).c_str(), describe_layout(lb).c_str());
  ++g_pass;
  return true;
}

static bool check_error(const char* what, Status want, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    CHECK(e.status() == want, "%s: got status %s (%s)", what, status_name(e.status()), e.what());
    ++g_pass;
    return true;
  }
  CHECK(false, "%s: no error raised", what);
}

int main() {
  settings::set_override("HAULER_PACK_PARALLEL_MIN", 0);  // exercise the thread split on small types
  for (int i = 0; i < 3000; ++i) {
    // Half the types pack with streaming stores (normally only for windows >= 16 MiB).
    settings::set_override("HAULER_PACK_STREAM_MIN", i % 2 ? 0 : -1);
    TypeRef t = random_type(4);
    if (t->b.size > (1 << 20)) continue;
    check_type(t, rnd(0, 3));
  }
  // Tiny blocks at small strides take the shuffle (pack) and expand (unpack)
  // paths: long runs, every stride.
  for (int64_t b : {1, 2, 3, 4, 5, 7})
    for (int64_t stride = 1; stride <= 72; ++stride) {
      settings::set_override("HAULER_PACK_STREAM_MIN", stride % 2 ? 0 : -1);
      TypeRef blk = contiguous(b, named("byte"));
      check_type(hvector(rnd(1, 300), 1, stride, blk), rnd(1, 2));
      check_type(hvector(rnd(1, 5), 1, 4096 + stride, hvector(rnd(30, 90), 1, stride, blk)), 1);
    }
  // Streaming stores on every block size that has them, aligned and not.
  settings::set_override("HAULER_PACK_STREAM_MIN", 0);
  for (int64_t b : {8, 16, 32, 48, 64, 96, 128, 144, 4096})
    for (int rep = 0; rep < 4; ++rep) check_type(hvector(rnd(1, 200), 1, b + rnd(0, 3) * 8, contiguous(b, named("byte"))), 1);
  for (int64_t b : {64, 128, 192, 256, 320})
    for (int64_t stride : {b, b + 64, 2 * b, 4 * b}) check_aligned_lines(b, stride, rnd(1, 300));
  settings::set_override("HAULER_PACK_STREAM_MIN", -1);
  TypeRef d = named("double"), i32 = named("int");
  check_equivalent("vector == hvector", vector(10, 2, 5, d), hvector(10, 2, 40, d));
  check_equivalent("vector == hindexed regular", vector(4, 3, 7, i32),
                   hindexed({3, 3, 3, 3}, {0, 28, 56, 84}, i32));
  check_equivalent("subarray 2D == vector", subarray({8, 10}, {4, 10}, {0, 0}, Order::c, d), contiguous(40, d));
  check_equivalent("subarray 3D == nested hvector",
                   subarray({6, 5, 4}, {2, 3, 2}, {0, 0, 0}, Order::c, d),
                   hvector(2, 1, 5 * 4 * 8, hvector(3, 1, 4 * 8, contiguous(2, d))));
  check_equivalent("struct of ints == contiguous", structure({1, 1}, {0, 4}, {i32, i32}), contiguous(2, i32));
  check_equivalent("vector of vector flattens", vector(3, 1, 1, vector(4, 1, 2, d)),
                   vector(3, 1, 1, vector(4, 1, 2, d)));
  check_equivalent("fortran subarray == transposed C subarray",
                   subarray({4, 6}, {2, 3}, {1, 2}, Order::fortran, d),
                   subarray({6, 4}, {3, 2}, {2, 1}, Order::c, d));
  {
    Layout l = canonical(vector(1000, 1, 2, named("byte")));
    bool ok = l.strided() && l.dims.size() == 1 && l.runs[0].length == 1;
    if (ok) ++g_pass; else { ++g_fail; std::printf("FAIL vector canonical: %s\n", describe_layout(l).c_str()); }
  }
  check_error("negative count", Status::invalid_argument, [] { contiguous(-1, named("int")); });
  check_error("overflowing stride", Status::overflow,
              [] { hvector(4, 1, int64_t(1) << 62, named("double")); });
  check_error("bad subarray start", Status::invalid_argument,
              [] { subarray({4}, {2}, {3}, Order::c, named("int")); });
  check_error("unknown named type", Status::invalid_argument, [] { named("quad"); });
  check_error("window past end", Status::out_of_range, [] {
    Plan p = make_plan(canonical(contiguous(4, named("int"))));
    uint8_t buf[64];
    pack(p, buf, buf + 32, 8, 9);
  });
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}
