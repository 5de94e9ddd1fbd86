// The GPU pack/unpack kernels, run through the host emulation of the grid
// (the same pack_index.cuh code the GPU runs), against the host engine and
// against an independent byte map of each layout.
//
// For random layouts (vector, hvector, subarray 1-4D, indexed run lists,
// struct, resized, nested; blocks of 1..4096 bytes), unaligned buffers and
// random windows, every emulated store is counted: each packed byte (pack) or
// type-map byte (unpack) must be written exactly once, nothing else touched.
//
// Where the real GPU library loads (a driver, a device, the library), fixed
// cases also run on the GPU against the host engine; elsewhere the output
// says why not.
//
// Built with the host core by scripts/core_tests.sh.
// Env: HAULER_TEST_SEED (default: random, printed), HAULER_TEST_TYPES (default 300),
// HAULER_CUDA_LIB (default: runtime/libhauler_cuda.so when run from the tree's root).
// Last line: "N passed, M failed"; exit status 1 on any failure.
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/cuda_driver.hpp"
#include "common/gpu.hpp"
#include "common/gpu_emulation.hpp"
#include "common/settings.hpp"
#include "common/status.hpp"
#include "datatype/gpu_pack.hpp"
#include "datatype/layout.hpp"
#include "datatype/pack.hpp"
#include "datatype/pack_index.cuh"
#include "datatype/type.hpp"

using namespace hauler;
using namespace hauler::dt;

namespace {

int g_passed = 0, g_failed = 0;
int g_reported = 0;
uint64_t g_seed = 0;

void report(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
    return;
  }
  ++g_failed;
  if (g_reported++ < 25) std::printf("FAIL: %s\n", what.c_str());
}

#define CHECK(cond, msg) report((cond), std::string(msg) + "  [" #cond "]")

// ---- store counting through the emulation hook ------------------------------

struct Tracker {
  uint8_t* lo = nullptr;
  uint8_t* hi = nullptr;
  std::vector<uint32_t> counts;
  int64_t stray = 0;  // stores outside [lo, hi)
};
Tracker g_track;

void store_hook(const void* dst, int bytes) {
  const uint8_t* p = static_cast<const uint8_t*>(dst);
  if (p < g_track.lo || p + bytes > g_track.hi) {
    ++g_track.stray;
    return;
  }
  for (int i = 0; i < bytes; ++i) ++g_track.counts[static_cast<size_t>(p - g_track.lo + i)];
}

void track(uint8_t* lo, size_t len) {
  g_track.lo = lo;
  g_track.hi = lo + len;
  g_track.counts.assign(len, 0);
  g_track.stray = 0;
  emulation_store_hook = store_hook;
}

void untrack() { emulation_store_hook = nullptr; }

// ---- 64-byte aligned byte buffers -------------------------------------------

struct Buf {
  uint8_t* p = nullptr;
  size_t n = 0;
  explicit Buf(size_t len) : p(static_cast<uint8_t*>(std::aligned_alloc(64, (len + 63) / 64 * 64 + 64))), n(len) {}
  ~Buf() { std::free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

// ---- random types ------------------------------------------------------------

std::mt19937_64 g_rng;

int64_t rnd(int64_t lo, int64_t hi) {  // inclusive
  return std::uniform_int_distribution<int64_t>(lo, hi)(g_rng);
}
bool coin(double p = 0.5) { return std::uniform_real_distribution<double>(0, 1)(g_rng) < p; }

TypeRef base_type() {
  static const char* names[] = {"byte", "short", "int", "double", "long_double", "c_double_complex", "float_int"};
  return named(names[rnd(0, 6)]);
}

// Random type of bounded size; `depth` limits nesting.
TypeRef random_type(int depth) {
  TypeRef child = depth > 0 && coin(0.6) ? random_type(depth - 1) : base_type();
  const int64_t ext = std::max<int64_t>(child->b.extent(), 1);
  const int64_t csize = std::max<int64_t>(child->b.size, 1);
  switch (rnd(0, 9)) {
    case 0: return contiguous(rnd(1, 8), child);
    case 1: {  // blocks up to 4 KiB
      int64_t bl = rnd(1, std::max<int64_t>(1, 4096 / csize));
      if (coin(0.3)) bl = std::min<int64_t>(bl, 4);
      int64_t stride = bl + rnd(0, 3);
      if (coin(0.15)) stride = -stride;
      return vector(rnd(1, 40), bl, stride, child);
    }
    case 2: {
      int64_t bl = rnd(1, 6);
      int64_t sb = bl * ext + rnd(0, 40);
      if (coin(0.2)) sb = -sb;
      if (coin(0.1)) sb = rnd(1, bl * ext);  // overlapping blocks: pack only
      return hvector(rnd(1, 24), bl, sb, child);
    }
    case 3: {  // subarray 1-4D
      int nd = static_cast<int>(rnd(1, 4));
      std::vector<int64_t> sizes, subs, starts;
      for (int i = 0; i < nd; ++i) {
        int64_t s = rnd(1, nd <= 2 ? 24 : 8);
        int64_t sub = rnd(1, s);
        sizes.push_back(s);
        subs.push_back(sub);
        starts.push_back(rnd(0, s - sub));
      }
      return subarray(sizes, subs, starts, coin() ? Order::c : Order::fortran, child);
    }
    case 4: {  // irregular indexed: disjoint, maybe shuffled, zero-length blocks allowed
      int nb = static_cast<int>(rnd(1, 12));
      std::vector<int64_t> bl, disp;
      int64_t at = rnd(-5, 5);
      for (int i = 0; i < nb; ++i) {
        int64_t b = rnd(0, 5);
        bl.push_back(b);
        disp.push_back(at);
        at += b + rnd(0, 4);
      }
      if (coin(0.3)) {
        std::vector<size_t> order(bl.size());
        for (size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::shuffle(order.begin(), order.end(), g_rng);
        std::vector<int64_t> b2, d2;
        for (size_t i : order) { b2.push_back(bl[i]); d2.push_back(disp[i]); }
        bl.swap(b2);
        disp.swap(d2);
      }
      return indexed(bl, disp, child);
    }
    case 5: {  // hindexed with regular displacements: reaches the strided form
      int nb = static_cast<int>(rnd(1, 10));
      int64_t bl = rnd(1, 3), step = bl * ext + rnd(0, 17);
      std::vector<int64_t> bls(static_cast<size_t>(nb), bl), disp;
      for (int i = 0; i < nb; ++i) disp.push_back(i * step + 3);
      return hindexed(bls, disp, child);
    }
    case 6: {  // struct of different types with gaps
      int nm = static_cast<int>(rnd(2, 4));
      std::vector<int64_t> bl, disp;
      std::vector<TypeRef> types;
      int64_t at = rnd(0, 8);
      for (int i = 0; i < nm; ++i) {
        TypeRef t = i == 0 ? child : base_type();
        int64_t b = rnd(1, 3);
        types.push_back(t);
        bl.push_back(b);
        disp.push_back(at);
        at += b * std::max<int64_t>(t->b.extent(), 1) + rnd(0, 9);
      }
      return structure(bl, disp, types);
    }
    case 7: {  // resized: padding, or an extent that overlaps copies
      int64_t lb = child->b.lb - rnd(0, 16);
      int64_t e = child->b.ub - lb + rnd(0, 40);
      if (coin(0.1)) e = rnd(1, e);
      return contiguous(rnd(1, 5), resized(child, lb, e));
    }
    case 8: return indexed_block(rnd(1, 4), {0, 9, 5, 20}, child);
    default: return dup(child);
  }
}

// ---- the oracle: stream byte -> memory offset, enumerated directly ----------

std::vector<int64_t> byte_map(const Layout& l) {
  std::vector<int64_t> m;
  const int nd = static_cast<int>(l.dims.size());
  std::vector<int64_t> idx(static_cast<size_t>(nd), 0);
  const int64_t reps = l.empty() ? 0 : l.repeats();
  for (int64_t r = 0; r < reps; ++r) {
    int64_t base = 0;
    for (int d = 0; d < nd; ++d) base += idx[static_cast<size_t>(d)] * l.dims[static_cast<size_t>(d)].stride;
    for (const Run& run : l.runs)
      for (int64_t b = 0; b < run.length; ++b) m.push_back(base + run.offset + b);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[static_cast<size_t>(d)] < l.dims[static_cast<size_t>(d)].count) break;
      idx[static_cast<size_t>(d)] = 0;
    }
  }
  return m;
}

std::map<std::string, int> g_kernels;  // "form/word" -> calls

constexpr int64_t kGuard = 64;

std::string ctx(const Plan& p, int64_t pos, int64_t n, const char* what) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "%s window [%" PRId64 ", +%" PRId64 ") of ", what, pos, n);
  return buf + describe_layout(p.layout);
}

// One plan, one window, one placement of the buffers.
void check_window_case(const Plan& p, const std::vector<int64_t>& map, bool overlapping, int64_t pos, int64_t n) {
  const int64_t span = p.span_hi - p.span_lo;
  const int64_t mem_shift = coin() ? 0 : rnd(1, 15);
  const int64_t buf_shift = coin() ? 0 : rnd(1, 15);
  const size_t mem_len = static_cast<size_t>(span + 2 * kGuard + 16);
  const size_t buf_len = static_cast<size_t>(n + 2 * kGuard + 16);

  Buf mem(mem_len), packed_emu(buf_len), packed_host(buf_len);
  for (size_t i = 0; i < mem_len; ++i) mem.p[i] = static_cast<uint8_t>(g_rng());
  uint8_t* origin = mem.p + kGuard + mem_shift - p.span_lo;
  uint8_t* out_emu = packed_emu.p + kGuard + buf_shift;
  uint8_t* out_host = packed_host.p + kGuard + buf_shift;
  std::vector<uint8_t> mem_before(mem.p, mem.p + mem_len);

  KernelChoice kc = gpu_kernel_choice(p, origin, out_emu, pos, n);
  g_kernels[std::string(kc.form) + "/" + std::to_string(kc.word)]++;

  // Pack.
  std::memset(packed_emu.p, 0xA5, buf_len);
  std::memset(packed_host.p, 0xA5, buf_len);
  track(packed_emu.p, buf_len);
  try {
    gpu_pack(p, origin, out_emu, pos, n);
  } catch (const std::exception& e) {
    report(false, ctx(p, pos, n, "pack") + ": threw " + e.what());
    untrack();
    return;
  }
  untrack();
  pack_window(p, origin, out_host, pos, n);
  bool same = true, host_same = true, once = g_track.stray == 0;
  for (int64_t i = 0; i < n; ++i) {
    uint8_t want = origin[map[static_cast<size_t>(pos + i)]];
    same = same && out_emu[i] == want;
    host_same = host_same && out_host[i] == want;
  }
  for (size_t i = 0; i < buf_len; ++i) {
    bool inside = packed_emu.p + i >= out_emu && packed_emu.p + i < out_emu + n;
    once = once && g_track.counts[i] == (inside ? 1u : 0u);
    if (!inside) same = same && packed_emu.p[i] == 0xA5;
  }
  report(same, ctx(p, pos, n, "pack") + ": emulated GPU bytes differ from the type map, or the guard changed");
  report(host_same, ctx(p, pos, n, "pack") + ": host engine bytes differ from the type map");
  report(once, ctx(p, pos, n, "pack") + ": a packed byte was stored other than exactly once");
  report(std::memcmp(mem_before.data(), mem.p, mem_len) == 0, ctx(p, pos, n, "pack") + ": source memory changed");

  if (overlapping) return;  // unpack into overlapping bytes has no single answer

  // Unpack: random stream bytes into memory; everything outside the window's
  // part of the type map must keep its value.
  std::vector<uint8_t> stream(static_cast<size_t>(n) + 1);  // + 1: data() is never null
  for (auto& b : stream) b = static_cast<uint8_t>(g_rng());
  std::memcpy(out_emu, stream.data(), static_cast<size_t>(n));
  std::vector<uint8_t> expect = mem_before;
  for (int64_t i = 0; i < n; ++i)
    expect[static_cast<size_t>(kGuard + mem_shift - p.span_lo + map[static_cast<size_t>(pos + i)])] =
        stream[static_cast<size_t>(i)];
  Buf mem_host(mem_len);
  std::memcpy(mem_host.p, mem_before.data(), mem_len);
  uint8_t* origin_host = mem_host.p + kGuard + mem_shift - p.span_lo;
  track(mem.p, mem_len);
  try {
    gpu_unpack(p, origin, out_emu, pos, n);
  } catch (const std::exception& e) {
    report(false, ctx(p, pos, n, "unpack") + ": threw " + e.what());
    untrack();
    return;
  }
  untrack();
  unpack_window(p, origin_host, out_emu, pos, n);
  once = g_track.stray == 0;
  std::vector<uint8_t> covered(mem_len, 0);
  for (int64_t i = 0; i < n; ++i)
    covered[static_cast<size_t>(kGuard + mem_shift - p.span_lo + map[static_cast<size_t>(pos + i)])] = 1;
  for (size_t i = 0; i < mem_len; ++i) once = once && g_track.counts[i] == covered[i];
  report(std::memcmp(mem.p, expect.data(), mem_len) == 0,
         ctx(p, pos, n, "unpack") + ": emulated GPU memory differs from the expected bytes");
  report(std::memcmp(mem_host.p, expect.data(), mem_len) == 0,
         ctx(p, pos, n, "unpack") + ": host engine memory differs from the expected bytes");
  report(once, ctx(p, pos, n, "unpack") + ": a type-map byte was stored other than exactly once, or another byte was");
  report(std::memcmp(out_emu, stream.data(), static_cast<size_t>(n)) == 0,
         ctx(p, pos, n, "unpack") + ": packed input changed");
}

void check_plan(const Plan& p) {
  std::vector<int64_t> map = byte_map(p.layout);
  if (static_cast<int64_t>(map.size()) != p.total) {
    report(false, "byte map of " + describe_layout(p.layout) + " has " + std::to_string(map.size()) + " bytes");
    return;
  }
  bool overlapping = false;
  {
    std::vector<int64_t> s = map;
    std::sort(s.begin(), s.end());
    overlapping = std::adjacent_find(s.begin(), s.end()) != s.end();
  }
  const int64_t t = p.total;
  std::vector<std::pair<int64_t, int64_t>> windows = {{0, t}};
  if (t > 0) {
    int64_t a = rnd(0, t), b = rnd(0, t);
    windows.push_back({std::min(a, b), std::max(a, b) - std::min(a, b)});  // any bytes, partial blocks
    int64_t a16 = rnd(0, t / 16) * 16;
    windows.push_back({a16, rnd(0, (t - a16) / 16) * 16});  // word-aligned window
    int64_t a1 = rnd(0, t - 1);
    windows.push_back({a1, 1});
    windows.push_back({t, 0});
    // Chunked, as a pipelined MPI_Pack would: consecutive windows tile the stream.
    int64_t chunk = rnd(1, std::max<int64_t>(1, t / 3));
    for (int64_t at = 0; at < t && windows.size() < 12; at += chunk) windows.push_back({at, std::min(chunk, t - at)});
  }
  for (auto [pos, n] : windows) {
    static const int sms[] = {1, 2, 3, 8, 132};
    gpu::set_emulated_sm_count(sms[rnd(0, 4)]);
    check_window_case(p, map, overlapping, pos, n);
  }
}

// ---- fixed cases ---------------------------------------------------------------

void expect_error(const std::function<void()>& f, Status s, const std::string& needle, const std::string& what) {
  try {
    f();
    report(false, what + ": no exception");
  } catch (const Error& e) {
    bool ok = e.status() == s && std::string(e.what()).find(needle) != std::string::npos;
    report(ok, what + ": got [" + status_name(e.status()) + "] " + e.what());
  }
}

void test_loader() {
  gpu::use_emulation(false);
  gpu::GpuStatus s = gpu::status();
  std::printf("# GPU status without emulation: %s (available: %s)\n", s.message.c_str(), s.available ? "yes" : "no");
  const std::string& m = s.message;
  bool known = m.rfind("no driver (", 0) == 0 || m.rfind("no device (", 0) == 0 ||
               m.rfind("driver error ", 0) == 0 || m.rfind("GPU library ", 0) == 0 ||
               m.rfind("CUDA available: ", 0) == 0;
  CHECK(known, "status sentence is one of the documented forms: " + m);
  CHECK(s.available == (m.rfind("CUDA available: ", 0) == 0), "available agrees with the sentence");
  CHECK(gpu::available() == s.available && (gpu::backend() != nullptr) == s.available, "available() and backend()");
  CHECK(gpu::status_message() == m, "status is cached and stable");

  Plan p = make_plan(canonical(vector(4, 2, 3, named("double"))));
  std::vector<uint8_t> src(256), out(64);
  if (!s.available) {
    expect_error([&] { gpu_pack(p, src.data(), out.data(), 0, 64); }, Status::no_device,
                 m + ": device buffers need a GPU", "gpu_pack without a GPU");
    expect_error([&] { gpu_unpack(p, src.data(), out.data(), 0, 64); }, Status::no_device,
                 ": device buffers need a GPU", "gpu_unpack without a GPU");
    expect_error([&] { gpu::synchronize(nullptr); }, Status::no_device, ": device buffers need a GPU",
                 "synchronize without a GPU");
  }
  // The window is checked before the backend: a bad position says so.
  expect_error([&] { gpu_pack(p, src.data(), out.data(), 65, 0); }, Status::out_of_range, "position 65",
               "gpu_pack position past the end");

  gpu::use_emulation(true);
  gpu::GpuStatus e = gpu::status();
  CHECK(e.available && e.emulated && e.message == "host emulation of the GPU kernels (testing only)",
        "emulation status: " + e.message);
  CHECK(gpu::backend() == &gpu::emulation_backend() && std::string(gpu::backend()->name) == "emulation",
        "emulation backend is active");
  gpu::use_emulation(false);
  CHECK(gpu::status_message() == m, "switching emulation off restores the loader's status");
  gpu::use_emulation(true);

  // HAULER_CUDA_LIB (read through the settings table, so set by its setter): a file is used as
  // is, a directory gets the library name, an invalid value is refused with the parser's text.
  const char* old = std::getenv("HAULER_CUDA_LIB");
  const std::string saved = old ? old : "";
  settings::set("HAULER_CUDA_LIB", "/nonexistent/libx.so");
  CHECK(gpu::library_path() == "/nonexistent/libx.so", "HAULER_CUDA_LIB names a file");
  settings::set("HAULER_CUDA_LIB", "/tmp");
  CHECK(gpu::library_path() == "/tmp/libhauler_cuda.so", "HAULER_CUDA_LIB names a directory");
  settings::reset("HAULER_CUDA_LIB");
  if (!old) {
    std::string def = gpu::library_path();
    CHECK(def.size() > 18 && def.compare(def.size() - 18, 18, "/libhauler_cuda.so") == 0,
          "default library path ends in the library's name: " + def);
  }
  setenv("HAULER_CUDA_LIB", "/tmp/bad\001name", 1);
  settings::reset("HAULER_CUDA_LIB");  // drops the cached read: the next use parses the variable
  bool refused = false;
  try {
    gpu::library_path();
  } catch (const hauler::Error& e) {
    refused = std::string(e.what()).find("HAULER_CUDA_LIB=") != std::string::npos;
  }
  CHECK(refused, "an invalid HAULER_CUDA_LIB is refused with the setting's name");
  if (old) setenv("HAULER_CUDA_LIB", saved.c_str(), 1);
  else unsetenv("HAULER_CUDA_LIB");
  settings::reset("HAULER_CUDA_LIB");

  // Without $HAULER_CUDA_LIB: beside the module (the Python extension), else in the package two
  // folders up when it is there (the MPI shim in <package>/interpose/<flavour>/).
  char tmpl[] = "/tmp/hauler_libsearch_XXXXXX";
  const std::string root = mkdtemp(tmpl) ? tmpl : "";
  CHECK(!root.empty(), "temporary directory");
  if (root.empty()) return;
  const std::string shim_dir = root + "/interpose/openmpi";
  CHECK(std::system(("mkdir -p " + shim_dir).c_str()) == 0, "mkdir " + shim_dir);
  CHECK(gpu::library_near(root + "/_core.so") == root + "/libhauler_cuda.so", "beside the extension, built or not");
  CHECK(gpu::library_near(shim_dir + "/libshim.so") == shim_dir + "/libhauler_cuda.so",
        "no library in the package: reported as missing beside the module");
  std::fclose(std::fopen((root + "/libhauler_cuda.so").c_str(), "w"));
  CHECK(gpu::library_near(shim_dir + "/libshim.so") == root + "/libhauler_cuda.so",
        "the shim finds the package's library: " + gpu::library_near(shim_dir + "/libshim.so"));
  std::fclose(std::fopen((shim_dir + "/libhauler_cuda.so").c_str(), "w"));
  CHECK(gpu::library_near(shim_dir + "/libshim.so") == shim_dir + "/libhauler_cuda.so", "one beside it comes first");
  CHECK(std::system(("rm -rf " + root).c_str()) == 0, "rm -rf " + root);
}

void test_index_helpers() {
  CHECK(word_align(0) == 16 && word_align(48) == 16 && word_align(24) == 8 && word_align(12) == 4 &&
            word_align(6) == 2 && word_align(7) == 1,
        "word_align");
  CHECK(word_align(static_cast<uint64_t>(int64_t(-24))) == 8, "word_align of a negative stride");
  alignas(16) uint8_t a[64];
  CHECK(pick_word(16, a, a + 32, 16, 64) == 16, "pick_word all aligned");
  CHECK(pick_word(16, a + 8, a + 32, 16, 64) == 8, "pick_word origin at 8");
  CHECK(pick_word(16, a, a + 34, 16, 64) == 2, "pick_word buffer at 2");
  CHECK(pick_word(16, a, a, 3, 64) == 1, "pick_word odd position");
  CHECK(pick_word(4, a, a, 16, 64) == 4, "pick_word layout alignment");
  uint32_t g = 0, b = 0;
  launch_shape(0, 132, &g, &b);
  CHECK(g == 1 && b == 256, "launch_shape of an empty window");
  launch_shape(1000, 132, &g, &b);
  CHECK(g == 4 && b == 256, "launch_shape of 1000 words");
  launch_shape(int64_t(1) << 40, 2, &g, &b);
  CHECK(g == 32, "launch_shape caps the grid at 16 blocks per SM");

  DevLayout d = dev_layout(make_plan(canonical(vector(4, 2, 3, named("double")))));
  CHECK(d.ndims == 1 && d.count[0] == 4 && d.stride[0] == 24 && d.block == 16 && d.nruns == 1 && d.align == 8 &&
            d.total == 64,
        "dev_layout of vector(4, 2, 3, double)");
  Plan runs = make_plan(canonical(indexed({1, 2, 1}, {0, 2, 7}, named("int"))));
  DevLayout r = dev_layout(runs);
  CHECK(r.nruns == 3 && r.block == 16 && r.align == 4 && r.runs && r.prefix && r.prefix[3] == 16,
        "dev_layout of an indexed run list");
  CHECK(std::string(gpu_kernel_choice(runs, a, a, 0, 16).form) == "gpu-runs", "kernel choice names the run form");
}

void test_backend_validation() {
  const gpu::Backend& b = gpu::emulation_backend();
  CHECK(b.abi() == HAULER_GPU_ABI, "emulation ABI version");
  HaulerDeviceInfo info;
  char err[256] = "";
  CHECK(b.init(&info, err, sizeof err) == 0 && info.device_count == 1, "emulation init");
  Plan p = make_plan(canonical(vector(8, 4, 8, named("byte"))));
  DevLayout d = dev_layout(p);
  alignas(16) uint8_t src[128] = {}, out[64] = {};
  d.word = 16;
  CHECK(b.pack(&d, src + 1, out, 0, 32, 1, nullptr, err, sizeof err) == HAULER_GPU_EINVAL &&
            std::strstr(err, "word size 16 does not divide"),
        std::string("misaligned word refused: ") + err);
  d.word = 3;
  CHECK(b.pack(&d, src, out, 0, 32, 1, nullptr, err, sizeof err) == HAULER_GPU_EINVAL &&
            std::strstr(err, "word size 3"),
        std::string("bad word refused: ") + err);
  d.word = 4;
  CHECK(b.pack(&d, src, out, 8, 32, 1, nullptr, err, sizeof err) == HAULER_GPU_ERANGE &&
            std::strstr(err, "outside the packed stream"),
        std::string("window past the end refused: ") + err);
  CHECK(b.pack(nullptr, src, out, 0, 32, 1, nullptr, err, sizeof err) == HAULER_GPU_EINVAL, "null layout refused");
  CHECK(b.pack(&d, src, nullptr, 0, 32, 1, nullptr, err, sizeof err) == HAULER_GPU_EINVAL, "null buffer refused");
  CHECK(b.pack(&d, src, out, 0, 32, 1, nullptr, err, sizeof err) == 0, "valid call accepted");
  // The layout's own alignment is trusted: a word it does not allow is refused.
  d.align = 2;
  CHECK(b.pack(&d, src, out, 0, 32, 1, nullptr, err, sizeof err) == HAULER_GPU_EINVAL,
        "word above the layout alignment refused");

  // Empty type: zero-byte windows are no-ops on any backend.
  Plan empty = make_plan(canonical(contiguous(0, named("double"))));
  bool ok = true;
  try {
    gpu_pack(empty, src, out, 0, 0);
    gpu_unpack(empty, src, out, 0, 0);
  } catch (const std::exception&) {
    ok = false;
  }
  CHECK(ok, "empty type packs 0 bytes");
  expect_error([&] { gpu_pack(empty, src, out, 0, 1); }, Status::out_of_range, "run past the end",
               "empty type refuses 1 byte");
}

// Stream positions past 2^32 (the 64-bit index paths): stride-0 repetitions
// make a huge stream over a few bytes of memory.
// Shared host registrations: pages are registered whole, so two tables on one page share one
// registration; hauler counts its users and unregisters at zero, and never unregisters a
// registration someone else made.
void test_shared_registrations() {
  gpu::use_emulation(true);
  const size_t pg = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<uint8_t> mem(4 * pg);
  uint8_t* page0 = mem.data() + (pg - reinterpret_cast<uintptr_t>(mem.data()) % pg);  // 3 whole pages
  const size_t before = gpu::emulated_registrations();

  // A, then B on A's page: B holds A's registration, which outlives A's unregister.
  uint8_t* a = page0;
  uint8_t* b = page0 + 100;
  CHECK(gpu::host_register(a, 100, false) == a, "first range registered");
  CHECK(gpu::host_registration_users(a) == 1, "one user of the new registration");
  CHECK(gpu::host_register(b, 100, false) == b, "second range on the same page gets its device address");
  CHECK(gpu::host_registration_users(a) == 2, "the sharing range counted");
  CHECK(gpu::host_registration_users(b) == 0, "no registration of its own at the sharing range");
  gpu::host_unregister(a);
  CHECK(gpu::emulated_registered(b), "the page stays registered while the sharing range uses it");
  CHECK(gpu::host_registration_users(a) == 1, "one user left");
  gpu::host_unregister(b);
  CHECK(!gpu::emulated_registered(a), "unregistered when the last user left");
  CHECK(gpu::emulated_registrations() == before, "nothing left registered");

  // The same range twice (one table pinned by two stores): two users.
  gpu::host_register(a, pg, true);
  gpu::host_register(a, pg, true);
  CHECK(gpu::host_registration_users(a) == 2, "the same range twice: two users");
  gpu::host_unregister(a);
  CHECK(gpu::emulated_registered(a), "still registered for the second user");
  gpu::host_unregister(a);
  CHECK(!gpu::emulated_registered(a), "unregistered with the second user");
  expect_error([&] { gpu::host_unregister(a); }, Status::invalid_argument, "no GPU registration of hauler's",
               "unregistering once too often");

  // A range spanning two of hauler's registrations holds both.
  gpu::host_register(page0, pg, false);
  gpu::host_register(page0 + pg, pg, false);
  gpu::host_register(page0 + pg - 8, 16, false);
  CHECK(gpu::host_registration_users(page0) == 2 && gpu::host_registration_users(page0 + pg) == 2,
        "a range across two registrations holds both");
  gpu::host_unregister(page0);
  gpu::host_unregister(page0 + pg);
  CHECK(gpu::emulated_registered(page0) && gpu::emulated_registered(page0 + pg), "both kept for the spanning range");
  gpu::host_unregister(page0 + pg - 8);
  CHECK(gpu::emulated_registrations() == before, "both unregistered with the spanning range");

  // A writable range inside one of hauler's read-only registrations is refused, and changes nothing.
  gpu::host_register(a, 64, true);
  expect_error([&] { gpu::host_register(b, 64, false); }, Status::invalid_argument, "read-only registration",
               "writable range on a read-only registration's page");
  CHECK(gpu::host_registration_users(a) == 1, "the refusal took no reference");
  gpu::host_unregister(a);

  // Someone else's registration (the application's cudaHostRegister): used, never unregistered.
  void* dev = nullptr;
  char err[256] = "";
  CHECK(hauler_emu_host_register(page0, 2 * pg, 0, &dev, err, sizeof err) == HAULER_GPU_OK, "foreign registration");
  CHECK(gpu::host_register(page0, 64, false) == page0, "a range inside a foreign registration");
  CHECK(gpu::host_registration_users(page0) == 0, "hauler counts no registration of its own there");
  gpu::host_unregister(page0);
  CHECK(gpu::emulated_registered(page0), "the foreign registration survives hauler's unregister");
  CHECK(hauler_emu_host_unregister(page0, err, sizeof err) == HAULER_GPU_OK, "its owner unregisters it");

  // Bad arguments.
  expect_error([&] { gpu::host_register(nullptr, 64, false); }, Status::invalid_argument, "null",
               "registering a null pointer");
  expect_error([&] { gpu::host_register(a, 0, false); }, Status::invalid_argument, "empty", "registering 0 bytes");
  CHECK(gpu::emulated_registrations() == before, "the tests leave nothing registered");
}

void test_64bit_positions() {
  CHECK(div_nonneg(int64_t(5) << 33, 3) == (int64_t(5) << 33) / 3 && div_nonneg(7, 2) == 3 &&
            div_nonneg(int64_t(1) << 40, int64_t(1) << 35) == 32,
        "div_nonneg on both paths");
  TypeRef irregular = indexed({1, 2, 1}, {0, 2, 7}, named("short"));
  const TypeRef inner[] = {contiguous(3, named("byte")), irregular, vector(3, 1, 2, named("int"))};
  for (const TypeRef& t : inner) {
    Plan p = make_plan(canonical(hvector(int64_t(3) << 31, 1, 0, hvector(5, 1, 0, t))));
    if (p.total <= (int64_t(1) << 33)) {
      report(false, "stride-0 layout stayed small: " + describe_layout(p.layout));
      continue;
    }
    for (int64_t pos : {p.total - 1000, (int64_t(1) << 32) - 7, p.total / 2 + 1}) {
      const int64_t n = std::min<int64_t>(1000, p.total - pos);
      std::vector<uint8_t> mem(static_cast<size_t>(p.span_hi - p.span_lo + 32));
      for (auto& b : mem) b = static_cast<uint8_t>(g_rng());
      uint8_t* origin = mem.data() + 16 - p.span_lo;
      std::vector<uint8_t> a(static_cast<size_t>(n) + 1, 0), b(static_cast<size_t>(n) + 1, 1);
      gpu::set_emulated_sm_count(1);
      gpu_pack(p, origin, a.data(), pos, n);
      pack_window(p, origin, b.data(), pos, n);
      CHECK(std::memcmp(a.data(), b.data(), static_cast<size_t>(n)) == 0,
            ctx(p, pos, n, "pack") + ": emulated GPU differs from the host engine past 2^32");
    }
  }
}

// The real GPU library through the loader, wherever one loads: its kernels must move the same
// bytes as the host engine, in device memory the driver allocates. Without one, say plainly why
// nothing ran (the loader's sentence).
struct DeviceBuf {
  const cuda::Driver* d;
  cuda::CUdeviceptr p = 0;
  DeviceBuf(const cuda::Driver* drv, size_t n) : d(drv) {
    int rc = d->mem_alloc(&p, n);
    if (rc != cuda::kSuccess) fail(Status::internal, "cuMemAlloc(" + std::to_string(n) + "): " + d->error(rc));
  }
  ~DeviceBuf() { d->mem_free(p); }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
  uint8_t* ptr() const { return reinterpret_cast<uint8_t*>(p); }
  void put(const void* src, size_t n) const { check(d->memcpy_htod(p, src, n), "cuMemcpyHtoD"); }
  void get(void* dst, size_t n) const { check(d->memcpy_dtoh(dst, p, n), "cuMemcpyDtoH"); }
  void check(int rc, const char* what) const {
    if (rc != cuda::kSuccess) fail(Status::internal, std::string(what) + ": " + d->error(rc));
  }
};

void real_pack_case(const cuda::Driver* d, const Plan& p, const std::string& name) {
  const size_t span = static_cast<size_t>(p.span_hi - p.span_lo), total = static_cast<size_t>(p.total);
  std::vector<uint8_t> mem(span), host(total + 1, 0xA5), dev(total + 1, 0x5A);
  for (auto& b : mem) b = static_cast<uint8_t>(g_rng());
  DeviceBuf dmem(d, span + 16), dbuf(d, total + 16);
  dmem.put(mem.data(), span);
  uint8_t* origin = dmem.ptr() - p.span_lo;
  // pack: the whole message, then a window at an odd position (1-byte words)
  gpu_pack(p, origin, dbuf.ptr(), 0, p.total);
  gpu::synchronize(nullptr);
  dbuf.get(dev.data(), total);
  pack_window(p, mem.data() - p.span_lo, host.data(), 0, p.total);
  CHECK(std::memcmp(dev.data(), host.data(), total) == 0, name + ": GPU pack equals the host engine");
  if (p.total > 3) {
    const int64_t pos = 1, n = p.total - 3;
    gpu_pack(p, origin, dbuf.ptr(), pos, n);
    gpu::synchronize(nullptr);
    dbuf.get(dev.data(), static_cast<size_t>(n));
    pack_window(p, mem.data() - p.span_lo, host.data(), pos, n);
    CHECK(std::memcmp(dev.data(), host.data(), static_cast<size_t>(n)) == 0,
          name + ": GPU pack of an unaligned window equals the host engine");
  }
  // unpack into poisoned memory: the type map's bytes change, the gaps keep the poison
  std::vector<uint8_t> packed(total), want(span, 0xEE), got(span);
  for (auto& b : packed) b = static_cast<uint8_t>(g_rng());
  dmem.put(want.data(), span);
  dbuf.put(packed.data(), total);
  gpu_unpack(p, origin, dbuf.ptr(), 0, p.total);
  gpu::synchronize(nullptr);
  dmem.get(got.data(), span);
  unpack_window(p, want.data() - p.span_lo, packed.data(), 0, p.total);
  CHECK(got == want, name + ": GPU unpack equals the host engine, gaps untouched");
}

void test_real_library() {
  gpu::use_emulation(false);
  const gpu::GpuStatus s = gpu::status();
  if (!s.available) {
    std::printf("# real GPU library NOT run: %s\n", s.message.c_str());
    gpu::use_emulation(true);
    return;
  }
  std::printf("# real GPU library %s: %s\n", s.library.c_str(), s.message.c_str());
  const cuda::Driver* d = cuda::driver();
  CHECK(d && d->device_get && d->primary_ctx_retain && d->primary_ctx_release && d->ctx_push_current &&
            d->ctx_pop_current && d->mem_alloc && d->mem_free && d->memcpy_htod && d->memcpy_dtoh,
        "the driver table has the calls the test needs");
  if (!d) return;
  cuda::CUdevice dev = 0;
  cuda::CUcontext ctx = nullptr;
  CHECK(d->device_get(&dev, s.device.device) == cuda::kSuccess && d->primary_ctx_retain(&ctx, dev) == cuda::kSuccess &&
            d->ctx_push_current(ctx) == cuda::kSuccess,
        "the device's primary context is current");
  try {
    real_pack_case(d, make_plan(canonical(vector(1000, 3, 7, named("double")))), "vector of 24-byte blocks");
    real_pack_case(d, make_plan(canonical(vector(777, 1, 3, named("byte")))), "vector of 1-byte blocks");
    real_pack_case(d, make_plan(canonical(indexed({1, 2, 1, 5}, {0, 2, 7, 11}, named("short")))),
                   "indexed run list");
    real_pack_case(d, make_plan(canonical(subarray({40, 30, 20}, {8, 30, 3}, {5, 0, 17}, Order::c, named("float")))),
                   "3-D subarray");
    real_pack_case(d, make_plan(canonical(hvector(int64_t(2000), 1, -24, named("double")))), "negative stride");
  } catch (const std::exception& e) {
    report(false, std::string("real GPU library: ") + e.what());
  }
  cuda::CUcontext popped = nullptr;
  d->ctx_pop_current(&popped);
  d->primary_ctx_release(dev);
  gpu::use_emulation(true);
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // the seed stays visible if a case crashes
  const char* seed_env = std::getenv("HAULER_TEST_SEED");
  g_seed = seed_env ? std::strtoull(seed_env, nullptr, 10) : std::random_device{}();
  const char* types_env = std::getenv("HAULER_TEST_TYPES");
  const int ntypes = types_env ? std::atoi(types_env) : 300;
  std::printf("# seed %" PRIu64 " (HAULER_TEST_SEED to repeat), %d random types\n", g_seed, ntypes);
  g_rng.seed(g_seed);

  // The GPU library a build of this tree made (setup.py puts it beside the Python extension, in
  // runtime/), unless HAULER_CUDA_LIB names one: scripts/core_tests.sh runs from the tree's root.
  char cwd[4096];
  if (!std::getenv("HAULER_CUDA_LIB") && getcwd(cwd, sizeof cwd) &&
      access((std::string(cwd) + "/runtime/libhauler_cuda.so").c_str(), F_OK) == 0)
    setenv("HAULER_CUDA_LIB", (std::string(cwd) + "/runtime/libhauler_cuda.so").c_str(), 1);
  test_loader();  // leaves the emulation on
  test_index_helpers();
  test_backend_validation();
  test_64bit_positions();
  test_shared_registrations();
  test_real_library();

  int built = 0, attempts = 0;
  while (built < ntypes && attempts < ntypes * 20) {
    ++attempts;
    TypeRef t;
    Plan p;
    try {
      t = random_type(static_cast<int>(rnd(0, 3)));
      if (t->b.size > (1 << 18) || t->b.true_extent() > (1 << 20)) continue;
      int64_t count = rnd(1, 3);
      p = make_plan(repeat(canonical(t), count, t->b.extent()));
      if (p.total > (1 << 19) || p.span_hi - p.span_lo > (4 << 20)) continue;
    } catch (const Error&) {
      continue;  // an invalid random combination; the constructors' errors are tested elsewhere
    }
    ++built;
    check_plan(p);
  }
  CHECK(built == ntypes, "built " + std::to_string(built) + " random types");

  // The generator must reach every kernel shape, or the comparison above proves little.
  std::string seen;
  for (auto& [k, c] : g_kernels) seen += " " + k + ":" + std::to_string(c);
  std::printf("# kernels exercised:%s\n", seen.c_str());
  for (const char* form : {"gpu-contiguous", "gpu-strided", "gpu-runs"})
    for (int w : {1, 2, 4, 8, 16})
      if (!(std::string(form) == "gpu-runs" && w == 16))  // 16-aligned run lists are rare; not required
        CHECK(g_kernels.count(std::string(form) + "/" + std::to_string(w)) > 0,
              std::string("random layouts reach ") + form + " with " + std::to_string(w) + "-byte words");
  gpu::use_emulation(false);

  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
