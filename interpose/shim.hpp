// The shim's internal header: what its files share (one file per concern, linked into one .so).
//
// libhauler_interpose.so is an LD_PRELOAD MPI shim that gives unchanged MPI programs hauler's
// datatype engine. Every intercepted MPI_X is one small entry point (exports.cpp): it checks the
// kill switch (and the feature switch) and either forwards to PMPI_X or calls the implementation
// in namespace `shim`. The application only ever holds real MPI requests: packed messages are
// posted as real MPI_BYTE requests, and a side table keyed by that real request says what to do
// when it completes (unpack, release the staging buffer; a trial message is also timed there,
// whichever path it took). Every completion call looks its requests up before the library nulls
// them and finishes the completed ones.
//
// The pass-through path is measured in instructions, so what every intercepted call runs before
// it knows the library takes the message (counters, the type brief, the decision, the completion
// calls' "no request of ours" test) is inline here; the rest lives in its concern's file.
//
// Built once per MPI flavour by setup.py (build_interpose); the core (csrc/common,
// csrc/datatype) is compiled in with -fvisibility=hidden so only the MPI_* symbols are exported.
#pragma once

#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "datatype/layout.hpp"
#include "datatype/pack.hpp"
#include "datatype/type.hpp"

// The MPI-4 large-count calls (MPI_Type_get_envelope_c, MPI_Send_c, ...): an MPI-4 mpi.h declares
// them; setup.py defines this 0 for a flavour whose library does not export them.
#ifndef HAULER_MPI_LARGE_COUNT
#define HAULER_MPI_LARGE_COUNT (MPI_VERSION >= 4)
#endif

#define HAULER_EXPORT extern "C" __attribute__((visibility("default")))
// The shim is preloaded, so its thread-locals can sit in the static TLS block (initial-exec: a
// plain %fs-relative load, not a __tls_get_addr call and an init guard on every MPI call).
#define HAULER_TLS __thread __attribute__((tls_model("initial-exec")))

// Declarations too are hidden: a global of another file is then reached PC-relative, not through
// the GOT (-fvisibility=hidden covers definitions only).
#pragma GCC visibility push(hidden)

namespace shim {

namespace dt = hauler::dt;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- settings (settings.cpp)
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
  // HAULER_INTERPOSE_TRIALS: point-to-point messages tried on each path (library, packed) per
  // selection before the faster is kept (select.cpp); 0: the model above decides alone.
  int trials = 4;
  // HAULER_INTERPOSE_PIPELINE / _PIPELINE_CHUNK (pipeline.cpp): packed sends of at least
  // pipeline_min bytes go in chunks of pipeline_chunk, packing overlapped with the transfer;
  // 0 = off. In force only once every rank agreed at MPI_Init (g_pipe_on).
  int64_t pipeline_min = 0;
  int64_t pipeline_chunk = 262144;
};
extern Config g_config;
// MPI_Pcontrol(0) until MPI_Pcontrol(1): new messages go to the library as they are (requests
// already staged still complete through the shim). The profiling interface's switch, so a program
// (or hauler-bench mpi) can time the library and the shim in one run.
extern std::atomic<bool> g_paused_by_pcontrol;
// Time spent packing is for the report only: two clock reads per message are a measurable part of
// a small message's cost, so nothing is timed unless a report was asked for.
extern bool g_time_packing;
extern int g_world_rank;  // this process's rank in MPI_COMM_WORLD (-1 before MPI_Init)

void configure();  // reads the settings and the model file, once, after MPI_Init
void logf(int level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
// log2(x) for x >= 1, linear between powers of two (the model's grid coordinates).
double octaves(int64_t x);

template <typename Handle>  // an MPI handle as a number, whether the MPI makes it an int or a pointer
unsigned long long handle_bits(Handle t) {
  unsigned long long v = 0;
  __builtin_memcpy(&v, &t, sizeof t < sizeof v ? sizeof t : sizeof v);
  return v;
}

// ---------------------------------------------------------------- counters (counters.cpp)
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
  X(fortran) X(gpu_packed) X(gpu_unpacked) X(gpu_device) X(gpu_oneshot) X(paused)                          \
  X(trial_lib) X(trial_pack) X(kept_lib) X(kept_pack) X(pipe_sent) X(pipe_chunks) X(pipe_received)          \
  X(pipe_watched)
struct Stats {
#define HAULER_FIELD(n) Counter n;
  HAULER_STATS(HAULER_FIELD)
#undef HAULER_FIELD
};

extern HAULER_TLS Stats* tl_thread_stats;
Stats& new_thread_stats() __attribute__((noinline));

inline Stats& stats() {
  if (__builtin_expect(tl_thread_stats != nullptr, 1)) return *tl_thread_stats;
  return new_thread_stats();
}

void count_fortran();  // one Fortran call intercepted (the per-rank report's `fortran=`)
void write_report();   // at MPI_Finalize, when HAULER_INTERPOSE_REPORT asks for one

struct Timer {
  Clock::time_point t0 = g_time_packing ? Clock::now() : Clock::time_point();
  ~Timer() {
    if (g_time_packing)
      stats().pack_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
  }
};

// ---------------------------------------------------------------- measured choice (select.cpp)
// Each point-to-point side decides alone, per (type, count, direction, where the peer runs),
// whether hauler packs the message: the first messages try both paths and are timed, the faster
// is kept, and that is checked again now and then. The two sides never need to agree. A packed
// message travels as MPI_BYTE; the library moves exactly the bytes a typed send of the same type
// signature would (both MPIs here are homogeneous: no conversion, no signature in the envelope),
// so a packed send meets a typed receive, a typed send meets a packed receive, and every status
// carries the same byte count whichever side packed. Nothing the other side does (ANY_SOURCE,
// ANY_TAG, MPI_Probe/Mprobe + Get_count, persistent or matched receives the shim never sees)
// depends on this side's choice. select.cpp says more (and where this would not hold).
enum class Loc : uint8_t { self, node, other, any };
enum Path : uint8_t { kLib = 0, kPack = 1 };
enum Dir : uint8_t { kSend = 0, kRecv = 1, kNoPeer = 2 };  // kNoPeer: MPI_Pack, collectives
constexpr int kMaxTrials = 64;  // HAULER_INTERPOSE_TRIALS' upper bound

struct Select {
  // the key, and the type's shape for the report
  int64_t count = 0;
  Loc loc = Loc::any;
  bool recv = false;
  int64_t type_size = 0, type_extent = 0, type_block = 0;
  // the fast path: messages decided, and the message number at which the next one leaves it
  std::atomic<int64_t> msgs{0};
  std::atomic<int64_t> next_event{0};
  std::atomic<uint8_t> kept{kLib};
  // the trials, under mu
  std::mutex mu;
  bool trial = false;      // a round of trials is under way
  bool off = false;        // this side cannot be staged (e.g. device memory): the library, untimed
  bool decisive = false;   // the last round's loser took at least twice the winner's time
  int target = 0;          // trial messages of each path in this round
  int issued[2] = {0, 0};
  int got[2] = {0, 0};
  int64_t sample_ns[2][kMaxTrials] = {};
  int64_t next_check = 64;  // the message number that starts the next round
  int rounds = 0;
  double best_ns[2] = {0, 0};  // the last round's fastest trial of each path

  Select();
  ~Select();  // its line moves to the report's list of retired selections
};

// The path of one message on s: kept, or (out of line) the next trial; *timed = &s when the
// message is a trial to time and record().
Path next_path_slow(Select& s, int64_t m, Select** timed);
inline Path next_path(Select& s, Select** timed) {
  int64_t m = s.msgs.fetch_add(1, std::memory_order_relaxed) + 1;
  if (__builtin_expect(m < s.next_event.load(std::memory_order_relaxed), 1)) return Path(s.kept.load(std::memory_order_relaxed));
  return next_path_slow(s, m, timed);
}
// A trial message of s on `path` took ns (from the call until its completion was seen).
void record(Select& s, Path path, int64_t ns);
// A trial whose time cannot be known (completed on another thread: the clock is per thread) is
// taken back, to be sent again.
void unrecord(Select& s, Path path);
void select_off(Select& s);  // s's messages cannot be packed: the library takes them from now on
int64_t now_ns();
void write_selections(FILE* f, int rank);  // the report's lines, one per selection

// ---------------------------------------------------------------- type cache (types.cpp)
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

  std::vector<std::unique_ptr<Select>> selects;  // under mu; every key this type was sent or received with

  std::shared_ptr<const dt::Plan> plan(int64_t count);
  // The selection of (count, loc, recv), made on first use with `seed` (the model's answer) as
  // its first path; nullptr past a bound on keys per type (the model decides for the rest).
  Select* select(int64_t count, Loc loc, bool recv, bool seed);
};
using TypeInfoRef = std::shared_ptr<TypeInfo>;

extern std::atomic<uint64_t> g_type_cache_generation;  // bumped by every commit/free (see brief())

void init_named_types();        // after MPI_Init: the predefined handles and hauler's names for them
void commit_type(MPI_Datatype t);  // after MPI_Type_commit: decode t, or leave it to the library
void forget_type(MPI_Datatype t);  // before MPI_Type_free

// The type cache as each thread sees it: a small set-associative per-thread copy, so that
// choosing takes no lock and touches no shared cache line (the mutex, the map and the shared_ptr
// count cost ~100 ns a call; a packed message also reuses its thread's plan for the same count).
// Every commit/free bumps g_type_cache_generation, which invalidates all copies (handles are
// reused after MPI_Type_free); a copy keeps its TypeInfo alive until then.
struct Brief {
  MPI_Datatype t{};
  uint64_t gen = 0;  // 0: empty slot
  TypeInfoRef info;  // nullptr: not a type the shim decoded
  int64_t plan_count = -1;
  std::shared_ptr<const dt::Plan> plan;
  // the last question about this type per direction, by (count, communicator, peer), and its
  // answer: the model's, and the selection that measures it (a halo asks the same every step)
  struct Asked {
    int64_t count = -1;
    MPI_Comm comm = MPI_COMM_NULL;
    int rank = MPI_PROC_NULL;
    bool answer = false;
    Select* sel = nullptr;  // owned by info
  } asked[3];
};

// 256 sets (~25 KiB a thread), a type in any of the 4 ways of its set: a 3D halo alone uses 52
// types, and with one slot per hash 5 pairs of them collided and went back to the locked map (and
// rebuilt their plans) 7 times per exchange
constexpr unsigned kBriefSetBits = 8, kBriefWays = 4;
extern HAULER_TLS Brief* tl_type_briefs;
extern HAULER_TLS unsigned tl_type_brief_victim;
Brief* new_type_briefs() __attribute__((noinline));  // this thread's slots, on its first look
void refill_brief(Brief& b, MPI_Datatype t, uint64_t gen);  // a slot takes t (locked map lookup)

inline Brief& brief(MPI_Datatype t) {
  Brief* slots = tl_type_briefs;
  if (__builtin_expect(slots == nullptr, 0)) slots = new_type_briefs();
  uint64_t gen = g_type_cache_generation.load(std::memory_order_acquire);
  unsigned long long h = handle_bits(t) * 0x9E3779B97F4A7C15ull;  // Fibonacci hashing: top bits
  Brief* set = slots + (h >> (64 - kBriefSetBits));
  Brief* stale = nullptr;
  for (unsigned w = 0; w < kBriefWays; ++w) {
    if (set[w].gen == gen && set[w].t == t) return set[w];
    if (set[w].gen != gen && !stale) stale = &set[w];
  }
  Brief& b = stale ? *stale : set[tl_type_brief_victim++ % kBriefWays];
  refill_brief(b, t, gen);
  return b;
}

// ---------------------------------------------------------------- the pack-or-pass decision (decide.cpp)
// Where a packed message is staged: host memory, or for a device buffer (GPU kernels) device
// memory or mapped pinned host memory.
enum class Where : uint8_t { host, device, oneshot };

// Who a point-to-point message goes to or comes from (comm MPI_COMM_NULL: MPI_Pack and the
// collectives, which the model's max_block/min_bytes decide).
struct Peer {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = MPI_ANY_SOURCE;
};

void init_locality();  // in MPI_Init, every rank: which ranks of MPI_COMM_WORLD share this node
Loc locality(const Peer& to);  // where a point-to-point peer runs (select.cpp)

// Whether packing a message of `bytes` with mean contiguous blocks of `block` bytes pays.
bool pays(const Peer& to, int64_t block, int64_t bytes);
// Brief::asked[dir] takes the question (count, to): the model's answer and the selection.
void ask(Brief& b, Brief::Asked& a, int64_t count, const Peer& to, Dir dir) __attribute__((noinline));

// What happens to one side of a message: hauler packs it (the thread's Brief of the type,
// holding the plan) or not (nullptr); and whether it is a trial to time (its selection).
struct Choice {
  Brief* pack = nullptr;
  Select* timed = nullptr;
};

// The decision without touching a shared_ptr (the pass-through path pays for no reference
// counts).
inline Choice decide(int count, MPI_Datatype t, const Peer& to, Dir dir) {
  if (count <= 0) return Choice();
  if (g_paused_by_pcontrol.load(std::memory_order_relaxed)) {
    stats().paused++;
    return Choice();
  }
  Brief& b = brief(t);
  const TypeInfo* info = b.info.get();
  if (!info) {
    stats().passthrough++;
    return Choice();
  }
  // One dense run (a contiguous type, or a single element that is one block, e.g. a halo edge
  // or corner): the library sends it as it is, with no copy.
  if (info->contiguous || info->size == 0 || (count == 1 && info->single_run)) {
    stats().contiguous++;
    return Choice();
  }
  Brief::Asked& a = b.asked[dir];
  if (a.count != count || a.comm != to.comm || a.rank != to.rank) ask(b, a, count, to, dir);
  Choice c;
  bool pack = a.answer;
  if (a.sel) {
    Path p = next_path(*a.sel, &c.timed);
    pack = p == kPack;
    if (c.timed) (pack ? stats().trial_pack : stats().trial_lib)++;
    else (pack ? stats().kept_pack : stats().kept_lib)++;
  }
  if (!pack) {
    stats().passthrough++;
    return c;
  }
  if (b.plan_count != count) {
    b.plan = b.info->plan(count);
    b.plan_count = count;
  }
  c.pack = &b;
  return c;
}

// The plan of a message decide() packs, with what the buffer itself decides: device buffers are
// never packed on the host; callers that can stage on the GPU pass `where` and get
// Where::device/oneshot for them when a backend exists. nullptr: the library takes it.
std::shared_ptr<const dt::Plan> placed(Brief* b, const void* buf, TypeInfoRef* keep, Where* where);

// decide() and placed() for a message without a peer (MPI_Pack, collectives): the plan (and
// *keep holds the type alive) when hauler packs it.
std::shared_ptr<const dt::Plan> choose_buf(const void* buf, int count, MPI_Datatype t, TypeInfoRef* keep);

// ---------------------------------------------------------------- device buffers (device.cpp)
// Whether [p, p+len) is device or managed memory (false whenever the program never loaded libcuda).
bool device_buffer(const void* p, size_t len);
bool gpu_packing_available();  // GPU kernels found (looked up on first use)
bool cuda_driver_seen();       // the program loaded libcuda and the shim found it (the report)
extern std::atomic<int64_t> g_device_buffers_to_library;  // device buffers the library took as they were
extern std::atomic<int64_t> g_cuda_pointer_queries;       // pointer queries sent to the driver

// Device-side staging: library-visible `mpi` and kernel-visible `dev` (the same for device memory).
struct GpuBuf {
  void* mpi = nullptr;
  void* dev = nullptr;
};
bool gpu_get(Where w, size_t n, GpuBuf* out);
void gpu_put(Where w, size_t n, GpuBuf b);
void gpu_drain();  // at MPI_Finalize, while the program's CUDA context still exists

// ---------------------------------------------------------------- host staging (staging.cpp)
extern std::mutex g_staging_pool_mu;  // guards the shared host and GPU staging pools
constexpr size_t kStagingPoolMax = size_t(256) << 20;
size_t size_class(size_t n);
void* buf_get(size_t n);
void buf_put(void* p, size_t n);

// ---------------------------------------------------------------- pipelined messages (pipeline.cpp)
// A packed send of at least pipeline_min bytes to another rank goes as a short header on the
// application's (communicator, tag) and chunks on the shim's own communicator, each sent as soon
// as it is packed; the receive that takes the header pulls the chunks and unpacks each as it
// lands. Every receive that could take a header (at least pipeline_min bytes) is watched.
extern bool g_pipe_on;  // every rank agreed at MPI_Init on g_config.pipeline_min/_chunk
extern bool g_fortran_init;  // MPI_Init came through Open MPI's Fortran layer (fortran.cpp)
constexpr int kPipeHeaderMin = 48, kPipeHeaderMax = 256;  // a header message's bytes
using SendFn = int (*)(const void*, int, MPI_Datatype, int, int, MPI_Comm);

void init_pipeline();      // in MPI_Init after configure(), every rank: collective
void finalize_pipeline();  // in MPI_Finalize
// Bytes a receive of count x t can take (0 when the library does not know the type).
int64_t pipe_capacity(int64_t count, MPI_Datatype t);
inline bool pipe_watch(int64_t count, MPI_Datatype t) {
  return __builtin_expect(g_pipe_on, 0) && pipe_capacity(count, t) >= g_config.pipeline_min;
}
// Sends a message decide() packs as a pipelined one when it qualifies (true: *rc is the result;
// req: the header's request for a non-blocking send, nullptr for fn's blocking one).
// t0: the call's start, for a trial (the header's request is timed like any non-blocking send).
bool pipe_send(SendFn fn, const Choice& c, const void* buf, MPI_Datatype t, int dest, int tag, MPI_Comm comm,
               MPI_Request* req, int* rc, int64_t t0);
// Where a watched receive landed: staging (`staged`, the packed bytes) or the application's
// buffer under its type (`plan` when the shim decoded the type, else the library's pack/unpack).
struct Landing {
  void* origin = nullptr;
  int64_t count = 0;
  MPI_Datatype t = MPI_DATATYPE_NULL;
  MPI_Comm comm = MPI_COMM_NULL;
  std::shared_ptr<const dt::Plan> plan;  // nullptr when contiguous or not decoded
  bool contiguous = false;               // count x t is one dense run from origin: chunks land in place
  bool device = false;                   // device memory (or its staging): a header is refused
  int64_t cap = 0;                       // bytes the receive can take
  const void* staged = nullptr;
};
// After a receive into L completed with status s and result rc: when it took a pipelined
// message's header, pulls the chunks into L (*pulled; s then says the whole message's bytes).
int pipe_arrived(const Landing& L, MPI_Status* s, int rc, bool* pulled);
// MPI_Probe and its kin, with the pipeline on: a message of 48 to 256 bytes could be a header
// whose message's size the probe cannot tell, so the call is refused (one line, the
// communicator's error handler).
int pipe_probed(int rc, int flag, const MPI_Status* s, MPI_Comm comm, const char* call);
// A persistent receive that could meet a pipelined message: refused the same way.
int pipe_refuse_persistent(int64_t count, MPI_Datatype t, MPI_Comm comm, MPI_Request* req);

// ---------------------------------------------------------------- requests (requests.cpp)
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
  // A trial message (select.cpp), timed from its call to its completion: its selection (kept
  // alive by `type`), path and start. A trial on the library's path is a record with no staging.
  Select* sel = nullptr;
  Path path = kLib;
  int64_t t0_ns = 0;   // now_ns(): the posting thread's CPU clock
  pthread_t thread{};  // that thread
  // A receive the pipeline watches (pipe_watch): where it lands, to look for a header at
  // completion; `dup` is the shim's duplicate of a type it did not decode (freed at release).
  bool watch = false;
  Landing land;
  MPI_Datatype dup = MPI_DATATYPE_NULL;
};

// Requests the shim staged, by the real request the library handed back; a completion call
// takes a record out before the library may complete (and reuse) its handle.
extern std::atomic<int64_t> g_staged_request_count;  // the table's size: completion calls skip the lock at 0
extern std::atomic<int64_t> g_freed_request_count;   // staged requests the application freed
// Point-to-point staging buffers taken and not yet given back (the report's staging_held: 0 at
// MPI_Finalize once the program completed every request).
extern std::atomic<int64_t> g_staging_buffers_held;

using ReqNode = std::unordered_map<MPI_Request, Pending>::node_type;
// A request of the shim's among an array: its index and its record, taken out of the table.
struct Mine {
  int i;
  ReqNode node;
};

void remember(MPI_Request r, Pending p);  // a staged request the library accepted
// A request only the shim holds (a pipelined message's chunk): completed in later calls and at
// MPI_Finalize like a request the application freed.
void orphan(MPI_Request r, Pending p);
// A handle the library gives to a request that completed inside the call (MPICH's builtin one).
bool predefined_complete(MPI_Request r);
// A non-blocking call's result: the request owns the record p (or p is released).
int keep_request(int rc, MPI_Request* req, Pending p);
void release(Pending& p);                 // staging back to its pool
// Unpacks what arrived (receives), then releases; not MPI_SUCCESS when a pipelined message could not
// be taken whole (MPI_ERR_TRUNCATE as the library says it, ...).
int finish(Pending& p, MPI_Status* status);
// A receive of count x t that could take a pipelined message's header is watched: p says where it
// lands (p's staging, if any, is set up first). Nothing when the pipeline is off or it is smaller.
void watch_receive(Pending* p, void* buf, int64_t count, MPI_Datatype t, MPI_Comm comm);
// A trial of a non-blocking call is timed until its completion (p records it).
void time_it(const Choice& c, bool packed, int64_t t0, MPI_Datatype t, Pending* p);
// Runs the GPU kernels between the application's device buffer and p's staging and waits for
// them; false (logged) when the backend fails.
bool gpu_run(bool pack, const dt::Plan& plan, const void* origin, const Pending& p, int64_t n);

// Requests the application freed: completed here as calls go by and at MPI_Finalize.
void complete_freed_requests(bool block);
inline void progress_orphans(bool block) {
  if (g_freed_request_count.load(std::memory_order_relaxed) == 0) return;
  complete_freed_requests(block);
}

// The shim's requests among reqs[0..n), in index order, their records taken out; nullptr when
// there are none, and then nothing is touched at all while the shim has no request pending (the
// pass-through case: no thread_local, no lock).
std::vector<Mine>* take_staged_among(int n, const MPI_Request* reqs);
inline std::vector<Mine>* take_among(int n, const MPI_Request* reqs) {
  if (n <= 0 || g_staged_request_count.load(std::memory_order_relaxed) == 0) return nullptr;
  return take_staged_among(n, reqs);
}

// The completion calls. Each tests for requests of the shim's inline (the pass-through case goes
// straight to the library) and finishes them out of line.
int wait_staged(MPI_Request* req, MPI_Status* status);
int test_staged(MPI_Request* req, int* flag, MPI_Status* status);
int waitall_staged(int n, MPI_Request* reqs, MPI_Status* statuses, std::vector<Mine>& mine);
int testall_staged(int n, MPI_Request* reqs, int* flag, MPI_Status* statuses, std::vector<Mine>& mine);
int waitany_staged(int n, MPI_Request* reqs, int* index, MPI_Status* status, std::vector<Mine>& mine);
int testany_staged(int n, MPI_Request* reqs, int* index, int* flag, MPI_Status* status, std::vector<Mine>& mine);
int waitsome_staged(int n, MPI_Request* reqs, int* outcount, int* indices, MPI_Status* statuses,
                    std::vector<Mine>& mine);
int testsome_staged(int n, MPI_Request* reqs, int* outcount, int* indices, MPI_Status* statuses,
                    std::vector<Mine>& mine);
int request_get_status(MPI_Request req, int* flag, MPI_Status* status);
int request_free(MPI_Request* req);

inline int wait(MPI_Request* req, MPI_Status* status) {
  progress_orphans(false);
  if (g_staged_request_count.load(std::memory_order_relaxed) == 0 || *req == MPI_REQUEST_NULL)
    return PMPI_Wait(req, status);
  return wait_staged(req, status);
}

inline int test(MPI_Request* req, int* flag, MPI_Status* status) {
  progress_orphans(false);
  if (g_staged_request_count.load(std::memory_order_relaxed) == 0 || *req == MPI_REQUEST_NULL)
    return PMPI_Test(req, flag, status);
  return test_staged(req, flag, status);
}

inline int waitall(int n, MPI_Request* reqs, MPI_Status* statuses) {
  progress_orphans(false);
  std::vector<Mine>* mine = take_among(n, reqs);
  if (!mine) return PMPI_Waitall(n, reqs, statuses);
  return waitall_staged(n, reqs, statuses, *mine);
}

inline int testall(int n, MPI_Request* reqs, int* flag, MPI_Status* statuses) {
  progress_orphans(false);
  std::vector<Mine>* mine = take_among(n, reqs);
  if (!mine) return PMPI_Testall(n, reqs, flag, statuses);
  return testall_staged(n, reqs, flag, statuses, *mine);
}

inline int waitany(int n, MPI_Request* reqs, int* index, MPI_Status* status) {
  progress_orphans(false);
  std::vector<Mine>* mine = take_among(n, reqs);
  if (!mine) return PMPI_Waitany(n, reqs, index, status);
  return waitany_staged(n, reqs, index, status, *mine);
}

inline int testany(int n, MPI_Request* reqs, int* index, int* flag, MPI_Status* status) {
  progress_orphans(false);
  std::vector<Mine>* mine = take_among(n, reqs);
  if (!mine) return PMPI_Testany(n, reqs, index, flag, status);
  return testany_staged(n, reqs, index, flag, status, *mine);
}

inline int waitsome(int n, MPI_Request* reqs, int* outcount, int* indices, MPI_Status* statuses) {
  progress_orphans(false);
  std::vector<Mine>* mine = take_among(n, reqs);
  if (!mine) return PMPI_Waitsome(n, reqs, outcount, indices, statuses);
  return waitsome_staged(n, reqs, outcount, indices, statuses, *mine);
}

inline int testsome(int n, MPI_Request* reqs, int* outcount, int* indices, MPI_Status* statuses) {
  progress_orphans(false);
  std::vector<Mine>* mine = take_among(n, reqs);
  if (!mine) return PMPI_Testsome(n, reqs, outcount, indices, statuses);
  return testsome_staged(n, reqs, outcount, indices, statuses, *mine);
}

// ---------------------------------------------------------------- point to point (p2p.cpp)
// What happens to this side of a point-to-point message (stage() then decides for good: a
// device buffer may still go to the library). The pass-through test every call makes: nothing
// is built, counted twice or reference-counted before the answer.
inline Choice choose(int count, MPI_Datatype t, int peer, MPI_Comm comm, Dir dir) {
  if (peer == MPI_PROC_NULL) return Choice();
  return decide(count, t, Peer{comm, peer}, dir);
}
inline bool plain(const Choice& c) { return !c.pack && !c.timed; }

int send_staged(SendFn fn, const void* buf, int count, MPI_Datatype t, int dest, int tag, MPI_Comm comm, Choice c);
int recv_staged(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm, MPI_Status* status,
                Choice c);
int isend_staged(const void* buf, int count, MPI_Datatype t, int dest, int tag, MPI_Comm comm, MPI_Request* req,
                 Choice c) __attribute__((noinline));
int irecv_staged(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm, MPI_Request* req,
                 Choice c) __attribute__((noinline));
int sendrecv(const void* sbuf, int scount, MPI_Datatype stype, int dest, int stag, void* rbuf, int rcount,
             MPI_Datatype rtype, int source, int rtag, MPI_Comm comm, MPI_Status* status);

inline int send_common(SendFn fn, const void* buf, int count, MPI_Datatype t, int dest, int tag, MPI_Comm comm) {
  stats().calls++;
  Choice c = choose(count, t, dest, comm, kSend);
  if (plain(c)) return fn(buf, count, t, dest, tag, comm);
  return send_staged(fn, buf, count, t, dest, tag, comm, c);
}

inline int recv(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm, MPI_Status* status) {
  stats().calls++;
  Choice c = choose(count, t, source, comm, kRecv);
  if (plain(c) && !pipe_watch(count, t)) return PMPI_Recv(buf, count, t, source, tag, comm, status);
  return recv_staged(buf, count, t, source, tag, comm, status, c);
}

inline int isend(const void* buf, int count, MPI_Datatype t, int dest, int tag, MPI_Comm comm, MPI_Request* req) {
  stats().calls++;
  Choice c = choose(count, t, dest, comm, kSend);
  if (plain(c)) return PMPI_Isend(buf, count, t, dest, tag, comm, req);
  return isend_staged(buf, count, t, dest, tag, comm, req, c);
}

inline int irecv(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm, MPI_Request* req) {
  stats().calls++;
  Choice c = choose(count, t, source, comm, kRecv);
  if (plain(c) && !pipe_watch(count, t)) return PMPI_Irecv(buf, count, t, source, tag, comm, req);
  return irecv_staged(buf, count, t, source, tag, comm, req, c);
}

// ---------------------------------------------------------------- MPI_Pack / MPI_Unpack (pack.cpp)
int pack(const void* in, int incount, MPI_Datatype t, void* out, int outsize, int* position, MPI_Comm comm);
int unpack(const void* in, int insize, int* position, void* out, int outcount, MPI_Datatype t, MPI_Comm comm);

// ---------------------------------------------------------------- collectives (collectives.cpp)
int alltoallv(const void* sbuf, const int* scounts, const int* sdispls, MPI_Datatype stype, void* rbuf,
              const int* rcounts, const int* rdispls, MPI_Datatype rtype, MPI_Comm comm, bool neighbor);
// sdA/rdA: MPI_Aint displacements (neighbour form); sdI/rdI: int ones (MPI_Alltoallw).
int alltoallw(const void* sbuf, const int* scounts, const MPI_Aint* sdA, const int* sdI, const MPI_Datatype* stypes,
              void* rbuf, const int* rcounts, const MPI_Aint* rdA, const int* rdI, const MPI_Datatype* rtypes,
              MPI_Comm comm, bool neighbor);

}  // namespace shim

#pragma GCC visibility pop
