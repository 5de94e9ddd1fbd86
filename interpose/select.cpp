// The measured choice: per (type, count, direction, where the peer runs), the first messages try
// the library's own path and hauler's packing alternately, timed; the faster is kept, and
// checked again at message 64, 128, ... 4096 (a decisive win, 2x or more, at 64, 256, 1024,
// 4096, one message a path). The model (decide.cpp) only seeds the first path tried.
//
// Why each side may choose alone, message by message (the safety argument; tests/interpose/
// select.c exercises each case under both MPIs, with and without the shim):
// - The MPI standard's type-matching rule (MPI-4.0 3.3.1) asks typed sends to meet receives of the
//   same type signature and MPI_BYTE to meet MPI_BYTE; a packed message (MPI_BYTE) meeting a typed
//   receive is outside its letter. The shim relies on what both libraries do instead: in a
//   homogeneous run (one architecture, no external32; Open MPI and MPICH as built here) the
//   envelope carries a byte count and no type signature, no conversion happens, and the receive
//   lands exactly the bytes the sender's type signature describes, in the receiver's type map.
//   The library with the shim has packed this way since it was written (the model already chose
//   per side); what changes here is only that the choice may differ from message to message.
// - Matching uses (communicator, source, tag) only, never the type, so ANY_SOURCE and ANY_TAG
//   receives match the same messages in the same order whichever path either side took; a
//   receive from ANY_SOURCE has its own selection (Loc::any).
// - MPI_Probe/Iprobe/Mprobe fill a status with the message's byte count, the same for a packed
//   and a typed send of one signature, so MPI_Get_count/Get_elements with the receiver's type
//   give the same answers; MPI_Mrecv, persistent and partitioned receives go to the library
//   typed, which accepts a packed message as above.
// - A packed receive's status is the library's (byte count, source, tag, error), so
//   Get_count(status, type) is what the library alone would say.
// Where it would not hold: a heterogeneous MPI (data conversion between architectures) or a
// checking tool that compares type signatures (MUST) would see MPI_BYTE against a typed peer.
#include <time.h>

#include <algorithm>

#include "shim.hpp"

namespace shim {

namespace {

constexpr size_t kSelectsPerType = 64;   // keys per type; past it the model decides
constexpr int64_t kLastCheck = 4096;     // no round starts after this message
constexpr size_t kRetiredMax = 256;      // report lines kept for selections of freed types

std::vector<uint8_t> g_on_node;  // by rank in MPI_COMM_WORLD: 1 when it shares this node

struct Line {
  char text[224];
};
// Every selection, for the report. Never destroyed: types still cached at exit free their
// selections during static destruction, in no order relative to this file's statics.
struct Registry {
  std::mutex mu;
  std::vector<Select*> live;
  std::vector<Line> retired;  // lines of selections whose types were freed
  int64_t dropped = 0;
};
Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}

const char* loc_name(Loc l) {
  switch (l) {
    case Loc::self: return "self";
    case Loc::node: return "node";
    case Loc::other: return "other";
    default: return "any";
  }
}

// A path's cost: its fastest trial. What disturbs a trial (the peer descheduled while this rank
// spins, another message's work, a page fault) only ever adds time, so the fastest of a few is the
// path's own cost, where a median still follows the disturbances on a busy machine.
double fastest(const int64_t* v, int n) { return double(*std::min_element(v, v + n)); }

Line describe(const Select& s) {
  Line l;
  std::snprintf(l.text, sizeof l.text,
                "size=%lld extent=%lld block=%lld count=%lld dir=%s peer=%s msgs=%lld rounds=%d lib_us=%.2f "
                "pack_us=%.2f kept=%s",
                (long long)s.type_size, (long long)s.type_extent, (long long)s.type_block, (long long)s.count,
                s.recv ? "recv" : "send", loc_name(s.loc), (long long)s.msgs.load(std::memory_order_relaxed),
                s.rounds, s.best_ns[kLib] / 1e3, s.best_ns[kPack] / 1e3,
                s.off ? "off" : s.kept.load(std::memory_order_relaxed) == kPack ? "pack" : "lib");
  return l;
}

// A round of trials starts (s.mu held): `target` messages of each path.
void start_round(Select& s, int target) {
  s.trial = true;
  s.target = target;
  s.issued[0] = s.issued[1] = s.got[0] = s.got[1] = 0;
  s.next_event.store(0, std::memory_order_relaxed);  // every message asks next_path_slow
}

}  // namespace

Select::Select() {
  Registry& g = registry();
  std::lock_guard<std::mutex> lk(g.mu);
  g.live.push_back(this);
}

Select::~Select() {
  Line l = describe(*this);
  Registry& g = registry();
  std::lock_guard<std::mutex> lk(g.mu);
  g.live.erase(std::find(g.live.begin(), g.live.end(), this));
  if (msgs.load(std::memory_order_relaxed) == 0) return;
  if (g.retired.size() < kRetiredMax) g.retired.push_back(l);
  else g.dropped++;
}

// The calling thread's CPU clock, not the wall clock: on a busy machine a rank spends much of a
// message descheduled, which says nothing about the path. Spinning in the library while waiting
// for the peer still counts, as on an idle machine.
int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Collective over MPI_COMM_WORLD, run by every rank's MPI_Init under the shim whatever the
// settings say (ranks may be given different ones), so that no rank waits for another here.
void init_locality() {
  MPI_Comm node = MPI_COMM_NULL;
  if (PMPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS ||
      node == MPI_COMM_NULL)
    return;
  int n = 0, world = 0;
  PMPI_Comm_size(node, &n);
  PMPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Group gn, gw;
  PMPI_Comm_group(node, &gn);
  PMPI_Comm_group(MPI_COMM_WORLD, &gw);
  std::vector<int> mine(n), theirs(n);
  for (int i = 0; i < n; ++i) mine[i] = i;
  if (PMPI_Group_translate_ranks(gn, n, mine.data(), gw, theirs.data()) == MPI_SUCCESS) {
    g_on_node.assign(static_cast<size_t>(world), 0);
    for (int r : theirs)
      if (r >= 0 && r < world) g_on_node[r] = 1;
  }
  PMPI_Group_free(&gn);
  PMPI_Group_free(&gw);
  PMPI_Comm_free(&node);
}

Loc locality(const Peer& to) {
  if (to.rank < 0) return Loc::any;  // MPI_ANY_SOURCE
  int world = to.rank;
  if (to.comm != MPI_COMM_WORLD) {
    int inter = 0;
    MPI_Group g, w;
    PMPI_Comm_test_inter(to.comm, &inter);
    if ((inter ? PMPI_Comm_remote_group(to.comm, &g) : PMPI_Comm_group(to.comm, &g)) != MPI_SUCCESS)
      return Loc::other;
    // a rank the group does not have is the library's error to report, in the call itself
    int n = 0;
    PMPI_Group_size(g, &n);
    PMPI_Comm_group(MPI_COMM_WORLD, &w);
    if (to.rank >= n || PMPI_Group_translate_ranks(g, 1, &to.rank, w, &world) != MPI_SUCCESS) world = MPI_UNDEFINED;
    PMPI_Group_free(&g);
    PMPI_Group_free(&w);
    if (world == MPI_UNDEFINED || world < 0) return Loc::other;  // a spawned or connected process
  }
  if (world == g_world_rank) return Loc::self;
  return static_cast<size_t>(world) < g_on_node.size() && g_on_node[world] ? Loc::node : Loc::other;
}

Select* TypeInfo::select(int64_t count, Loc loc, bool recv, bool seed) {
  std::lock_guard<std::mutex> lk(mu);
  for (auto& s : selects)
    if (s->count == count && s->loc == loc && s->recv == recv) return s.get();
  if (selects.size() >= kSelectsPerType) return nullptr;
  auto s = std::make_unique<Select>();
  s->count = count;
  s->loc = loc;
  s->recv = recv;
  s->type_size = size;
  s->type_extent = extent;
  s->type_block = mean_block;
  s->kept.store(seed ? kPack : kLib, std::memory_order_relaxed);
  start_round(*s, g_config.trials);
  selects.push_back(std::move(s));
  return selects.back().get();
}

Path next_path_slow(Select& s, int64_t m, Select** timed) {
  std::lock_guard<std::mutex> lk(s.mu);
  Path kept = Path(s.kept.load(std::memory_order_relaxed));
  if (s.off) return kLib;
  if (!s.trial) {
    if (m < s.next_check) return kept;
    start_round(s, s.decisive ? 1 : g_config.trials);
    s.next_check = s.next_check >= kLastCheck ? INT64_MAX : s.next_check * (s.decisive ? 4 : 2);
  }
  // the kept (first: the seed) path first, then the two alternately
  Path other = Path(1 - kept), p;
  if (s.issued[kept] < s.target && s.issued[kept] <= s.issued[other]) p = kept;
  else if (s.issued[other] < s.target) p = other;
  else if (s.issued[kept] < s.target) p = kept;
  else return kept;  // every trial sent; their times are still to come
  s.issued[p]++;
  *timed = &s;
  return p;
}

void record(Select& s, Path p, int64_t ns) {
  std::lock_guard<std::mutex> lk(s.mu);
  if (s.off || !s.trial || s.got[p] >= s.target) return;
  s.sample_ns[p][s.got[p]++] = ns;
  if (s.got[kLib] < s.target || s.got[kPack] < s.target) return;
  for (int q = 0; q < 2; ++q) s.best_ns[q] = fastest(s.sample_ns[q], s.target);
  double lib = s.best_ns[kLib], pack = s.best_ns[kPack];
  Path won = pack < lib ? kPack : kLib;
  double lo = std::min(lib, pack), hi = std::max(lib, pack);
  s.decisive = hi >= 2 * lo;
  s.trial = false;
  s.rounds++;
  if (Path(s.kept.load(std::memory_order_relaxed)) != won)
    logf(kDebug, "count %lld of a %lld-byte type (%s, peer %s): %s now (library %.2f us, packed %.2f us)",
         (long long)s.count, (long long)s.type_size, s.recv ? "receive" : "send", loc_name(s.loc),
         won == kPack ? "packed" : "the library", lib / 1e3, pack / 1e3);
  s.kept.store(won, std::memory_order_relaxed);
  s.next_event.store(s.next_check, std::memory_order_relaxed);
}

void unrecord(Select& s, Path p) {
  std::lock_guard<std::mutex> lk(s.mu);
  if (s.trial && s.issued[p] > s.got[p]) s.issued[p]--;
}

void select_off(Select& s) {
  std::lock_guard<std::mutex> lk(s.mu);
  s.off = true;
  s.trial = false;
  s.kept.store(kLib, std::memory_order_relaxed);
  s.next_event.store(INT64_MAX, std::memory_order_relaxed);
}

void write_selections(FILE* f, int rank) {
  std::vector<Line> lines;
  int64_t dropped;
  {
    Registry& g = registry();
    std::lock_guard<std::mutex> lk(g.mu);
    lines = g.retired;
    dropped = g.dropped;
    for (Select* s : g.live) {
      std::lock_guard<std::mutex> sl(s->mu);
      if (s->msgs.load(std::memory_order_relaxed) > 0) lines.push_back(describe(*s));
    }
  }
  for (const Line& l : lines) std::fprintf(f, "hauler-interpose rank %d select: %s\n", rank, l.text);
  if (dropped) std::fprintf(f, "hauler-interpose rank %d select: %lld more of freed types not listed\n", rank,
                            (long long)dropped);
}

}  // namespace shim
