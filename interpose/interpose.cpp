// libhauler_interpose.so: an LD_PRELOAD MPI shim that gives unchanged MPI
// programs hauler's datatype engine.
//
// Every intercepted MPI_X is one small entry point: it checks the kill switch
// (and the feature switch) and either forwards to PMPI_X or calls the
// implementation in namespace `shim`. The application only ever holds real
// MPI requests: packed messages are posted as real MPI_BYTE requests, and a
// side table keyed by that real request says what to do when it completes
// (unpack, release the staging buffer). Every completion call looks its
// requests up before the library nulls them and finishes the completed ones.
//
// Built once per MPI flavour by setup.py (build_interpose); the core
// (csrc/common, csrc/datatype) is compiled in with -fvisibility=hidden so
// only the MPI_* symbols below are exported.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <dlfcn.h>
#include <link.h>

#include <atomic>
#include <chrono>
#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/gpu.hpp"
#include "common/settings.hpp"
#include "common/status.hpp"
#include "datatype/gpu_pack.hpp"
#include "datatype/layout.hpp"
#include "datatype/pack.hpp"
#include "datatype/type.hpp"
#include "shim.hpp"

#define HAULER_EXPORT extern "C" __attribute__((visibility("default")))

namespace shim {

namespace dt = hauler::dt;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- settings
enum Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kCritical = 4 };

struct Config {
  bool on = false;       // HAULER_INTERPOSE (master switch), and MPI initialized
  bool pack = true;      // HAULER_INTERPOSE_PACK: MPI_Pack/MPI_Unpack through hauler
  bool p2p = true;       // HAULER_INTERPOSE_P2P: point-to-point packing
  bool coll = true;      // HAULER_INTERPOSE_COLL: collectives packing
  bool gpu = true;       // HAULER_INTERPOSE_GPU: device buffers packed by the GPU kernels
  int log = kWarning;    // HAULER_INTERPOSE_LOG
  std::string report;    // HAULER_INTERPOSE_REPORT: "", "1"/"stderr", or a path (%r = rank)
  std::string model;     // HAULER_INTERPOSE_MODEL
  // The model: pack a non-contiguous message when its mean contiguous block is at most
  // max_block bytes and the message has at least min_bytes bytes. 64: `hauler-bench calibrate`
  // on 2 ranks (shared memory), the library and the packing timed in the same launches: packing
  // 64 B blocks won 1.1-2.3x to the other rank under Open MPI and 1.5-3x under MPICH (256 B
  // blocks lost, 0.7-0.98x, bar noise); it lost to the rank itself under Open MPI below 16 KiB
  // (0.4-0.7x), which only a calibrated grid tells apart.
  int64_t max_block = 64;
  int64_t min_bytes = 256;
  // Device buffers: packed messages of at most gpu_oneshot_max bytes are staged in mapped pinned
  // host memory (TEMPI's one-shot: no device-to-host copy, the library sends host bytes), larger
  // ones in device memory (the CUDA-aware library moves them at device bandwidth).
  int64_t gpu_oneshot_max = 65536;
  // Measured by `hauler-bench calibrate`: point-to-point speedups of packing over the library,
  // by (mean block, message bytes), for messages to another rank [0] and to the rank itself [1]
  // (the library copies those in process, so packing pays far less often). When present, a
  // point-to-point message is packed only where the nearest measured cells say packing won.
  struct Cell {
    double log_block, log_bytes, speedup;
  };
  std::vector<Cell> grid[2];
};
Config g;
// MPI_Pcontrol(0) until MPI_Pcontrol(1): new messages go to the library as they are (requests
// already staged still complete through the shim). The profiling interface's switch, so a program
// (or hauler-bench mpi) can time the library and the shim in one run.
std::atomic<bool> g_paused{false};
// Time spent packing is for the report only: two clock reads per message are a measurable part of
// a small message's cost, so nothing is timed unless a report was asked for.
bool g_timing = false;
#if defined(OPEN_MPI)
constexpr const char* kFlavour = "openmpi";
#elif defined(MPICH_VERSION)
constexpr const char* kFlavour = "mpich";
#else
constexpr const char* kFlavour = "mpi";
#endif
int g_rank = -1;

bool env_bool(const char* name, bool dflt) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return dflt;
  std::string s(v);
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s == "0" || s == "false" || s == "no" || s == "off") return false;
  return true;
}

std::string env_str(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

void logf(int level, const char* fmt, ...) {
  if (level < g.log) return;
  static const char* names[] = {"debug", "info", "warning", "error", "critical"};
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "hauler-interpose[%d] %s: %s\n", g_rank, names[level], buf);
}

// log2(x) for x >= 1, linear between powers of two: enough to find the nearest measured cell
// (and no libm for the shim to link).
double octaves(int64_t x) {
  if (x < 1) x = 1;
  int e = 63 - __builtin_clzll(static_cast<unsigned long long>(x));
  return e + (double(x) / double(1ull << e) - 1.0);
}

// Where `hauler-bench calibrate` writes its model by default (runtime/interpose.py says the same):
// $XDG_CONFIG_HOME/hauler/interpose-model.txt, else ~/.config/hauler/interpose-model.txt.
std::string default_model_path() {
  std::string base = env_str("XDG_CONFIG_HOME");
  if (base.empty()) {
    std::string home = env_str("HOME");
    if (home.empty()) return std::string();
    base = home + "/.config";
  }
  return base + "/hauler/interpose-model.txt";
}

// named: HAULER_INTERPOSE_MODEL named the file, so a file that cannot be read is worth a warning;
// the calibrated default is only read when it exists.
void load_model(const std::string& path, bool named) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (!f) {
    if (named) logf(kWarning, "HAULER_INTERPOSE_MODEL=%s cannot be read; built-in defaults", path.c_str());
    return;
  }
  char key[128];
  long long val;
  char line[512];
  while (std::fgets(line, sizeof line, f)) {
    if (line[0] == '#' || std::sscanf(line, "%127s", key) != 1) continue;
    bool number = std::sscanf(line, "%*s %lld", &val) == 1;
    // "key value" for every flavour, "<flavour>.key value" for this one (hauler-bench calibrate)
    const char* k = key;
    const char* dot = std::strchr(key, '.');
    if (dot) {
      if (std::strncmp(key, kFlavour, static_cast<size_t>(dot - key)) != 0 || kFlavour[dot - key] != '\0') continue;
      k = dot + 1;
    }
    char where[16];
    long long block = 0, bytes = 0;
    double speedup = 0;
    if (std::strcmp(k, "grid") == 0) {  // grid peer|self BLOCK BYTES SPEEDUP
      if (std::sscanf(line, "%*s %15s %lld %lld %lf", where, &block, &bytes, &speedup) == 4 && block > 0 &&
          bytes > 0 && (std::strcmp(where, "peer") == 0 || std::strcmp(where, "self") == 0))
        g.grid[where[0] == 's'].push_back(Config::Cell{octaves(block), octaves(bytes), speedup});
      continue;
    }
    if (!number) continue;
    if (std::strcmp(k, "max_block") == 0) g.max_block = val;
    else if (std::strcmp(k, "min_bytes") == 0) g.min_bytes = val;
    else if (std::strcmp(k, "gpu_oneshot_max") == 0) g.gpu_oneshot_max = val;
  }
  std::fclose(f);
  logf(kInfo, "model %s: max_block=%lld min_bytes=%lld gpu_oneshot_max=%lld grid peer=%zu self=%zu cells",
       path.c_str(), (long long)g.max_block, (long long)g.min_bytes, (long long)g.gpu_oneshot_max,
       g.grid[0].size(), g.grid[1].size());
}

void configure() {
  g.pack = env_bool("HAULER_INTERPOSE_PACK", true);
  g.p2p = env_bool("HAULER_INTERPOSE_P2P", true);
  g.coll = env_bool("HAULER_INTERPOSE_COLL", true);
  g.gpu = env_bool("HAULER_INTERPOSE_GPU", true);
  std::string lv = env_str("HAULER_INTERPOSE_LOG");
  static const char* names[] = {"debug", "info", "warning", "error", "critical"};
  for (int i = 0; i < 5; ++i)
    if (lv == names[i]) g.log = i;
  g.report = env_str("HAULER_INTERPOSE_REPORT");
  g_timing = !g.report.empty() && g.report != "0";
  // the named file; "builtin": the defaults above; unset: the calibrated model if one was written
  g.model = env_str("HAULER_INTERPOSE_MODEL");
  bool named = !g.model.empty();
  if (g.model == "builtin") g.model.clear();
  else if (!named) g.model = default_model_path();
  if (!g.model.empty()) load_model(g.model, named);
  // One packing thread per rank unless HAULER_THREADS says otherwise: ranks share the cores.
  const char* t = std::getenv("HAULER_THREADS");
  if (t == nullptr || *t == '\0') hauler::settings::set_override("HAULER_THREADS", 1);
  // The engine reads its settings from the environment on every pack (getenv: ~40 ns, a tenth of
  // a small message's cost); the shim's environment is fixed at launch, so read them once.
  try {
    namespace hs = hauler::settings;
    hs::set_override("HAULER_THREADS", hs::threads());
    hs::set_override("HAULER_PACK_PARALLEL_MIN", hs::pack_parallel_min());
    hs::set_override("HAULER_PACK_STREAM_MIN", hs::pack_stream_min());
  } catch (const std::exception& e) {
    logf(kWarning, "%s; built-in defaults", e.what());
  }
  g.on = env_bool("HAULER_INTERPOSE", true);
}

// ---------------------------------------------------------------- counters
// Each thread counts into its own Stats (single writer: a relaxed load and store, no locked
// instruction on the pass-through path); the report sums every thread's.
struct Counter {
  std::atomic<int64_t> v{0};
  void operator++(int) { v.store(v.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); }
  void operator+=(int64_t n) { v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
};
#define HAULER_STATS(X)                                                                                      \
  X(calls) X(packed_msgs) X(unpacked_msgs) X(passthrough) X(contiguous) X(bytes_packed) X(bytes_unpacked)   \
  X(pack_ns) X(types_decoded) X(types_refused) X(mpi_pack_calls) X(coll_passthrough) X(coll_packed)         \
  X(fortran) X(gpu_packed) X(gpu_unpacked) X(gpu_device) X(gpu_oneshot) X(paused)
struct Stats {
#define HAULER_FIELD(n) Counter n;
  HAULER_STATS(HAULER_FIELD)
#undef HAULER_FIELD
};
struct Totals {
#define HAULER_FIELD(n) long long n = 0;
  HAULER_STATS(HAULER_FIELD)
#undef HAULER_FIELD
};
std::mutex g_stats_mu;
std::vector<Stats*> g_stats_all;  // never freed: a thread's counts outlive it

// The shim is preloaded, so its thread-locals can sit in the static TLS block (initial-exec: a
// plain %fs-relative load, not a __tls_get_addr call and an init guard on every MPI call).
#define HAULER_TLS __thread __attribute__((tls_model("initial-exec")))
HAULER_TLS Stats* tl_stats = nullptr;

__attribute__((noinline)) Stats& new_stats() {
  auto* s = new Stats;
  std::lock_guard<std::mutex> lk(g_stats_mu);
  g_stats_all.push_back(s);
  tl_stats = s;
  return *s;
}

inline Stats& stats() {
  if (__builtin_expect(tl_stats != nullptr, 1)) return *tl_stats;
  return new_stats();
}

Totals totals() {
  Totals t;
  std::lock_guard<std::mutex> lk(g_stats_mu);
  for (Stats* s : g_stats_all) {
#define HAULER_FIELD(n) t.n += s->n.v.load(std::memory_order_relaxed);
    HAULER_STATS(HAULER_FIELD)
#undef HAULER_FIELD
  }
  return t;
}

void count_fortran() { stats().fortran++; }

struct Timer {
  Clock::time_point t0 = g_timing ? Clock::now() : Clock::time_point();
  ~Timer() {
    if (g_timing)
      stats().pack_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
  }
};

// ---------------------------------------------------------------- type cache
struct TypeInfo {
  dt::Layout one;          // one element, offsets from the origin
  int64_t size = 0;        // bytes of data per element
  int64_t extent = 0;
  int64_t mean_block = 0;  // bytes per contiguous run of one element
  bool contiguous = false; // one dense run starting at 0 whose length is the extent
  bool single_run = false; // one element is one dense run (anywhere): count 1 is contiguous for the library too
  std::mutex mu;
  int64_t last_count = -1;
  std::shared_ptr<const dt::Plan> last_plan;

  std::shared_ptr<const dt::Plan> plan(int64_t count) {
    std::lock_guard<std::mutex> lk(mu);
    if (count != last_count) {
      last_plan = std::make_shared<const dt::Plan>(dt::make_plan(dt::repeat(one, count, extent)));
      last_count = count;
    }
    return last_plan;
  }
};
using TypeInfoRef = std::shared_ptr<TypeInfo>;

std::mutex g_types_mu;
std::unordered_map<MPI_Datatype, TypeInfoRef> g_types;
std::atomic<uint64_t> g_types_gen{1};  // bumped by every change to g_types (see brief())
std::vector<std::pair<MPI_Datatype, std::string>> g_named;

void init_named() {
  g_named = {
      {MPI_BYTE, "byte"}, {MPI_CHAR, "char"}, {MPI_SIGNED_CHAR, "signed_char"},
      {MPI_UNSIGNED_CHAR, "unsigned_char"}, {MPI_PACKED, "packed"}, {MPI_C_BOOL, "c_bool"},
      {MPI_SHORT, "short"}, {MPI_UNSIGNED_SHORT, "unsigned_short"}, {MPI_INT, "int"},
      {MPI_UNSIGNED, "unsigned"}, {MPI_LONG, "long"}, {MPI_UNSIGNED_LONG, "unsigned_long"},
      {MPI_LONG_LONG, "long_long"}, {MPI_UNSIGNED_LONG_LONG, "unsigned_long_long"},
      {MPI_WCHAR, "wchar"}, {MPI_INT8_T, "int8"}, {MPI_INT16_T, "int16"}, {MPI_INT32_T, "int32"},
      {MPI_INT64_T, "int64"}, {MPI_UINT8_T, "uint8"}, {MPI_UINT16_T, "uint16"},
      {MPI_UINT32_T, "uint32"}, {MPI_UINT64_T, "uint64"}, {MPI_AINT, "aint"},
      {MPI_OFFSET, "offset"}, {MPI_COUNT, "count"}, {MPI_FLOAT, "float"}, {MPI_DOUBLE, "double"},
      {MPI_LONG_DOUBLE, "long_double"}, {MPI_C_FLOAT_COMPLEX, "c_float_complex"},
      {MPI_C_DOUBLE_COMPLEX, "c_double_complex"},
      {MPI_C_LONG_DOUBLE_COMPLEX, "c_long_double_complex"}, {MPI_FLOAT_INT, "float_int"},
      {MPI_DOUBLE_INT, "double_int"}, {MPI_LONG_INT, "long_int"}, {MPI_2INT, "2int"},
      {MPI_SHORT_INT, "short_int"}, {MPI_LONG_DOUBLE_INT, "long_double_int"},
  };
}

struct Refused {
  std::string why;
};

dt::TypeRef with_library_bounds(dt::TypeRef node, MPI_Datatype t) {
  MPI_Aint lb = 0, extent = 0;
  PMPI_Type_get_extent(t, &lb, &extent);
  int size = 0;
  PMPI_Type_size(t, &size);
  if (node->b.size != size)
    throw Refused{"decoded size " + std::to_string(node->b.size) + " != library size " +
                  std::to_string(size)};
  return dt::with_bounds(node, lb, extent);
}

dt::TypeRef decode(MPI_Datatype t, int depth) {
  if (depth > 64) throw Refused{"nesting deeper than 64"};
  int ni = 0, na = 0, nt = 0, combiner = 0;
  PMPI_Type_get_envelope(t, &ni, &na, &nt, &combiner);
  if (combiner == MPI_COMBINER_NAMED) {
    for (auto& p : g_named)
      if (p.first == t) {
        dt::TypeRef n = dt::named(p.second);
        int size = 0;
        PMPI_Type_size(t, &size);
        if (n->b.size == size) return with_library_bounds(n, t);
        break;
      }
    int size = 0;
    PMPI_Type_size(t, &size);
    return with_library_bounds(dt::contiguous(size, dt::named("byte")), t);
  }
  std::vector<int> ints(ni);
  std::vector<MPI_Aint> addrs(na);
  std::vector<MPI_Datatype> types(nt);
  PMPI_Type_get_contents(t, ni, na, nt, ints.data(), addrs.data(), types.data());
  std::vector<dt::TypeRef> olds;
  std::string err;
  try {
    for (MPI_Datatype x : types) olds.push_back(decode(x, depth + 1));
  } catch (...) {
    err = "child";
  }
  for (MPI_Datatype x : types) {  // contents hand back new handles for derived types
    int a, b, c, comb;
    PMPI_Type_get_envelope(x, &a, &b, &c, &comb);
    if (comb != MPI_COMBINER_NAMED) PMPI_Type_free(&x);
  }
  if (!err.empty()) throw Refused{"a member type cannot be decoded"};
  auto I = [&](int i) -> int64_t { return ints.at(i); };
  auto range = [&](int from, int n) {
    std::vector<int64_t> v;
    for (int i = 0; i < n; ++i) v.push_back(ints.at(from + i));
    return v;
  };
  auto arange = [&](int from, int n) {
    std::vector<int64_t> v;
    for (int i = 0; i < n; ++i) v.push_back(addrs.at(from + i));
    return v;
  };
  auto order = [&](int64_t o) { return o == MPI_ORDER_FORTRAN ? dt::Order::fortran : dt::Order::c; };
  dt::TypeRef node;
  switch (combiner) {
    case MPI_COMBINER_DUP: node = dt::dup(olds.at(0)); break;
    case MPI_COMBINER_CONTIGUOUS: node = dt::contiguous(I(0), olds.at(0)); break;
    case MPI_COMBINER_VECTOR: node = dt::vector(I(0), I(1), I(2), olds.at(0)); break;
    case MPI_COMBINER_HVECTOR: node = dt::hvector(I(0), I(1), addrs.at(0), olds.at(0)); break;
    case MPI_COMBINER_INDEXED: {
      int n = ints.at(0);
      node = dt::indexed(range(1, n), range(1 + n, n), olds.at(0));
      break;
    }
    case MPI_COMBINER_HINDEXED: {
      int n = ints.at(0);
      node = dt::hindexed(range(1, n), arange(0, n), olds.at(0));
      break;
    }
    case MPI_COMBINER_INDEXED_BLOCK: node = dt::indexed_block(I(1), range(2, ints.at(0)), olds.at(0)); break;
    case MPI_COMBINER_HINDEXED_BLOCK: node = dt::hindexed_block(I(1), arange(0, ints.at(0)), olds.at(0)); break;
    case MPI_COMBINER_STRUCT: {
      int n = ints.at(0);
      node = dt::structure(range(1, n), arange(0, n), olds);
      break;
    }
    case MPI_COMBINER_SUBARRAY: {
      int n = ints.at(0);
      node = dt::subarray(range(1, n), range(1 + n, n), range(1 + 2 * n, n), order(I(1 + 3 * n)), olds.at(0));
      break;
    }
    case MPI_COMBINER_RESIZED: node = dt::resized(olds.at(0), addrs.at(0), addrs.at(1)); break;
    default:
      // darray (the libraries disagree with the standard in places), F90 types, ...: the
      // library keeps these, so its own layout is used.
      throw Refused{"combiner " + std::to_string(combiner) + " is left to the library"};
  }
  return with_library_bounds(node, t);
}

template <typename Handle>  // an MPI handle as a number, whether the MPI makes it an int or a pointer
unsigned long long handle_bits(Handle t) {
  unsigned long long v = 0;
  std::memcpy(&v, &t, sizeof t < sizeof v ? sizeof t : sizeof v);
  return v;
}

void commit_type(MPI_Datatype t) {
  auto info = std::make_shared<TypeInfo>();
  try {
    dt::TypeRef node = decode(t, 0);
    info->one = dt::canonical(node);
    info->size = node->b.size;
    info->extent = node->b.extent();
    int64_t nruns = static_cast<int64_t>(info->one.runs.size()) * std::max<int64_t>(1, info->one.repeats());
    info->mean_block = nruns > 0 ? info->size / nruns : 0;
    info->single_run = info->one.empty() || (info->one.strided() && info->one.dims.empty());
    info->contiguous = info->one.empty() ||
                       (info->single_run && info->one.runs[0].offset == 0 && info->one.runs[0].length == info->extent);
    stats().types_decoded++;
  } catch (const Refused& r) {
    stats().types_refused++;
    logf(kInfo, "type 0x%llx left to the library: %s", handle_bits(t), r.why.c_str());
    return;
  } catch (const std::exception& e) {
    stats().types_refused++;
    logf(kInfo, "type 0x%llx left to the library: %s", handle_bits(t), e.what());
    return;
  }
  std::lock_guard<std::mutex> lk(g_types_mu);
  g_types[t] = info;
  g_types_gen.fetch_add(1, std::memory_order_release);
}

TypeInfoRef lookup(MPI_Datatype t) {
  std::lock_guard<std::mutex> lk(g_types_mu);
  if (g_types.empty()) return nullptr;
  auto it = g_types.find(t);
  return it == g_types.end() ? nullptr : it->second;
}

// The type cache as each thread sees it: a small direct-mapped per-thread copy, so that choosing
// takes no lock and touches no shared cache line (the mutex, the map and the shared_ptr count
// cost ~100 ns a call; a packed message also reuses its thread's plan for the same count).
// Every commit/free bumps g_types_gen, which invalidates all copies (handles are reused after
// MPI_Type_free); a copy keeps its TypeInfo alive until then.
struct Brief {
  MPI_Datatype t{};
  uint64_t gen = 0;  // 0: empty slot
  TypeInfoRef info;  // nullptr: not a type the shim decoded
  int64_t plan_count = -1;
  std::shared_ptr<const dt::Plan> plan;
  // the model's last answer for this type, by (count, communicator, peer): a halo asks the same
  // questions every step
  int64_t asked_count = -1;
  MPI_Comm asked_comm = MPI_COMM_NULL;
  int asked_rank = MPI_PROC_NULL;
  bool answer = false;
};

HAULER_TLS Brief* tl_slots = nullptr;
HAULER_TLS unsigned tl_victim = 0;

Brief& brief(MPI_Datatype t) {
  // 256 slots (~25 KiB a thread), a type in any of the 4 from its hash on: a 3D halo alone uses
  // 52 types, and with one slot per hash 5 pairs of them collided and went back to the locked map
  // (and rebuilt their plans) 7 times per exchange
  constexpr unsigned kSlotBits = 8, kWays = 4;
  // owned by a thread_local that frees them at thread exit; reached through an initial-exec pointer
  struct Owner {
    std::unique_ptr<Brief[]> p;
    ~Owner() { tl_slots = nullptr; }
  };
  if (__builtin_expect(tl_slots == nullptr, 0)) {
    thread_local Owner owner;  // declared here: its init guard is checked on this path only
    owner.p.reset(new Brief[(1u << kSlotBits) + kWays - 1]);
    tl_slots = owner.p.get();
  }
  uint64_t gen = g_types_gen.load(std::memory_order_acquire);
  unsigned long long h = handle_bits(t) * 0x9E3779B97F4A7C15ull;  // Fibonacci hashing: top bits
  Brief* set = tl_slots + (h >> (64 - kSlotBits));
  Brief* stale = nullptr;
  for (unsigned w = 0; w < kWays; ++w) {
    if (set[w].gen == gen && set[w].t == t) return set[w];
    if (set[w].gen != gen && !stale) stale = &set[w];
  }
  Brief& b = stale ? *stale : set[tl_victim++ % kWays];
  b.t = t;
  b.gen = gen;
  b.info = lookup(t);
  b.plan_count = -1;
  b.plan.reset();
  b.asked_count = -1;
  return b;
}

// ---------------------------------------------------------------- device buffers
// A device pointer must never reach the host pack kernels. Device memory can only exist once the
// process has loaded the CUDA driver, so the shim asks the driver about a buffer only when
// libcuda is already loaded (dlopen RTLD_NOLOAD: the shim never loads the driver itself).
// Device and managed buffers are packed by the GPU kernels (see "GPU staging" below) or, without
// a GPU backend, go to the (CUDA-aware) library unchanged.
using CuPointerGetAttribute = int (*)(void*, int, unsigned long long);
std::atomic<CuPointerGetAttribute> g_cu_attr{nullptr};
std::atomic<int64_t> g_cu_probe{0};
std::atomic<int64_t> g_device_passthrough{0};
std::atomic<unsigned long long> g_seen_adds{~0ull};

struct LoadScan {
  unsigned long long adds = 0;
  bool first_only = true;
  bool found = false;
};

int load_scan(struct dl_phdr_info* info, size_t, void* data) {
  auto* s = static_cast<LoadScan*>(data);
  s->adds = info->dlpi_adds;
  if (s->first_only) return 1;
  if (info->dlpi_name && std::strstr(info->dlpi_name, "libcuda.so")) {
    s->found = true;
    return 1;
  }
  return 0;
}

// The driver's cuPointerGetAttribute once the program has loaded libcuda, else nullptr. Cheap
// when nothing was loaded since the last look (dl_iterate_phdr's load counter; no file access:
// dlopen(RTLD_NOLOAD) of a library that is not loaded searches the disk, ~20 us).
CuPointerGetAttribute cuda_driver() {
  CuPointerGetAttribute f = g_cu_attr.load(std::memory_order_acquire);
  if (f != nullptr) return f;
  LoadScan first;
  dl_iterate_phdr(load_scan, &first);
  if (first.adds == g_seen_adds.load(std::memory_order_relaxed)) return nullptr;
  g_seen_adds.store(first.adds, std::memory_order_relaxed);
  g_cu_probe.fetch_add(1, std::memory_order_relaxed);
  LoadScan all;
  all.first_only = false;
  dl_iterate_phdr(load_scan, &all);
  if (!all.found) return nullptr;
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (h == nullptr) return nullptr;
  f = reinterpret_cast<CuPointerGetAttribute>(dlsym(h, "cuPointerGetAttribute"));
  if (f == nullptr) return nullptr;
  g_cu_attr.store(f, std::memory_order_release);
  logf(kInfo, "CUDA driver loaded by the program: device buffers are detected and passed through");
  return f;
}

// Device and managed allocations this thread has seen, as the driver reported their address
// ranges: a buffer inside one is known without asking the driver again, so messages on the same
// device arrays cost no driver call after the first. Only device verdicts are kept. An
// allocation's range stays device memory while the program's context lives (the driver keeps the
// address space reserved), whereas a host verdict could go stale: freed host memory can be
// mapped again by the driver.
constexpr int kDeviceRanges = 16;
HAULER_TLS uintptr_t tl_dev_lo[kDeviceRanges];
HAULER_TLS uintptr_t tl_dev_hi[kDeviceRanges];
HAULER_TLS unsigned tl_dev_next;
std::atomic<int64_t> g_cu_queries{0};  // the report's cuda_queries: pointer queries sent to the driver

bool device_buffer(const void* p, size_t len) {
  CuPointerGetAttribute f = cuda_driver();
  if (f == nullptr) return false;
  auto a = reinterpret_cast<uintptr_t>(p);
  for (int i = 0; i < kDeviceRanges; ++i)
    if (a >= tl_dev_lo[i] && a + len <= tl_dev_hi[i]) return true;
  const int kMemoryType = 2, kIsManaged = 8, kRangeStart = 11, kRangeSize = 12, kDevice = 2, kUnified = 4;
  unsigned int mem_type = 0, managed = 0;
  g_cu_queries.fetch_add(1, std::memory_order_relaxed);
  if (f(&mem_type, kMemoryType, a) != 0) return false;  // host memory the driver does not know
  f(&managed, kIsManaged, a);
  if (mem_type != kDevice && mem_type != kUnified && managed == 0) return false;
  unsigned long long start = 0, size = 0;  // CUdeviceptr and size_t: 8 bytes on every 64-bit ABI
  if (f(&start, kRangeStart, a) == 0 && f(&size, kRangeSize, a) == 0 && start <= a && a - start < size) {
    unsigned i = tl_dev_next++ % kDeviceRanges;
    tl_dev_lo[i] = start;
    tl_dev_hi[i] = start + size;
  }
  return true;
}

// The GPU backend (libhauler_cuda.so next to the Python package, or HAULER_CUDA_LIB) and the
// driver's allocator, looked up the first time a message on a device buffer is to be packed:
// never on a machine without a driver, since device_buffer() is false there.
using CuMemAlloc = int (*)(unsigned long long*, size_t);
using CuMemFree = int (*)(unsigned long long);
struct Gpu {
  const hauler::gpu::Backend* backend = nullptr;
  CuMemAlloc mem_alloc = nullptr;
  CuMemFree mem_free = nullptr;
};
std::atomic<bool> g_gpu_used{false};

std::string kernels_path() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&kernels_path), &info) == 0 || info.dli_fname == nullptr) return "";
  std::string self = info.dli_fname;  // <package>/interpose/<flavour>/libhauler_interpose.so
  for (int up = 0; up < 3; ++up) {
    size_t slash = self.rfind('/');
    if (slash == std::string::npos) return "";
    self.resize(slash);
  }
  return self + "/libhauler_cuda.so";
}

const Gpu& gpu() {
  static const Gpu once = [] {
    Gpu x;
    hauler::gpu::set_default_library_path(kernels_path());
    x.backend = hauler::gpu::backend();
    if (x.backend == nullptr)
      logf(kWarning, "device buffers go to the library unchanged (no GPU packing): %s",
           hauler::gpu::status_message().c_str());
    else
      logf(kInfo, "device buffers are packed by the GPU kernels: %s", hauler::gpu::status_message().c_str());
    if (void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD)) {
      x.mem_alloc = reinterpret_cast<CuMemAlloc>(dlsym(h, "cuMemAlloc_v2"));
      x.mem_free = reinterpret_cast<CuMemFree>(dlsym(h, "cuMemFree_v2"));
    }
    g_gpu_used = true;
    return x;
  }();
  return once;
}

// Where a packed message is staged: host memory, or for a device buffer (GPU kernels) device
// memory or mapped pinned host memory.
enum class Where : uint8_t { host, device, oneshot };

// Decide whether a (buffer, count, type) message is packed by hauler. Returns the plan if so.
// Who a point-to-point message goes to or comes from (comm MPI_COMM_NULL: MPI_Pack and the
// collectives, which the model's max_block/min_bytes decide).
struct Peer {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = MPI_ANY_SOURCE;
};

// Whether packing a message of `bytes` with mean contiguous blocks of `block` bytes pays.
bool pays(const Peer& to, int64_t block, int64_t bytes) {
  if (to.comm == MPI_COMM_NULL || (g.grid[0].empty() && g.grid[1].empty()))
    return block <= g.max_block && bytes >= g.min_bytes;
  // A message to this rank itself (in an intercommunicator the rank names the other group, so
  // this can only misjudge speed, never results).
  int me = -1;
  bool self = to.rank >= 0 && PMPI_Comm_rank(to.comm, &me) == MPI_SUCCESS && me == to.rank;
  const auto& cells = g.grid[self && !g.grid[1].empty() ? 1 : g.grid[0].empty() ? 1 : 0];
  double lb = octaves(block), lm = octaves(bytes);
  // the median of the 3 nearest measured cells (in octaves): one cell a noisy machine spoiled
  // does not flip the answer
  struct Near {
    double d, speedup;
  } near[3];
  int k = 0;
  for (const auto& c : cells) {
    double d = (c.log_block - lb) * (c.log_block - lb) + (c.log_bytes - lm) * (c.log_bytes - lm);
    int at = k < 3 ? k++ : 3;
    while (at > 0 && near[at - 1].d > d) {
      if (at < 3) near[at] = near[at - 1];
      --at;
    }
    if (at < 3) near[at] = Near{d, c.speedup};
  }
  double x[3];
  for (int i = 0; i < k; ++i) x[i] = near[i].speedup;
  std::sort(x, x + k);
  return x[k / 2] > 1.0;
}

// The decision without touching a shared_ptr (the pass-through path pays for no reference
// counts): the thread's Brief of t, holding the plan, when hauler packs this message; else nullptr.
Brief* decide(int count, MPI_Datatype t, const Peer& to) {
  if (count <= 0) return nullptr;
  if (g_paused.load(std::memory_order_relaxed)) {
    stats().paused++;
    return nullptr;
  }
  Brief& b = brief(t);
  const TypeInfo* info = b.info.get();
  if (!info) {
    stats().passthrough++;
    return nullptr;
  }
  // One dense run (a contiguous type, or a single element that is one block, e.g. a halo edge
  // or corner): the library sends it as it is, with no copy.
  if (info->contiguous || info->size == 0 || (count == 1 && info->single_run)) {
    stats().contiguous++;
    return nullptr;
  }
  if (b.asked_count != count || b.asked_comm != to.comm || b.asked_rank != to.rank) {
    b.answer = pays(to, info->mean_block, info->size * count);
    b.asked_count = count;
    b.asked_comm = to.comm;
    b.asked_rank = to.rank;
  }
  if (!b.answer) {
    stats().passthrough++;
    return nullptr;
  }
  if (b.plan_count != count) {
    b.plan = b.info->plan(count);
    b.plan_count = count;
  }
  return &b;
}

std::shared_ptr<const dt::Plan> choose(int count, MPI_Datatype t, TypeInfoRef* keep, const Peer& to) {
  Brief* b = decide(count, t, to);
  if (!b) return nullptr;
  *keep = b->info;  // keeps the type alive while a request uses it
  return b->plan;
}

// choose() for a buffer: device buffers (see above) are never packed on the host. Callers that
// can stage on the GPU pass `where` and get Where::device/oneshot for them when a backend exists.
std::shared_ptr<const dt::Plan> choose_buf(const void* buf, int count, MPI_Datatype t, TypeInfoRef* keep,
                                           Where* where = nullptr, const Peer& to = Peer()) {
  auto plan = choose(count, t, keep, to);
  if (where) *where = Where::host;
  if (plan && buf != nullptr && device_buffer(static_cast<const uint8_t*>(buf) + plan->span_lo,
                                              static_cast<size_t>(plan->span_hi - plan->span_lo))) {
    if (where && g.gpu && gpu().backend) {
      *where = plan->total <= g.gpu_oneshot_max ? Where::oneshot : Where::device;
      return plan;
    }
    g_device_passthrough++;
    keep->reset();
    return nullptr;
  }
  return plan;
}

// ---------------------------------------------------------------- staging buffers
std::mutex g_pool_mu;
std::multimap<size_t, void*> g_pool;
size_t g_pool_bytes = 0;
constexpr size_t kPoolMax = size_t(256) << 20;

size_t size_class(size_t n) {
  size_t c = 64;
  while (c < n) c <<= 1;
  return c;
}

// Staging up to kLocalMax bytes is kept per thread first (a message's staging is usually taken
// and given back by the thread that posts and completes it), so a small message takes no lock
// here: at most kLocalPerClass buffers per size class, ~4 MiB per thread at worst.
constexpr size_t kLocalMax = size_t(256) << 10;
constexpr size_t kLocalPerClass = 8;
struct LocalPool {
  std::vector<void*> cls[13];  // size classes 64 B .. 256 KiB
  ~LocalPool() {
    for (auto& v : cls)
      for (void* p : v) std::free(p);
  }
  std::vector<void*>* at(size_t c) {
    if (c > kLocalMax) return nullptr;
    return &cls[__builtin_ctzll(c) - 6];
  }
};
thread_local LocalPool tl_pool;

void* buf_get(size_t n) {
  size_t c = size_class(n);
  if (auto* v = tl_pool.at(c); v && !v->empty()) {
    void* p = v->back();
    v->pop_back();
    return p;
  }
  {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    auto it = g_pool.find(c);
    if (it != g_pool.end()) {
      void* p = it->second;
      g_pool.erase(it);
      g_pool_bytes -= c;
      return p;
    }
  }
  void* p = nullptr;
  if (posix_memalign(&p, 64, c) != 0) return nullptr;
  return p;
}

void buf_put(void* p, size_t n) {
  if (!p) return;
  size_t c = size_class(n);
  if (auto* v = tl_pool.at(c); v && v->size() < kLocalPerClass) {
    v->push_back(p);
    return;
  }
  std::lock_guard<std::mutex> lk(g_pool_mu);
  if (g_pool_bytes + c > kPoolMax) {
    std::free(p);
    return;
  }
  g_pool.emplace(c, p);
  g_pool_bytes += c;
}

// ---------------------------------------------------------------- GPU staging
// A message on a device buffer is packed by the GPU kernels into staging the library is handed
// (`mpi`): device memory for Where::device, or pinned host memory mapped into the device for
// Where::oneshot, which the kernels reach at `dev`. Both are pooled by size class like the host
// staging, since allocating or registering them costs far more than a message.
struct GpuBuf {
  void* mpi = nullptr;
  void* dev = nullptr;
};
std::multimap<size_t, GpuBuf> g_gpu_pool[2];  // [0] device, [1] oneshot; under g_pool_mu
size_t g_gpu_pool_bytes = 0;

std::multimap<size_t, GpuBuf>& gpu_pool(Where w) { return g_gpu_pool[w == Where::device ? 0 : 1]; }

void gpu_release(Where w, GpuBuf b) {
  if (w == Where::device) {
    if (gpu().mem_free) gpu().mem_free(reinterpret_cast<unsigned long long>(b.mpi));
    return;
  }
  char err[256] = "";
  gpu().backend->host_unregister(b.mpi, err, sizeof err);
  std::free(b.mpi);
}

bool gpu_get(Where w, size_t n, GpuBuf* out) {
  size_t c = size_class(n);
  {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    auto& pool = gpu_pool(w);
    auto it = pool.find(c);
    if (it != pool.end()) {
      *out = it->second;
      pool.erase(it);
      g_gpu_pool_bytes -= c;
      return true;
    }
  }
  const Gpu& G = gpu();
  if (w == Where::device) {
    // The program's current context (a CUDA-aware program has one on the thread that calls MPI).
    unsigned long long d = 0;
    if (G.mem_alloc == nullptr || G.mem_alloc(&d, c) != 0 || d == 0) return false;
    out->mpi = out->dev = reinterpret_cast<void*>(d);
    return true;
  }
  void* p = nullptr;
  if (posix_memalign(&p, 4096, c) != 0) return false;
  char err[256] = "";
  if (G.backend->host_register(p, c, 0, &out->dev, err, sizeof err) != 0) {
    logf(kWarning, "mapped staging of %zu bytes refused: %s", c, err);
    std::free(p);
    return false;
  }
  out->mpi = p;
  return true;
}

void gpu_put(Where w, size_t n, GpuBuf b) {
  size_t c = size_class(n);
  {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    if (g_gpu_pool_bytes + c <= kPoolMax) {
      gpu_pool(w).emplace(c, b);
      g_gpu_pool_bytes += c;
      return;
    }
  }
  gpu_release(w, b);
}

// At MPI_Finalize, while the program's CUDA context still exists.
void gpu_drain() {
  if (!g_gpu_used) return;
  std::lock_guard<std::mutex> lk(g_pool_mu);
  for (Where w : {Where::device, Where::oneshot}) {
    for (auto& e : gpu_pool(w)) gpu_release(w, e.second);
    gpu_pool(w).clear();
  }
  g_gpu_pool_bytes = 0;
}

// ---------------------------------------------------------------- requests
struct Pending {
  bool recv = false;
  Where where = Where::host;
  void* buf = nullptr;  // staging, as the library sees it
  void* dev = nullptr;  // the same staging as the GPU kernels see it (Where::device/oneshot)
  size_t bytes = 0;
  void* origin = nullptr;
  std::shared_ptr<const dt::Plan> plan;
  TypeInfoRef type;  // keeps the type alive even if the application frees it
  bool unpacked = false;  // already unpacked (MPI_Request_get_status saw it complete)
};

std::mutex g_req_mu;
std::unordered_map<MPI_Request, Pending> g_reqs;
std::atomic<int64_t> g_nreqs{0};
std::vector<MPI_Request> g_orphans;  // freed by the application, completed by us
std::atomic<int64_t> g_norphans{0};  // g_orphans.size(): completion calls skip the lock at 0

// Point-to-point staging buffers taken and not yet given back (the report's staging_held: 0 at
// MPI_Finalize once the program completed every request).
std::atomic<int64_t> g_staging_held{0};

void release(Pending& p);

// A handle the library gives to every request that completed at once: MPICH hands each send that
// finished inside the call the one predefined request 0x6c000001 (handle kind "builtin"), so such
// a handle names no request the shim could complete later.
bool predefined_complete(MPI_Request r) {
#if defined(MPICH_VERSION)
  return (static_cast<unsigned>(r) >> 30) == 1u;
#else
  (void)r;
  return false;
#endif
}

void remember(MPI_Request r, Pending p) {
  Pending earlier;
  bool shared = false;
  {
    std::lock_guard<std::mutex> lk(g_req_mu);
    auto [it, fresh] = g_reqs.try_emplace(r);
    if (fresh) g_nreqs++;
    else earlier = std::move(it->second), shared = true;
    it->second = std::move(p);
  }
  if (!shared) return;
  // No two live requests share a handle unless it is one the library gives to completed
  // requests (predefined_complete() knows MPICH's): the earlier one is finished. A send's staging
  // goes back; a receive's bytes cannot be unpacked without its status.
  if (earlier.recv && !earlier.unpacked)
    logf(kError, "the library gave handle 0x%llx to two requests at once; an earlier receive of %zu packed bytes "
         "was not unpacked", handle_bits(r), earlier.bytes);
  release(earlier);
}

// A completion call takes the shim's records out of the table *before* the library may complete
// a request: once the library has freed a request, another thread's next call can be handed the
// same handle, and its record must not meet this one's (MPI_THREAD_MULTIPLE). Records of requests
// that did not complete go back (node handles: no allocation either way); no other thread can
// reuse a handle the library still holds.
using ReqNode = std::unordered_map<MPI_Request, Pending>::node_type;

// The record of r, out of the table (empty: not a request of the shim's).
ReqNode take_node(MPI_Request r) {
  if (g_nreqs.load(std::memory_order_relaxed) == 0 || r == MPI_REQUEST_NULL) return ReqNode();
  std::lock_guard<std::mutex> lk(g_req_mu);
  ReqNode n = g_reqs.extract(r);
  if (n) g_nreqs--;
  return n;
}

// A record whose request did not complete goes back.
void put_back(ReqNode&& n) {
  if (!n) return;
  std::lock_guard<std::mutex> lk(g_req_mu);
  g_reqs.insert(std::move(n));
  g_nreqs++;
}

bool ours(MPI_Request r) {
  if (g_nreqs.load(std::memory_order_relaxed) == 0 || r == MPI_REQUEST_NULL) return false;
  std::lock_guard<std::mutex> lk(g_req_mu);
  return g_reqs.count(r) != 0;
}

// Runs the GPU kernels between the application's device buffer and p's staging, and waits for
// them: the library must not send bytes not yet written, nor the application read a buffer not
// yet unpacked. False (logged) when the backend fails.
bool gpu_run(bool pack, const dt::Plan& plan, const void* origin, const Pending& p, int64_t n) {
  try {
    if (pack) dt::gpu_pack(plan, origin, p.dev, 0, n);
    else dt::gpu_unpack(plan, const_cast<void*>(origin), p.dev, 0, n);
    hauler::gpu::synchronize(nullptr);
    return true;
  } catch (const std::exception& e) {
    logf(kError, "GPU %s failed: %s", pack ? "pack" : "unpack", e.what());
    return false;
  }
}

// Gives p's staging back to its pool.
void release(Pending& p) {
  if (!p.buf) return;
  if (p.where == Where::host) buf_put(p.buf, p.bytes);
  else gpu_put(p.where, p.bytes, GpuBuf{p.buf, p.dev});
  p.buf = nullptr;
  g_staging_held.fetch_sub(1, std::memory_order_relaxed);
}

// Unpacks what arrived (the byte count in the status) into the application's buffer, once.
void unpack_arrived(Pending& p, MPI_Status* status) {
  if (!p.recv || p.unpacked) return;
  p.unpacked = true;
  int cancelled = 0, got = 0;
  PMPI_Test_cancelled(status, &cancelled);
  if (cancelled || PMPI_Get_count(status, MPI_BYTE, &got) != MPI_SUCCESS || got == MPI_UNDEFINED || got <= 0) return;
  int64_t n = std::min<int64_t>(got, p.plan->total);
  Timer tm;
  if (p.where == Where::host) {
    dt::unpack(*p.plan, p.origin, p.buf, 0, n);
  } else {
    if (!gpu_run(false, *p.plan, p.origin, p, n)) return;
    stats().gpu_unpacked++;
  }
  stats().bytes_unpacked += n;
  stats().unpacked_msgs++;
}

void finish(Pending& p, MPI_Status* status) {
  unpack_arrived(p, status);
  release(p);
}

// Requests the application freed: completed here as calls go by and at MPI_Finalize.
void progress_orphans(bool block) {
  if (g_norphans.load(std::memory_order_relaxed) == 0) return;
  std::vector<MPI_Request> mine;
  {
    std::lock_guard<std::mutex> lk(g_req_mu);
    if (g_orphans.empty()) return;
    mine.swap(g_orphans);
    g_norphans = 0;
  }
  std::vector<MPI_Request> left;
  for (MPI_Request r : mine) {
    MPI_Request h = r;
    MPI_Status s;
    int flag = 0;
    ReqNode n = take_node(r);  // before the library may free r (see "completion")
    if (block) {
      PMPI_Wait(&h, &s);
      flag = 1;
    } else {
      PMPI_Test(&h, &flag, &s);
    }
    if (flag) {
      if (n) finish(n.mapped(), &s);
    } else {
      put_back(std::move(n));
      left.push_back(r);
    }
  }
  std::lock_guard<std::mutex> lk(g_req_mu);
  g_orphans.insert(g_orphans.end(), left.begin(), left.end());
  g_norphans = static_cast<int64_t>(g_orphans.size());
}

// ---------------------------------------------------------------- point to point
// Every point-to-point call has the same shape: stage each side the shim takes (a send is packed
// into staging now; a receive gets staging to land in and unpacks on completion), hand the
// library bytes for a staged side and the application's own arguments otherwise, then release
// (blocking) or remember under the real request (non-blocking).
bool fits_int(const dt::Plan& p) { return p.total <= INT32_MAX; }

// Whether hauler would pack this side of a point-to-point message (stage() then decides for
// good: a device buffer may still go to the library). The pass-through test every call makes:
// nothing is built, counted twice or reference-counted before the answer.
bool packs(int count, MPI_Datatype t, int peer, MPI_Comm comm) {
  return peer != MPI_PROC_NULL && decide(count, t, Peer{comm, peer}) != nullptr;
}

// Stages (buf, count, t) in *p when the shim takes this side of a message, which packs() said it
// may; false: the library does.
bool stage(const void* buf, int count, MPI_Datatype t, int peer, MPI_Comm comm, bool recv, Pending* p) {
  TypeInfoRef info;
  Where where = Where::host;
  auto plan = choose_buf(buf, count, t, &info, &where, Peer{comm, peer});
  if (!plan || !fits_int(*plan)) return false;
  p->bytes = static_cast<size_t>(plan->total);
  if (where == Where::host) {
    p->buf = buf_get(p->bytes);
  } else {
    GpuBuf b;
    bool ok = gpu_get(where, p->bytes, &b);
    // no device staging to be had (no current context): mapped host staging, else the library
    if (!ok && where == Where::device) ok = gpu_get(where = Where::oneshot, p->bytes, &b);
    if (!ok) return false;
    p->buf = b.mpi;
    p->dev = b.dev;
    if (where == Where::device) stats().gpu_device++;
    else stats().gpu_oneshot++;
  }
  if (!p->buf) return false;
  g_staging_held.fetch_add(1, std::memory_order_relaxed);
  p->where = where;
  p->recv = recv;
  if (recv) {
    p->origin = const_cast<void*>(buf);
    p->plan = plan;
    p->type = info;
    return true;
  }
  Timer tm;
  if (where == Where::host) {
    dt::pack(*plan, buf, p->buf, 0, plan->total);
  } else {
    if (!gpu_run(true, *plan, buf, *p, plan->total)) {
      release(*p);
      return false;  // nothing was sent: the library takes the message as it is
    }
    stats().gpu_packed++;
  }
  stats().packed_msgs++;
  stats().bytes_packed += plan->total;
  return true;
}

// A non-blocking call posted bytes from/to p's staging: the request now owns it.
int keep(int rc, MPI_Request* req, Pending p) {
  if (rc != MPI_SUCCESS || *req == MPI_REQUEST_NULL) release(p);
  else if (!p.recv && predefined_complete(*req)) release(p);  // already sent
  else remember(*req, std::move(p));
  return rc;
}

int nbytes(const Pending& p) { return static_cast<int>(p.bytes); }

using SendFn = int (*)(const void*, int, MPI_Datatype, int, int, MPI_Comm);

int send_common(SendFn fn, const void* buf, int count, MPI_Datatype t, int dest, int tag, MPI_Comm comm) {
  stats().calls++;
  if (!packs(count, t, dest, comm)) return fn(buf, count, t, dest, tag, comm);
  Pending p;
  if (!stage(buf, count, t, dest, comm, false, &p)) return fn(buf, count, t, dest, tag, comm);
  int rc = fn(p.buf, nbytes(p), MPI_BYTE, dest, tag, comm);
  release(p);
  return rc;
}

int recv(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm, MPI_Status* status) {
  stats().calls++;
  if (!packs(count, t, source, comm)) return PMPI_Recv(buf, count, t, source, tag, comm, status);
  Pending p;
  if (!stage(buf, count, t, source, comm, true, &p)) return PMPI_Recv(buf, count, t, source, tag, comm, status);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Recv(p.buf, nbytes(p), MPI_BYTE, source, tag, comm, s);
  finish(p, s);
  return rc;
}

// The staged halves of isend/irecv live apart so that the pass-through path keeps a small frame.
__attribute__((noinline)) int isend_staged(const void* buf, int count, MPI_Datatype t, int dest, int tag,
                                           MPI_Comm comm, MPI_Request* req) {
  Pending p;
  if (!stage(buf, count, t, dest, comm, false, &p)) return PMPI_Isend(buf, count, t, dest, tag, comm, req);
  return keep(PMPI_Isend(p.buf, nbytes(p), MPI_BYTE, dest, tag, comm, req), req, std::move(p));
}

int isend(const void* buf, int count, MPI_Datatype t, int dest, int tag, MPI_Comm comm, MPI_Request* req) {
  stats().calls++;
  if (!packs(count, t, dest, comm)) return PMPI_Isend(buf, count, t, dest, tag, comm, req);
  return isend_staged(buf, count, t, dest, tag, comm, req);
}

__attribute__((noinline)) int irecv_staged(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm,
                                           MPI_Request* req) {
  Pending p;
  if (!stage(buf, count, t, source, comm, true, &p)) return PMPI_Irecv(buf, count, t, source, tag, comm, req);
  return keep(PMPI_Irecv(p.buf, nbytes(p), MPI_BYTE, source, tag, comm, req), req, std::move(p));
}

int irecv(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm, MPI_Request* req) {
  stats().calls++;
  if (!packs(count, t, source, comm)) return PMPI_Irecv(buf, count, t, source, tag, comm, req);
  return irecv_staged(buf, count, t, source, tag, comm, req);
}

// Each side is staged (or not) on its own.
int sendrecv(const void* sbuf, int scount, MPI_Datatype stype, int dest, int stag, void* rbuf, int rcount,
             MPI_Datatype rtype, int source, int rtag, MPI_Comm comm, MPI_Status* status) {
  stats().calls++;
  Pending sp, rp;
  bool s_on = packs(scount, stype, dest, comm) && stage(sbuf, scount, stype, dest, comm, false, &sp);
  bool r_on = packs(rcount, rtype, source, comm) && stage(rbuf, rcount, rtype, source, comm, true, &rp);
  if (!s_on && !r_on)
    return PMPI_Sendrecv(sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, source, rtag, comm, status);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Sendrecv(s_on ? sp.buf : sbuf, s_on ? nbytes(sp) : scount, s_on ? MPI_BYTE : stype, dest, stag,
                         r_on ? rp.buf : rbuf, r_on ? nbytes(rp) : rcount, r_on ? MPI_BYTE : rtype, source, rtag,
                         comm, s);
  if (r_on) finish(rp, s);
  release(sp);
  return rc;
}

// ---------------------------------------------------------------- completion
int wait(MPI_Request* req, MPI_Status* status) {
  progress_orphans(false);
  ReqNode n = take_node(*req);
  if (!n) return PMPI_Wait(req, status);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Wait(req, s);
  finish(n.mapped(), s);
  return rc;
}

int test(MPI_Request* req, int* flag, MPI_Status* status) {
  progress_orphans(false);
  ReqNode n = take_node(*req);
  if (!n) return PMPI_Test(req, flag, status);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Test(req, flag, s);
  if (*flag) finish(n.mapped(), s);
  else put_back(std::move(n));
  return rc;
}

// A request of the shim's among an array: its index and its record, taken out of the table.
struct Mine {
  int i;
  ReqNode node;
};

// The shim's requests among reqs[0..n), in index order, their records taken out (one pass under
// the lock); nullptr when there are none, and then nothing is touched at all while the shim has
// no request pending (the pass-through case: no thread_local, no lock). Per-thread storage,
// reused; every caller hands each record on (finish) or back (put_back).
std::vector<Mine>* take_among(int n, const MPI_Request* reqs) {
  if (n <= 0 || g_nreqs.load(std::memory_order_relaxed) == 0) return nullptr;
  static thread_local std::vector<Mine> mine;
  mine.clear();
  std::lock_guard<std::mutex> lk(g_req_mu);
  for (int i = 0; i < n; ++i) {
    if (reqs[i] == MPI_REQUEST_NULL) continue;
    ReqNode node = g_reqs.extract(reqs[i]);
    if (!node) continue;
    g_nreqs--;
    mine.push_back(Mine{i, std::move(node)});
  }
  return mine.empty() ? nullptr : &mine;
}

// The statuses array a call writes: the application's, or per-thread scratch when it passed
// MPI_STATUSES_IGNORE (the shim needs each byte count).
MPI_Status* statuses_for(MPI_Status* statuses, int n) {
  if (statuses != MPI_STATUSES_IGNORE) return statuses;
  thread_local std::vector<MPI_Status> local;
  if (local.size() < static_cast<size_t>(n)) local.resize(n);
  return local.data();
}

bool pending_in(int rc, const MPI_Status& s) { return rc == MPI_ERR_IN_STATUS && s.MPI_ERROR == MPI_ERR_PENDING; }

// Waitall, and Testall (flag: all of them completed).
template <typename F>
int all(int n, const int* flag, MPI_Status* statuses, std::vector<Mine>& mine, F call) {
  MPI_Status* s = statuses_for(statuses, n);
  int rc = call(s);
  bool done = flag == nullptr || *flag;
  for (Mine& m : mine)
    if (done && !pending_in(rc, s[m.i])) finish(m.node.mapped(), &s[m.i]);
    else put_back(std::move(m.node));
  return rc;
}

int waitall(int n, MPI_Request* reqs, MPI_Status* statuses) {
  progress_orphans(false);
  std::vector<Mine>* mine = take_among(n, reqs);
  if (!mine) return PMPI_Waitall(n, reqs, statuses);
  return all(n, nullptr, statuses, *mine, [&](MPI_Status* s) { return PMPI_Waitall(n, reqs, s); });
}

int testall(int n, MPI_Request* reqs, int* flag, MPI_Status* statuses) {
  progress_orphans(false);
  std::vector<Mine>* mine = take_among(n, reqs);
  if (!mine) return PMPI_Testall(n, reqs, flag, statuses);
  return all(n, flag, statuses, *mine, [&](MPI_Status* s) { return PMPI_Testall(n, reqs, flag, s); });
}

// The shim's request that was at index i, if any.
Mine* mine_at(std::vector<Mine>& mine, int i) {
  auto it = std::lower_bound(mine.begin(), mine.end(), i, [](const Mine& m, int k) { return m.i < k; });
  return it != mine.end() && it->i == i ? &*it : nullptr;
}

// Waitany, and Testany (flag: one completed).
template <typename F>
int any(int* index, const int* flag, MPI_Status* status, std::vector<Mine>& mine, F call) {
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = call(s);
  Mine* done = nullptr;
  if ((flag == nullptr || *flag) && *index != MPI_UNDEFINED) done = mine_at(mine, *index);
  for (Mine& m : mine)
    if (&m == done) finish(m.node.mapped(), s);
    else put_back(std::move(m.node));
  return rc;
}

int waitany(int n, MPI_Request* reqs, int* index, MPI_Status* status) {
  progress_orphans(false);
  std::vector<Mine>* mine = take_among(n, reqs);
  if (!mine) return PMPI_Waitany(n, reqs, index, status);
  return any(index, nullptr, status, *mine, [&](MPI_Status* s) { return PMPI_Waitany(n, reqs, index, s); });
}

int testany(int n, MPI_Request* reqs, int* index, int* flag, MPI_Status* status) {
  progress_orphans(false);
  std::vector<Mine>* mine = take_among(n, reqs);
  if (!mine) return PMPI_Testany(n, reqs, index, flag, status);
  return any(index, flag, status, *mine, [&](MPI_Status* s) { return PMPI_Testany(n, reqs, index, flag, s); });
}

template <typename F>
int some(int n, int* outcount, int* indices, MPI_Status* statuses, std::vector<Mine>& mine, F call) {
  MPI_Status* s = statuses_for(statuses, n);
  int rc = call(s);
  if (*outcount != MPI_UNDEFINED)
    for (int k = 0; k < *outcount; ++k)
      if (!pending_in(rc, s[k]))
        if (Mine* m = mine_at(mine, indices[k])) finish(m->node.mapped(), &s[k]), m->node = ReqNode();
  for (Mine& m : mine) put_back(std::move(m.node));  // the ones still pending (empty nodes: no-op)
  return rc;
}

int waitsome(int n, MPI_Request* reqs, int* outcount, int* indices, MPI_Status* statuses) {
  progress_orphans(false);
  std::vector<Mine>* mine = take_among(n, reqs);
  if (!mine) return PMPI_Waitsome(n, reqs, outcount, indices, statuses);
  return some(n, outcount, indices, statuses, *mine,
              [&](MPI_Status* s) { return PMPI_Waitsome(n, reqs, outcount, indices, s); });
}

int testsome(int n, MPI_Request* reqs, int* outcount, int* indices, MPI_Status* statuses) {
  progress_orphans(false);
  std::vector<Mine>* mine = take_among(n, reqs);
  if (!mine) return PMPI_Testsome(n, reqs, outcount, indices, statuses);
  return some(n, outcount, indices, statuses, *mine,
              [&](MPI_Status* s) { return PMPI_Testsome(n, reqs, outcount, indices, s); });
}

// MPI_Request_get_status completes nothing, but once it says "done" the application may read
// its buffer: unpack then (once), and keep the record for the call that frees the request.
int request_get_status(MPI_Request req, int* flag, MPI_Status* status) {
  if (!ours(req)) return PMPI_Request_get_status(req, flag, status);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Request_get_status(req, flag, s);
  if (rc == MPI_SUCCESS && *flag) {
    std::lock_guard<std::mutex> lk(g_req_mu);
    auto it = g_reqs.find(req);
    if (it != g_reqs.end()) unpack_arrived(it->second, s);
  }
  return rc;
}

int request_free(MPI_Request* req) {
  MPI_Request r = *req;
  if (!ours(r)) return PMPI_Request_free(req);
  // The library must not free a request whose completion we still have to act on (unpack,
  // staging buffer): keep the real handle and complete it ourselves later.
  {
    std::lock_guard<std::mutex> lk(g_req_mu);
    g_orphans.push_back(r);
    g_norphans = static_cast<int64_t>(g_orphans.size());
  }
  *req = MPI_REQUEST_NULL;
  return MPI_SUCCESS;
}

// ---------------------------------------------------------------- MPI_Pack / MPI_Unpack
// MPI_Pack and MPI_Unpack: the same checks, then the engine moves the bytes between the user's
// buffer and the packed one at *position, one way or the other; anything else: the library.
template <typename Fwd>
int pack_common(bool pack, const void* user, int count, MPI_Datatype t, const void* packed, int size, int* position,
                Fwd fwd) {
  stats().calls++;
  TypeInfoRef info;
  if (count <= 0 || position == nullptr || packed == nullptr) return fwd();
  auto plan = choose_buf(user, count, t, &info);
  if (!plan || *position < 0 || int64_t(*position) + plan->total > int64_t(size)) return fwd();
  {
    Timer tm;
    uint8_t* at = static_cast<uint8_t*>(const_cast<void*>(packed)) + *position;
    if (pack) dt::pack(*plan, user, at, 0, plan->total);
    else dt::unpack(*plan, const_cast<void*>(user), at, 0, plan->total);
  }
  stats().mpi_pack_calls++;
  (pack ? stats().bytes_packed : stats().bytes_unpacked) += plan->total;
  *position += static_cast<int>(plan->total);
  return MPI_SUCCESS;
}

int pack(const void* in, int incount, MPI_Datatype t, void* out, int outsize, int* position, MPI_Comm comm) {
  return pack_common(true, in, incount, t, out, outsize, position,
                     [&] { return PMPI_Pack(in, incount, t, out, outsize, position, comm); });
}

int unpack(const void* in, int insize, int* position, void* out, int outcount, MPI_Datatype t, MPI_Comm comm) {
  return pack_common(false, out, outcount, t, in, insize, position,
                     [&] { return PMPI_Unpack(in, insize, position, out, outcount, t, comm); });
}

// ---------------------------------------------------------------- collectives
// Alltoallv/w and their neighbour forms: every peer piece whose type hauler packs travels as
// bytes in a staging buffer, described to the library by a one-block hindexed MPI_BYTE type
// whose 64-bit displacement reaches the staging buffer from the application's base address;
// the other pieces keep their own (count, type, displacement). The call becomes one
// Alltoallw / Neighbor_alltoallw. Each side chooses per piece; the byte counts agree with the
// type signatures, which is all homogeneous Open MPI and MPICH runs need. MPI_IN_PLACE,
// intercommunicators, Cartesian neighbourhoods (MPI_PROC_NULL neighbours) and displacements that
// do not fit the call go to the library unchanged.
struct Piece {
  int count;
  MPI_Datatype type;
  MPI_Aint disp;  // bytes from the base buffer
};

struct CollSide {
  std::vector<std::shared_ptr<const dt::Plan>> plans;
  std::vector<TypeInfoRef> keep;
  std::vector<int64_t> off;
  int64_t total = 0;
  void* stage = nullptr;
  bool any = false;
};

void coll_choose(const void* base, const std::vector<Piece>& ps, CollSide& side) {
  side.plans.resize(ps.size());
  side.keep.resize(ps.size());
  side.off.assign(ps.size(), 0);
  for (size_t i = 0; i < ps.size(); ++i) {
    side.plans[i] = choose_buf(static_cast<const uint8_t*>(base) + ps[i].disp, ps[i].count, ps[i].type, &side.keep[i]);
    if (side.plans[i] && side.plans[i]->total <= INT32_MAX) {
      side.off[i] = side.total;
      side.total += (side.plans[i]->total + 63) / 64 * 64;
      side.any = true;
    } else {
      side.plans[i] = nullptr;
    }
  }
}

// Types for a w-form call: packed pieces become a byte block in the staging buffer.
bool coll_types(const std::vector<Piece>& ps, CollSide& side, const void* base, std::vector<int>& counts,
                std::vector<MPI_Aint>& disps, std::vector<MPI_Datatype>& types, std::vector<MPI_Datatype>& made) {
  size_t n = ps.size();
  counts.resize(n);
  disps.resize(n);
  types.resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (!side.plans[i]) {
      counts[i] = ps[i].count;
      disps[i] = ps[i].disp;
      types[i] = ps[i].type;
      continue;
    }
    MPI_Aint d = static_cast<MPI_Aint>(reinterpret_cast<intptr_t>(static_cast<uint8_t*>(side.stage) + side.off[i]) -
                                       reinterpret_cast<intptr_t>(base));
    MPI_Datatype t;
    if (PMPI_Type_create_hindexed_block(1, static_cast<int>(side.plans[i]->total), &d, MPI_BYTE, &t) != MPI_SUCCESS)
      return false;
    PMPI_Type_commit(&t);
    made.push_back(t);
    counts[i] = 1;
    disps[i] = 0;
    types[i] = t;
  }
  return true;
}

template <typename Fwd>
int coll_exchange(bool neighbor, MPI_Comm comm, const void* sbuf, const std::vector<Piece>& sp, void* rbuf,
                  const std::vector<Piece>& rp, Fwd forward) {
  CollSide s, r;
  coll_choose(sbuf, sp, s);
  coll_choose(rbuf, rp, r);
  if (!s.any && !r.any) {
    stats().coll_passthrough++;
    return forward();
  }
  if (!neighbor) {  // Alltoallw takes int displacements
    for (size_t i = 0; i < sp.size(); ++i)
      if (!s.plans[i] && (sp[i].disp > INT32_MAX || sp[i].disp < INT32_MIN)) { stats().coll_passthrough++; return forward(); }
    for (size_t i = 0; i < rp.size(); ++i)
      if (!r.plans[i] && (rp[i].disp > INT32_MAX || rp[i].disp < INT32_MIN)) { stats().coll_passthrough++; return forward(); }
  }
  s.stage = s.total ? buf_get(s.total) : nullptr;
  r.stage = r.total ? buf_get(r.total) : nullptr;
  if ((s.total && !s.stage) || (r.total && !r.stage)) {
    buf_put(s.stage, s.total);
    buf_put(r.stage, r.total);
    stats().coll_passthrough++;
    return forward();
  }
  {
    Timer tm;
    for (size_t i = 0; i < sp.size(); ++i)
      if (s.plans[i]) {
        dt::pack(*s.plans[i], static_cast<const uint8_t*>(sbuf) + sp[i].disp, static_cast<uint8_t*>(s.stage) + s.off[i],
                 0, s.plans[i]->total);
        stats().bytes_packed += s.plans[i]->total;
      }
  }
  std::vector<int> sc, rc;
  std::vector<MPI_Aint> sd, rd;
  std::vector<MPI_Datatype> stp, rtp, made;
  int rc_ = MPI_ERR_INTERN;
  if (coll_types(sp, s, sbuf, sc, sd, stp, made) && coll_types(rp, r, rbuf, rc, rd, rtp, made)) {
    if (neighbor) {
      rc_ = PMPI_Neighbor_alltoallw(sbuf, sc.data(), sd.data(), stp.data(), rbuf, rc.data(), rd.data(), rtp.data(), comm);
    } else {
      std::vector<int> sdi(sd.begin(), sd.end()), rdi(rd.begin(), rd.end());
      rc_ = PMPI_Alltoallw(sbuf, sc.data(), sdi.data(), stp.data(), rbuf, rc.data(), rdi.data(), rtp.data(), comm);
    }
    if (rc_ == MPI_SUCCESS) {
      Timer tm;
      for (size_t i = 0; i < rp.size(); ++i)
        if (r.plans[i]) {
          dt::unpack(*r.plans[i], static_cast<uint8_t*>(rbuf) + rp[i].disp, static_cast<uint8_t*>(r.stage) + r.off[i], 0,
                     r.plans[i]->total);
          stats().bytes_unpacked += r.plans[i]->total;
        }
    }
    stats().coll_packed++;
  } else {
    rc_ = forward();
    stats().coll_passthrough++;
  }
  for (MPI_Datatype& t : made) PMPI_Type_free(&t);
  buf_put(s.stage, s.total);
  buf_put(r.stage, r.total);
  return rc_;
}

bool plain_intracomm(MPI_Comm comm) {
  int inter = 0;
  if (PMPI_Comm_test_inter(comm, &inter) != MPI_SUCCESS) return false;
  return !inter;
}

// In- and out-degree of a graph or distributed-graph communicator; false otherwise.
bool neighbours(MPI_Comm comm, int* indeg, int* outdeg) {
  int topo = MPI_UNDEFINED;
  if (PMPI_Topo_test(comm, &topo) != MPI_SUCCESS) return false;
  if (topo == MPI_DIST_GRAPH) {
    int w = 0;
    return PMPI_Dist_graph_neighbors_count(comm, indeg, outdeg, &w) == MPI_SUCCESS;
  }
  if (topo == MPI_GRAPH) {
    int rank = 0, n = 0;
    PMPI_Comm_rank(comm, &rank);
    if (PMPI_Graph_neighbors_count(comm, rank, &n) != MPI_SUCCESS) return false;
    *indeg = *outdeg = n;
    return true;
  }
  return false;  // Cartesian: MPI_PROC_NULL neighbours; left to the library
}

MPI_Aint extent_of(MPI_Datatype t) {
  MPI_Aint lb = 0, ext = 0;
  PMPI_Type_get_extent(t, &lb, &ext);
  return ext;
}

// Whether the shim handles this (neighbour) all-to-all, and with how many
// peers it sends to and receives from; false: hand it to the library as is.
bool coll_peers(const void* sbuf, MPI_Comm comm, bool neighbor, int* ns, int* nr) {
  if (!g.coll || sbuf == MPI_IN_PLACE || !plain_intracomm(comm)) return false;
  if (neighbor) return neighbours(comm, nr, ns);
  if (PMPI_Comm_size(comm, ns) != MPI_SUCCESS) return false;
  *nr = *ns;
  return true;
}

// The v and w forms differ only in how a peer's (count, type, displacement) is read.
template <typename Fwd, typename Pieces>
int alltoall_common(const void* sbuf, void* rbuf, MPI_Comm comm, bool neighbor, Fwd fwd, Pieces pieces) {
  stats().calls++;
  int ns = 0, nr = 0;
  if (!coll_peers(sbuf, comm, neighbor, &ns, &nr)) {
    stats().coll_passthrough++;
    return fwd();
  }
  std::vector<Piece> sp(ns), rp(nr);
  pieces(sp, rp);
  return coll_exchange(neighbor, comm, sbuf, sp, rbuf, rp, fwd);
}

int alltoallv(const void* sbuf, const int* scounts, const int* sdispls, MPI_Datatype stype, void* rbuf,
              const int* rcounts, const int* rdispls, MPI_Datatype rtype, MPI_Comm comm, bool neighbor) {
  auto fwd = [&]() {
    return neighbor ? PMPI_Neighbor_alltoallv(sbuf, scounts, sdispls, stype, rbuf, rcounts, rdispls, rtype, comm)
                    : PMPI_Alltoallv(sbuf, scounts, sdispls, stype, rbuf, rcounts, rdispls, rtype, comm);
  };
  return alltoall_common(sbuf, rbuf, comm, neighbor, fwd, [&](std::vector<Piece>& sp, std::vector<Piece>& rp) {
    MPI_Aint se = extent_of(stype), re = extent_of(rtype);
    for (size_t i = 0; i < sp.size(); ++i) sp[i] = Piece{scounts[i], stype, static_cast<MPI_Aint>(sdispls[i]) * se};
    for (size_t i = 0; i < rp.size(); ++i) rp[i] = Piece{rcounts[i], rtype, static_cast<MPI_Aint>(rdispls[i]) * re};
  });
}

int alltoallw(const void* sbuf, const int* scounts, const MPI_Aint* sdA, const int* sdI, const MPI_Datatype* stypes,
              void* rbuf, const int* rcounts, const MPI_Aint* rdA, const int* rdI, const MPI_Datatype* rtypes,
              MPI_Comm comm, bool neighbor) {
  auto fwd = [&]() {
    return neighbor ? PMPI_Neighbor_alltoallw(sbuf, scounts, sdA, stypes, rbuf, rcounts, rdA, rtypes, comm)
                    : PMPI_Alltoallw(sbuf, scounts, sdI, stypes, rbuf, rcounts, rdI, rtypes, comm);
  };
  auto disp = [&](const MPI_Aint* a, const int* i, size_t k) { return neighbor ? a[k] : static_cast<MPI_Aint>(i[k]); };
  return alltoall_common(sbuf, rbuf, comm, neighbor, fwd, [&](std::vector<Piece>& sp, std::vector<Piece>& rp) {
    for (size_t i = 0; i < sp.size(); ++i) sp[i] = Piece{scounts[i], stypes[i], disp(sdA, sdI, i)};
    for (size_t i = 0; i < rp.size(); ++i) rp[i] = Piece{rcounts[i], rtypes[i], disp(rdA, rdI, i)};
  });
}

}  // namespace shim

// ==================================================================== entry points
using namespace shim;

// After the library's MPI_Init / MPI_Init_thread returned rc.
static int started(int rc) {
  if (rc == MPI_SUCCESS) {
    PMPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    init_named();
    configure();
    if (g.on) logf(kInfo, "active (pack=%d p2p=%d coll=%d gpu=%d)", g.pack, g.p2p, g.coll, g.gpu);
  }
  return rc;
}

HAULER_EXPORT int MPI_Init(int* argc, char*** argv) { return started(PMPI_Init(argc, argv)); }

HAULER_EXPORT int MPI_Init_thread(int* argc, char*** argv, int required, int* provided) {
  return started(PMPI_Init_thread(argc, argv, required, provided));
}

static void write_report() {
  if (g.report.empty() || g.report == "0") return;
  std::string path = g.report;
  FILE* f = stderr;
  bool close = false;
  if (path != "1" && path != "stderr") {
    size_t at = path.find("%r");
    if (at != std::string::npos) path.replace(at, 2, std::to_string(g_rank));
    f = std::fopen(path.c_str(), "a");
    if (!f) {
      logf(kError, "HAULER_INTERPOSE_REPORT=%s cannot be written", path.c_str());
      return;
    }
    close = true;
  }
  Totals t = totals();
  std::fprintf(f,
               "hauler-interpose rank %d: calls=%lld packed_msgs=%lld unpacked_msgs=%lld bytes_packed=%lld "
               "bytes_unpacked=%lld pack_ms=%.3f passthrough=%lld contiguous=%lld mpi_pack=%lld "
               "coll_packed=%lld coll_passthrough=%lld types_decoded=%lld types_refused=%lld device_passthrough=%lld "
               "cuda_driver=%d fortran=%lld gpu_packed=%lld gpu_unpacked=%lld gpu_device=%lld gpu_oneshot=%lld "
               "staging_held=%lld cuda_queries=%lld paused=%lld\n",
               g_rank, t.calls, t.packed_msgs,
               t.unpacked_msgs, t.bytes_packed,
               t.bytes_unpacked, t.pack_ns / 1e6, t.passthrough,
               t.contiguous, t.mpi_pack_calls,
               t.coll_packed, t.coll_passthrough,
               t.types_decoded, t.types_refused,
               (long long)g_device_passthrough.load(), g_cu_attr.load() != nullptr ? 1 : 0,
               t.fortran, t.gpu_packed, t.gpu_unpacked,
               t.gpu_device, t.gpu_oneshot, (long long)g_staging_held.load(),
               (long long)g_cu_queries.load(), t.paused);
  if (close) std::fclose(f);
}

// MPI_Pcontrol(level, ...): 0 pauses the shim (every new message goes to the library as it is),
// any other level resumes it; the call then goes on to the library (and any other tool).
HAULER_EXPORT int MPI_Pcontrol(const int level, ...) {
  if (g.on) {
    bool pause = level == 0;
    if (g_paused.exchange(pause) != pause) logf(kInfo, "MPI_Pcontrol(%d): %s", level, pause ? "paused" : "resumed");
  }
  return PMPI_Pcontrol(level);
}

HAULER_EXPORT int MPI_Finalize(void) {
  if (g.on) {
    progress_orphans(true);
    gpu_drain();
    write_report();
  }
  g.on = false;
  return PMPI_Finalize();
}

HAULER_EXPORT int MPI_Type_commit(MPI_Datatype* t) {
  int rc = PMPI_Type_commit(t);
  if (g.on && rc == MPI_SUCCESS && t) commit_type(*t);
  return rc;
}

HAULER_EXPORT int MPI_Type_free(MPI_Datatype* t) {
  if (g.on && t) {
    std::lock_guard<std::mutex> lk(g_types_mu);
    if (g_types.erase(*t)) g_types_gen.fetch_add(1, std::memory_order_release);
  }
  return PMPI_Type_free(t);
}

HAULER_EXPORT int MPI_Pack(const void* in, int incount, MPI_Datatype t, void* out, int outsize, int* position,
                           MPI_Comm comm) {
  if (!g.on || !g.pack) return PMPI_Pack(in, incount, t, out, outsize, position, comm);
  return shim::pack(in, incount, t, out, outsize, position, comm);
}

HAULER_EXPORT int MPI_Unpack(const void* in, int insize, int* position, void* out, int outcount, MPI_Datatype t,
                             MPI_Comm comm) {
  if (!g.on || !g.pack) return PMPI_Unpack(in, insize, position, out, outcount, t, comm);
  return shim::unpack(in, insize, position, out, outcount, t, comm);
}

HAULER_EXPORT int MPI_Pack_size(int incount, MPI_Datatype t, MPI_Comm comm, int* size) {
  // The library's own answer: its packed format is the bytes hauler writes.
  return PMPI_Pack_size(incount, t, comm, size);
}

// The four blocking sends differ only in the library call.
#define HAULER_BLOCKING_SEND(NAME)                                                                      \
  HAULER_EXPORT int MPI_##NAME(const void* buf, int count, MPI_Datatype t, int dest, int tag, MPI_Comm comm) { \
    if (!g.on || !g.p2p) return PMPI_##NAME(buf, count, t, dest, tag, comm);                            \
    return send_common(PMPI_##NAME, buf, count, t, dest, tag, comm);                                    \
  }
HAULER_BLOCKING_SEND(Send)
HAULER_BLOCKING_SEND(Ssend)
HAULER_BLOCKING_SEND(Bsend)
HAULER_BLOCKING_SEND(Rsend)

HAULER_EXPORT int MPI_Recv(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm,
                           MPI_Status* status) {
  if (!g.on || !g.p2p) return PMPI_Recv(buf, count, t, source, tag, comm, status);
  return shim::recv(buf, count, t, source, tag, comm, status);
}

HAULER_EXPORT int MPI_Sendrecv(const void* sbuf, int scount, MPI_Datatype stype, int dest, int stag, void* rbuf,
                               int rcount, MPI_Datatype rtype, int source, int rtag, MPI_Comm comm,
                               MPI_Status* status) {
  if (!g.on || !g.p2p)
    return PMPI_Sendrecv(sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, source, rtag, comm, status);
  return shim::sendrecv(sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, source, rtag, comm, status);
}

HAULER_EXPORT int MPI_Isend(const void* buf, int count, MPI_Datatype t, int dest, int tag, MPI_Comm comm,
                            MPI_Request* req) {
  if (!g.on || !g.p2p) return PMPI_Isend(buf, count, t, dest, tag, comm, req);
  return shim::isend(buf, count, t, dest, tag, comm, req);
}

HAULER_EXPORT int MPI_Irecv(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm,
                            MPI_Request* req) {
  if (!g.on || !g.p2p) return PMPI_Irecv(buf, count, t, source, tag, comm, req);
  return shim::irecv(buf, count, t, source, tag, comm, req);
}

// Completion calls stay active even if HAULER_INTERPOSE_P2P is off: a request of ours must
// always be finished. They cost one atomic load when no request of the shim is pending.
HAULER_EXPORT int MPI_Wait(MPI_Request* req, MPI_Status* status) {
  if (!g.on) return PMPI_Wait(req, status);
  return shim::wait(req, status);
}

HAULER_EXPORT int MPI_Test(MPI_Request* req, int* flag, MPI_Status* status) {
  if (!g.on) return PMPI_Test(req, flag, status);
  return shim::test(req, flag, status);
}

HAULER_EXPORT int MPI_Waitall(int n, MPI_Request* reqs, MPI_Status* statuses) {
  if (!g.on) return PMPI_Waitall(n, reqs, statuses);
  return shim::waitall(n, reqs, statuses);
}

HAULER_EXPORT int MPI_Testall(int n, MPI_Request* reqs, int* flag, MPI_Status* statuses) {
  if (!g.on) return PMPI_Testall(n, reqs, flag, statuses);
  return shim::testall(n, reqs, flag, statuses);
}

HAULER_EXPORT int MPI_Waitany(int n, MPI_Request* reqs, int* index, MPI_Status* status) {
  if (!g.on) return PMPI_Waitany(n, reqs, index, status);
  return shim::waitany(n, reqs, index, status);
}

HAULER_EXPORT int MPI_Testany(int n, MPI_Request* reqs, int* index, int* flag, MPI_Status* status) {
  if (!g.on) return PMPI_Testany(n, reqs, index, flag, status);
  return shim::testany(n, reqs, index, flag, status);
}

HAULER_EXPORT int MPI_Waitsome(int n, MPI_Request* reqs, int* outcount, int* indices, MPI_Status* statuses) {
  if (!g.on) return PMPI_Waitsome(n, reqs, outcount, indices, statuses);
  return shim::waitsome(n, reqs, outcount, indices, statuses);
}

HAULER_EXPORT int MPI_Testsome(int n, MPI_Request* reqs, int* outcount, int* indices, MPI_Status* statuses) {
  if (!g.on) return PMPI_Testsome(n, reqs, outcount, indices, statuses);
  return shim::testsome(n, reqs, outcount, indices, statuses);
}

HAULER_EXPORT int MPI_Request_free(MPI_Request* req) {
  if (!g.on) return PMPI_Request_free(req);
  return shim::request_free(req);
}

HAULER_EXPORT int MPI_Request_get_status(MPI_Request req, int* flag, MPI_Status* status) {
  if (!g.on) return PMPI_Request_get_status(req, flag, status);
  return shim::request_get_status(req, flag, status);
}

HAULER_EXPORT int MPI_Cancel(MPI_Request* req) {
  // The real request is the application's handle: the library cancels it; the completion
  // call that reports it cancelled releases the staging buffer without unpacking.
  return PMPI_Cancel(req);
}

HAULER_EXPORT int MPI_Alltoallv(const void* sbuf, const int* scounts, const int* sdispls, MPI_Datatype stype,
                                void* rbuf, const int* rcounts, const int* rdispls, MPI_Datatype rtype,
                                MPI_Comm comm) {
  if (!g.on) return PMPI_Alltoallv(sbuf, scounts, sdispls, stype, rbuf, rcounts, rdispls, rtype, comm);
  return shim::alltoallv(sbuf, scounts, sdispls, stype, rbuf, rcounts, rdispls, rtype, comm, false);
}

HAULER_EXPORT int MPI_Alltoallw(const void* sbuf, const int* scounts, const int* sdispls,
                                const MPI_Datatype* stypes, void* rbuf, const int* rcounts, const int* rdispls,
                                const MPI_Datatype* rtypes, MPI_Comm comm) {
  if (!g.on) return PMPI_Alltoallw(sbuf, scounts, sdispls, stypes, rbuf, rcounts, rdispls, rtypes, comm);
  return shim::alltoallw(sbuf, scounts, nullptr, sdispls, stypes, rbuf, rcounts, nullptr, rdispls, rtypes, comm, false);
}

HAULER_EXPORT int MPI_Neighbor_alltoallv(const void* sbuf, const int* scounts, const int* sdispls,
                                         MPI_Datatype stype, void* rbuf, const int* rcounts, const int* rdispls,
                                         MPI_Datatype rtype, MPI_Comm comm) {
  if (!g.on) return PMPI_Neighbor_alltoallv(sbuf, scounts, sdispls, stype, rbuf, rcounts, rdispls, rtype, comm);
  return shim::alltoallv(sbuf, scounts, sdispls, stype, rbuf, rcounts, rdispls, rtype, comm, true);
}

HAULER_EXPORT int MPI_Neighbor_alltoallw(const void* sbuf, const int* scounts, const MPI_Aint* sdispls,
                                         const MPI_Datatype* stypes, void* rbuf, const int* rcounts,
                                         const MPI_Aint* rdispls, const MPI_Datatype* rtypes, MPI_Comm comm) {
  if (!g.on) return PMPI_Neighbor_alltoallw(sbuf, scounts, sdispls, stypes, rbuf, rcounts, rdispls, rtypes, comm);
  return shim::alltoallw(sbuf, scounts, sdispls, nullptr, stypes, rbuf, rcounts, rdispls, nullptr, rtypes, comm, true);
}
