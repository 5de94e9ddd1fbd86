// Pipelined messages (HAULER_INTERPOSE_PIPELINE, off by default): a large packed send is cut into
// chunks, each sent as soon as it is packed, and the receiver unpacks each chunk as it lands, so
// the sender's packing, the library's copy and the receiver's unpacking overlap instead of
// following one another.
//
// On the wire: a short header (48 to 256 bytes, a valid prefix of the type signature) on the
// application's own (communicator, tag), then the chunks as MPI_BYTE on the shim's duplicate of
// MPI_COMM_WORLD, from the sender's world rank, all with one tag that is the sender's sequence
// number for that receiver. The header is what the
// application's receive matches, so matching (ANY_SOURCE, ANY_TAG, message order) is the
// library's own; the chunks live on a communicator the application cannot name, in order (one
// tag, one sender), so no receive of the application can take one.
//
// Both ends must be the shim's, and every receive that could meet a header must be one the shim
// finishes: MPI_Init agrees on the setting across all ranks (or turns it off everywhere), every
// receive of at least HAULER_INTERPOSE_PIPELINE bytes (the only ones a pipelined message fits)
// is watched, and the receive calls the shim cannot finish that way (MPI_Probe and its kin
// finding a message of a header's size, persistent receives that large) are refused with an error
// instead of a silently short message. docs/interpose-pipeline.md says the same for users.
#include <climits>
#include <cstring>

#include "common/crc32c.hpp"
#include "shim.hpp"

namespace shim {

bool g_pipe_on = false;
bool g_fortran_init = false;

namespace {

constexpr uint8_t kMagic[16] = {'h', 'a', 'u', 'l', 'e', 'r', '-', 'p', 'i', 'p', 'e', 0x9e, 0x37, 0x79, 0xb9, 0x01};

// The header's fields, little-endian at fixed offsets (both ends are one machine type: the shim
// packs only for homogeneous runs), then a CRC-32C of everything before it.
struct Header {
  uint64_t total = 0;   // packed bytes of the message
  uint64_t chunk = 0;   // bytes per chunk (the last may be shorter)
  uint32_t tag = 0;     // the chunks' tag on the shadow communicator
  int32_t sender = -1;  // the sender's rank in MPI_COMM_WORLD
  uint32_t size = 0;    // bytes of the header message (fields, CRC, zeros)
};
constexpr size_t kCrcAt = 16 + 8 + 8 + 4 + 4 + 4;
static_assert(kCrcAt + 4 == size_t(kPipeHeaderMin), "the header's fields and CRC");

// The header message's size: the shortest prefix of the packed stream of at least kPipeHeaderMin
// bytes that ends between two runs of the type map. Runs hold whole basic elements, so that prefix
// is a valid partial message for any receive type of the same signature (MPICH refuses a message
// that ends inside a basic element: "Message truncated"). 0: none up to kPipeHeaderMax.
int64_t header_size(const TypeInfo& info, int64_t total) {
  const dt::Layout& L = info.one;
  if (L.runs.empty()) return 0;
  int64_t sum = 0;
  for (int64_t pass = 0; sum < kPipeHeaderMin && pass < kPipeHeaderMax; ++pass)
    for (const dt::Run& r : L.runs) {
      sum += r.length;
      if (sum >= kPipeHeaderMin) break;
    }
  return sum >= kPipeHeaderMin && sum <= kPipeHeaderMax && sum < total ? sum : 0;
}

void encode(const Header& h, uint8_t* out) {
  std::memset(out, 0, h.size);
  std::memcpy(out, kMagic, 16);
  std::memcpy(out + 16, &h.total, 8);
  std::memcpy(out + 24, &h.chunk, 8);
  std::memcpy(out + 32, &h.tag, 4);
  std::memcpy(out + 36, &h.sender, 4);
  std::memcpy(out + 40, &h.size, 4);
  uint32_t crc = hauler::crc::crc32c(out, kCrcAt);
  std::memcpy(out + kCrcAt, &crc, 4);
}

// The first kPipeHeaderMin bytes of a message of `got` bytes.
bool decode(const uint8_t* in, int got, Header* h) {
  if (std::memcmp(in, kMagic, 16) != 0) return false;
  uint32_t crc = 0;
  std::memcpy(&crc, in + kCrcAt, 4);
  if (crc != hauler::crc::crc32c(in, kCrcAt)) return false;
  std::memcpy(&h->total, in + 16, 8);
  std::memcpy(&h->chunk, in + 24, 8);
  std::memcpy(&h->tag, in + 32, 4);
  std::memcpy(&h->sender, in + 36, 4);
  std::memcpy(&h->size, in + 40, 4);
  return int64_t(h->size) == got && h->total > 0 && h->chunk > 0 && h->total <= uint64_t(INT_MAX) &&
         h->chunk <= h->total;
}

MPI_Comm g_shadow = MPI_COMM_NULL;  // the chunks' communicator: a duplicate of MPI_COMM_WORLD
int g_shadow_tags = 32768;          // chunk tags run 0 .. g_shadow_tags-1 (the library's MPI_TAG_UB + 1)
std::mutex g_seq_mu;
std::vector<uint32_t> g_next_seq;   // per receiving world rank

// The world rank of `rank` in comm, or -1 (an intercommunicator, a rank from another world).
int world_rank_of(MPI_Comm comm, int rank) {
  if (rank < 0) return -1;
  if (comm == MPI_COMM_WORLD) return rank;
  int inter = 0;
  if (PMPI_Comm_test_inter(comm, &inter) != MPI_SUCCESS || inter) return -1;
  MPI_Group g, w;
  if (PMPI_Comm_group(comm, &g) != MPI_SUCCESS) return -1;
  PMPI_Comm_group(MPI_COMM_WORLD, &w);
  int out = MPI_UNDEFINED;
  int rc = PMPI_Group_translate_ranks(g, 1, &rank, w, &out);
  PMPI_Group_free(&g);
  PMPI_Group_free(&w);
  return rc == MPI_SUCCESS && out != MPI_UNDEFINED ? out : -1;
}

uint32_t next_tag(int world_dest) {
  std::lock_guard<std::mutex> lk(g_seq_mu);
  if (g_next_seq.size() <= size_t(world_dest)) g_next_seq.resize(size_t(world_dest) + 1, 0);
  return g_next_seq[world_dest]++ % uint32_t(g_shadow_tags);
}

int64_t chunk_len(const Header& h, int64_t k) {
  int64_t off = k * int64_t(h.chunk);
  return std::min<int64_t>(int64_t(h.chunk), int64_t(h.total) - off);
}

// Staging of n bytes for a chunk, counted like every other staging buffer.
void* staging(size_t n) {
  void* p = buf_get(n);
  if (p) g_staging_buffers_held.fetch_add(1, std::memory_order_relaxed);
  return p;
}

// A refusal: one line, then the communicator's error handler, as the library reports its own.
int refuse(MPI_Comm comm, const char* what) {
  logf(kError, "%s", what);
  if (comm != MPI_COMM_NULL) PMPI_Comm_call_errhandler(comm, MPI_ERR_OTHER);
  return MPI_ERR_OTHER;
}

}  // namespace

// Collective over MPI_COMM_WORLD in every rank's MPI_Init (like init_locality): the ranks agree on
// HAULER_INTERPOSE_PIPELINE and its chunk, or it is off for all of them.
void init_pipeline() {
  bool want = g_config.on && g_config.p2p && g_config.pipeline_min > 0 && !g_fortran_init;
  int64_t mine[4] = {want ? g_config.pipeline_min : 0, want ? -g_config.pipeline_min : 0, g_config.pipeline_chunk,
                     -g_config.pipeline_chunk};
  int64_t all[4] = {0, 0, 0, 0};
  if (PMPI_Allreduce(mine, all, 4, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS) return;
  bool agreed = all[0] == -all[1] && all[2] == -all[3];
  if (all[0] == 0 && all[1] == 0) return;  // off everywhere
  if (!agreed) {
    if (g_world_rank == 0)
      logf(kError, "HAULER_INTERPOSE_PIPELINE (or _CHUNK) differs between ranks, or some rank cannot pipeline "
           "(the shim off there, HAULER_INTERPOSE_P2P=0, a Fortran program under Open MPI): no rank pipelines");
    return;
  }
  // all ranks want it (a rank that did not want it contributed 0, which breaks the agreement)
  if (PMPI_Comm_dup(MPI_COMM_WORLD, &g_shadow) != MPI_SUCCESS) return;
  void* ub = nullptr;
  int flag = 0;
  if (PMPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag) == MPI_SUCCESS && flag && ub)
    g_shadow_tags = std::max(32768, std::min(*static_cast<int*>(ub), 1 << 30));
  g_pipe_on = true;
  logf(kInfo, "pipelining packed messages of at least %lld bytes in chunks of %lld",
       (long long)g_config.pipeline_min, (long long)g_config.pipeline_chunk);
}

void finalize_pipeline() {
  if (g_shadow != MPI_COMM_NULL) PMPI_Comm_free(&g_shadow);
  g_pipe_on = false;
}

int64_t pipe_capacity(int64_t count, MPI_Datatype t) {
  if (count <= 0) return 0;
  if (const TypeInfo* info = brief(t).info.get()) return count * info->size;
  int size = 0;
  if (PMPI_Type_size(t, &size) != MPI_SUCCESS || size <= 0) return 0;
  return count * int64_t(size);
}

bool pipe_send(SendFn fn, const Choice& c, const void* buf, MPI_Datatype t, int dest, int tag, MPI_Comm comm,
               MPI_Request* req, int* rc, int64_t t0) {
  // A trial message goes whole: its time must be the path's whole cost, as the library path's is,
  // and a pipelined send returns before its chunks are taken (timing it would favour it unfairly).
  // The pipeline then carries the messages of selections whose trials kept packing.
  if (!g_pipe_on || !c.pack || c.timed || dest < 0) return false;
  progress_orphans(false);  // earlier messages' chunks: their staging back before taking more
  if (locality(Peer{comm, dest}) == Loc::self) return false;  // one core does all three steps anyway
  TypeInfoRef info;
  auto plan = placed(c.pack, buf, &info, nullptr);  // host buffers only
  if (!plan || plan->total < g_config.pipeline_min || plan->total > INT_MAX) return false;
  int64_t hsize = header_size(*info, plan->total);
  if (hsize == 0) return false;  // no short valid prefix: blocks this long are the library's anyway
  int world_dest = world_rank_of(comm, dest);
  if (world_dest < 0) return false;
  Header h;
  h.size = uint32_t(hsize);
  h.total = uint64_t(plan->total);
  h.chunk = uint64_t(std::min<int64_t>(g_config.pipeline_chunk, plan->total));
  h.tag = next_tag(world_dest);
  h.sender = g_world_rank;
  const int64_t nchunks = (plan->total + int64_t(h.chunk) - 1) / int64_t(h.chunk);

  // the header first: the receiver can post the chunks' receives while this side packs
  uint8_t hb[kPipeHeaderMax];
  encode(h, hb);
  if (req) {
    Pending hp;
    hp.bytes = size_t(hsize);
    hp.buf = staging(hp.bytes);
    if (!hp.buf) return false;
    std::memcpy(hp.buf, hb, hp.bytes);
    time_it(c, true, t0, t, &hp);
    *rc = keep_request(PMPI_Isend(hp.buf, int(hsize), MPI_BYTE, dest, tag, comm, req), req, std::move(hp));
  } else {
    *rc = fn(hb, int(hsize), MPI_BYTE, dest, tag, comm);
  }
  if (*rc != MPI_SUCCESS) return true;

  std::vector<MPI_Request> sent;
  std::vector<Pending> held;
  std::vector<int> tested;  // Testsome's indices
  size_t first = 0;         // sent[0, first) are done
  sent.reserve(size_t(nchunks));
  held.reserve(size_t(nchunks));
  for (int64_t k = 0; k < nchunks; ++k) {
    int64_t off = k * int64_t(h.chunk), n = chunk_len(h, k);
    Pending p;
    p.bytes = size_t(n);
    p.buf = staging(p.bytes);
    if (!p.buf) {
      // The header is out: the receiver waits for every chunk, so a chunk without staging of its
      // own goes from one kept buffer, after the ones before it left.
      logf(kError, "no memory for a %lld-byte chunk staging buffer; sending the rest one chunk at a time",
           (long long)n);
      PMPI_Waitall(int(sent.size()), sent.data(), MPI_STATUSES_IGNORE);
      for (Pending& q : held) release(q);
      sent.clear();
      held.clear();
      first = 0;
      p.buf = staging(p.bytes = size_t(h.chunk));
      if (!p.buf) std::abort();  // not even one chunk: nothing sane is left to do
    }
    {
      Timer tm;
      dt::pack(*plan, buf, p.buf, off, n);
    }
    MPI_Request r = MPI_REQUEST_NULL;
    int crc = PMPI_Isend(p.buf, int(n), MPI_BYTE, world_dest, int(h.tag), g_shadow, &r);
    if (crc != MPI_SUCCESS) {
      release(p);
      *rc = crc;
      break;
    }
    sent.push_back(r);
    held.push_back(std::move(p));
    // The library moves earlier chunks only inside MPI calls (a shared-memory transport without a
    // single-copy path needs the sender's progress): one test between two chunks' packing lets
    // them go while this side packs the next.
    // (Testsome over those not yet seen done, oldest first: they finish roughly in order.)
    int ndone = 0;
    tested.resize(sent.size());
    int* idx = tested.data();
    if (PMPI_Testsome(int(sent.size() - first), sent.data() + first, &ndone, idx, MPI_STATUSES_IGNORE) ==
            MPI_SUCCESS &&
        ndone != MPI_UNDEFINED)
      for (int i = 0; i < ndone; ++i) release(held[first + size_t(idx[i])]);
    while (first < sent.size() && sent[first] == MPI_REQUEST_NULL) ++first;
  }
  stats().packed_msgs++;
  stats().bytes_packed += plan->total;
  stats().pipe_sent++;
  stats().pipe_chunks += int64_t(sent.size());
  // Every send returns with its chunks in flight (the staging holds the bytes; the shim completes
  // them in later calls and at MPI_Finalize). A blocking send must not wait for them: the receive
  // that matched the header pulls the chunks only when the application completes it, which may be
  // after this rank's own send returns (Irecv, Send, Wait on both ranks).
  for (size_t i = 0; i < sent.size(); ++i)
    if (sent[i] == MPI_REQUEST_NULL || predefined_complete(sent[i])) release(held[i]);  // already sent
    else orphan(sent[i], std::move(held[i]));
  return true;
}

int pipe_arrived(const Landing& L, MPI_Status* s, int rc, bool* pulled) {
  *pulled = false;
  if (rc != MPI_SUCCESS && !(rc == MPI_ERR_IN_STATUS && s->MPI_ERROR == MPI_SUCCESS)) return rc;
  int cancelled = 0, got = 0;
  PMPI_Test_cancelled(s, &cancelled);
  if (cancelled || PMPI_Get_count(s, MPI_BYTE, &got) != MPI_SUCCESS || got < kPipeHeaderMin || got > kPipeHeaderMax)
    return rc;
  if (L.device)
    return refuse(L.comm, "a message of a pipelined header's size reached a receive into device memory, which cannot "
                          "take a pipelined message; set HAULER_INTERPOSE_PIPELINE=0 for GPU programs");
  // the header's fields as they arrived: in staging, or spread over the application's type map
  uint8_t hb[kPipeHeaderMin];
  if (L.staged) {
    std::memcpy(hb, L.staged, sizeof hb);
  } else if (L.contiguous) {
    std::memcpy(hb, L.origin, sizeof hb);
  } else if (L.plan) {
    dt::pack(*L.plan, L.origin, hb, 0, kPipeHeaderMin);
  } else {
    int size = 0, pos = 0;
    PMPI_Type_size(L.t, &size);
    int64_t elems = std::min<int64_t>(L.count, (kPipeHeaderMin + size - 1) / std::max(size, 1));
    std::vector<uint8_t> tmp(size_t(elems) * size_t(size) + 1);
    if (size <= 0 ||
        PMPI_Pack(L.origin, int(elems), L.t, tmp.data(), int(tmp.size()), &pos, MPI_COMM_SELF) != MPI_SUCCESS ||
        pos < kPipeHeaderMin)
      return rc;
    std::memcpy(hb, tmp.data(), sizeof hb);
  }
  Header h;
  if (!decode(hb, got, &h)) return rc;  // an application's own message
  if (!g_pipe_on) return refuse(L.comm, "a pipelined message's header arrived but this rank does not pipeline");
  int src = world_rank_of(L.comm, s->MPI_SOURCE);
  if (src != h.sender)
    logf(kWarning, "pipelined header from world rank %d names sender %d; taking the chunks from %d", src, h.sender,
         h.sender);

  *pulled = true;
  const int64_t total = int64_t(h.total), nchunks = (total + int64_t(h.chunk) - 1) / int64_t(h.chunk);
  const int64_t cap = L.cap;
  std::vector<MPI_Request> reqs(size_t(nchunks), MPI_REQUEST_NULL);
  int err = MPI_SUCCESS;
  if (L.contiguous && total <= cap) {  // straight into the application's buffer: nothing to unpack
    uint8_t* at = static_cast<uint8_t*>(L.origin);
    for (int64_t k = 0; k < nchunks && err == MPI_SUCCESS; ++k)
      err = PMPI_Irecv(at + k * int64_t(h.chunk), int(chunk_len(h, k)), MPI_BYTE, h.sender, int(h.tag), g_shadow,
                       &reqs[size_t(k)]);
    if (err == MPI_SUCCESS) err = PMPI_Waitall(int(nchunks), reqs.data(), MPI_STATUSES_IGNORE);
    stats().pipe_received++;
    if (err != MPI_SUCCESS) return err;
    PMPI_Status_set_elements(s, MPI_BYTE, int(total));
    return rc;
  }
  const bool one_buffer = !L.plan && !L.contiguous;  // the library's unpack takes whole elements: all chunks first
  size_t land_bytes = size_t(total);
  uint8_t* land = static_cast<uint8_t*>(buf_get(land_bytes));
  if (land) {
    for (int64_t k = 0; k < nchunks && err == MPI_SUCCESS; ++k)
      err = PMPI_Irecv(land + k * int64_t(h.chunk), int(chunk_len(h, k)), MPI_BYTE, h.sender, int(h.tag), g_shadow,
                       &reqs[size_t(k)]);
  }
  // unpack each chunk as it lands (or, one_buffer, all at the end), never past the receive's capacity
  auto unpack_chunk = [&](int64_t k, const uint8_t* from) {
    int64_t off = k * int64_t(h.chunk), n = std::min(chunk_len(h, k), cap - off);
    if (n <= 0 || one_buffer) return;
    Timer tm;
    if (L.contiguous) std::memcpy(static_cast<uint8_t*>(L.origin) + off, from, size_t(n));
    else dt::unpack(*L.plan, L.origin, from, off, n);
  };
  if (land) {
    for (int64_t done = 0; done < nchunks && err == MPI_SUCCESS; ++done) {
      int k = MPI_UNDEFINED;
      MPI_Status cs;
      err = PMPI_Waitany(int(nchunks), reqs.data(), &k, &cs);
      if (err == MPI_SUCCESS && k != MPI_UNDEFINED) unpack_chunk(k, land + int64_t(k) * int64_t(h.chunk));
    }
  } else {  // no staging for the whole message: one chunk at a time through one buffer
    land = static_cast<uint8_t*>(buf_get(land_bytes = size_t(h.chunk)));
    if (!land) std::abort();  // not even one chunk: nothing sane is left to do
    for (int64_t k = 0; k < nchunks && err == MPI_SUCCESS; ++k) {
      err = PMPI_Recv(land, int(chunk_len(h, k)), MPI_BYTE, h.sender, int(h.tag), g_shadow, MPI_STATUS_IGNORE);
      if (err == MPI_SUCCESS) unpack_chunk(k, land);
    }
    if (one_buffer) err = refuse(L.comm, "no memory to land a pipelined message for the library's unpack");
  }
  if (err == MPI_SUCCESS && one_buffer) {
    int size = 0, pos = 0;
    PMPI_Type_size(L.t, &size);
    int64_t elems = std::min<int64_t>(L.count, std::min(total, cap) / std::max(size, 1));
    err = PMPI_Unpack(land, int(total), &pos, L.origin, int(elems), L.t, MPI_COMM_SELF);
  }
  buf_put(land, land_bytes);
  stats().pipe_received++;
  stats().unpacked_msgs++;
  stats().bytes_unpacked += std::min(total, cap);
  if (err != MPI_SUCCESS) return err;
  PMPI_Status_set_elements(s, MPI_BYTE, int(std::min(total, cap)));
  if (total > cap) {  // the library's answer to a message longer than the receive
    s->MPI_ERROR = MPI_ERR_TRUNCATE;
    PMPI_Comm_call_errhandler(L.comm, MPI_ERR_TRUNCATE);
    return MPI_ERR_TRUNCATE;
  }
  return rc;
}

int pipe_probed(int rc, int flag, const MPI_Status* s, MPI_Comm comm, const char* call) {
  if (rc != MPI_SUCCESS || !flag) return rc;
  int got = 0;
  if (PMPI_Get_count(s, MPI_BYTE, &got) != MPI_SUCCESS || got < kPipeHeaderMin || got > kPipeHeaderMax) return rc;
  char what[400];
  std::snprintf(what, sizeof what,
                "%s found a %d-byte message while HAULER_INTERPOSE_PIPELINE is on: it may be a pipelined "
                "message's header (%d to %d bytes), whose message's size a probe cannot tell; set "
                "HAULER_INTERPOSE_PIPELINE=0 for a program that probes messages of that size",
                call, got, kPipeHeaderMin, kPipeHeaderMax);
  return refuse(comm, what);
}

int pipe_refuse_persistent(int64_t count, MPI_Datatype t, MPI_Comm comm, MPI_Request* req) {
  char what[300];
  std::snprintf(what, sizeof what,
                "MPI_Recv_init of %lld bytes while HAULER_INTERPOSE_PIPELINE=%lld: a persistent receive that large "
                "could meet a pipelined message the shim cannot finish; set HAULER_INTERPOSE_PIPELINE=0 (or above "
                "this size)",
                (long long)pipe_capacity(count, t), (long long)g_config.pipeline_min);
  if (req) *req = MPI_REQUEST_NULL;
  return refuse(comm, what);
}

}  // namespace shim
