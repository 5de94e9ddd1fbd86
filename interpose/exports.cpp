// The exported MPI entry points: each checks the kill switch (and its feature switch), then
// forwards to PMPI_X or calls the implementation in namespace shim.
#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "shim.hpp"

using namespace shim;


// The shim is compiled against one MPI's mpi.h: its handles (ints for MPICH, pointers for Open MPI)
// and constants. Preloaded into a program of the other MPI, even passing a call through would cut
// the program's handles to the wrong width (a segfault inside the library), so it cannot stay
// quietly off: before the library starts, it checks that the library answering PMPI_Init is the
// one whose marker function it was built for and that the other MPI's is not loaded; if not it says
// so in one line (from the job's first rank) and the process exits with status 1.
#if defined(OPEN_MPI)
static const char* const kBuiltFor = "Open MPI";
static const char* const kOwnMarker = "ompi_mpi_init";
static const char* const kOtherMarker = "MPIR_Err_create_code";
#else
static const char* const kBuiltFor = "MPICH";  // MPICH and its ABI (Intel MPI, MVAPICH)
static const char* const kOwnMarker = "MPIR_Err_create_code";
static const char* const kOtherMarker = "ompi_mpi_init";
#endif

static const char* library_of(void* symbol) {
  Dl_info d{};
  return symbol && dladdr(symbol, &d) && d.dli_fname ? d.dli_fname : nullptr;
}

static void require_own_library() {
  void* init = dlsym(RTLD_DEFAULT, "PMPI_Init");
  void* own = dlsym(RTLD_DEFAULT, kOwnMarker);
  void* other = dlsym(RTLD_DEFAULT, kOtherMarker);
  const char* init_lib = library_of(init);
  const char* own_lib = library_of(own);
  if (init_lib && own_lib && std::strcmp(init_lib, own_lib) == 0 && other == nullptr) return;
  const char* rank = nullptr;  // one line per job: the first rank only, as the launcher numbers them
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"})
    if ((rank = getenv(v)) != nullptr) break;
  if (!rank || std::strcmp(rank, "0") == 0) {
    const char* seen = other ? library_of(other) : init_lib;
    std::fprintf(stderr,
                 "hauler-interpose: this shim is built for %s but the program's MPI library is %s; exiting "
                 "(run it with the shim of that MPI: hauler run picks it from the program)\n",
                 kBuiltFor, seen ? seen : "not found");
    std::fflush(stderr);
  }
  _exit(1);
}

// After the library's MPI_Init / MPI_Init_thread returned rc.
static int started(int rc) {
  if (rc == MPI_SUCCESS) {
    PMPI_Comm_rank(MPI_COMM_WORLD, &g_world_rank);
    init_locality();  // collective: before any setting can make ranks differ
    init_named_types();
    configure();
    init_pipeline();  // collective too: every rank, whatever its settings
    if (g_config.on)
      logf(kInfo, "active (pack=%d p2p=%d coll=%d gpu=%d)", g_config.pack, g_config.p2p, g_config.coll, g_config.gpu);
  }
  return rc;
}

HAULER_EXPORT int MPI_Init(int* argc, char*** argv) {
  require_own_library();
  return started(PMPI_Init(argc, argv));
}

HAULER_EXPORT int MPI_Init_thread(int* argc, char*** argv, int required, int* provided) {
  require_own_library();
  return started(PMPI_Init_thread(argc, argv, required, provided));
}

// MPI_Pcontrol(level, ...): 0 pauses the shim (every new message goes to the library as it is),
// any other level resumes it; the call then goes on to the library (and any other tool).
HAULER_EXPORT int MPI_Pcontrol(const int level, ...) {
  if (g_config.on) {
    bool pause = level == 0;
    if (g_paused_by_pcontrol.exchange(pause) != pause) logf(kInfo, "MPI_Pcontrol(%d): %s", level, pause ? "paused" : "resumed");
  }
  return PMPI_Pcontrol(level);
}

HAULER_EXPORT int MPI_Finalize(void) {
  if (g_config.on) {
    progress_orphans(true);
    gpu_drain();
    write_report();
    finalize_pipeline();
  }
  g_config.on = false;
  return PMPI_Finalize();
}

HAULER_EXPORT int MPI_Type_commit(MPI_Datatype* t) {
  int rc = PMPI_Type_commit(t);
  if (g_config.on && rc == MPI_SUCCESS && t) commit_type(*t);
  return rc;
}

HAULER_EXPORT int MPI_Type_free(MPI_Datatype* t) {
  if (g_config.on && t) forget_type(*t);
  return PMPI_Type_free(t);
}

HAULER_EXPORT int MPI_Pack(const void* in, int incount, MPI_Datatype t, void* out, int outsize, int* position,
                           MPI_Comm comm) {
  if (!g_config.on || !g_config.pack) return PMPI_Pack(in, incount, t, out, outsize, position, comm);
  return shim::pack(in, incount, t, out, outsize, position, comm);
}

HAULER_EXPORT int MPI_Unpack(const void* in, int insize, int* position, void* out, int outcount, MPI_Datatype t,
                             MPI_Comm comm) {
  if (!g_config.on || !g_config.pack) return PMPI_Unpack(in, insize, position, out, outcount, t, comm);
  return shim::unpack(in, insize, position, out, outcount, t, comm);
}

HAULER_EXPORT int MPI_Pack_size(int incount, MPI_Datatype t, MPI_Comm comm, int* size) {
  // The library's own answer: its packed format is the bytes hauler writes.
  return PMPI_Pack_size(incount, t, comm, size);
}

// The four blocking sends differ only in the library call.
#define HAULER_BLOCKING_SEND(NAME)                                                                             \
  HAULER_EXPORT int MPI_##NAME(const void* buf, int count, MPI_Datatype t, int dest, int tag, MPI_Comm comm) { \
    if (!g_config.on || !g_config.p2p) return PMPI_##NAME(buf, count, t, dest, tag, comm);                     \
    return send_common(PMPI_##NAME, buf, count, t, dest, tag, comm);                                           \
  }
HAULER_BLOCKING_SEND(Send)
HAULER_BLOCKING_SEND(Ssend)
HAULER_BLOCKING_SEND(Bsend)
HAULER_BLOCKING_SEND(Rsend)

HAULER_EXPORT int MPI_Recv(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm,
                           MPI_Status* status) {
  if (!g_config.on || !g_config.p2p) return PMPI_Recv(buf, count, t, source, tag, comm, status);
  return shim::recv(buf, count, t, source, tag, comm, status);
}

HAULER_EXPORT int MPI_Sendrecv(const void* sbuf, int scount, MPI_Datatype stype, int dest, int stag, void* rbuf,
                               int rcount, MPI_Datatype rtype, int source, int rtag, MPI_Comm comm,
                               MPI_Status* status) {
  if (!g_config.on || !g_config.p2p)
    return PMPI_Sendrecv(sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, source, rtag, comm, status);
  return shim::sendrecv(sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, source, rtag, comm, status);
}

HAULER_EXPORT int MPI_Isend(const void* buf, int count, MPI_Datatype t, int dest, int tag, MPI_Comm comm,
                            MPI_Request* req) {
  if (!g_config.on || !g_config.p2p) return PMPI_Isend(buf, count, t, dest, tag, comm, req);
  return shim::isend(buf, count, t, dest, tag, comm, req);
}

HAULER_EXPORT int MPI_Irecv(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm,
                            MPI_Request* req) {
  if (!g_config.on || !g_config.p2p) return PMPI_Irecv(buf, count, t, source, tag, comm, req);
  return shim::irecv(buf, count, t, source, tag, comm, req);
}

// Completion calls stay active even if HAULER_INTERPOSE_P2P is off: a request of ours must
// always be finished. They cost one atomic load when no request of the shim is pending.
HAULER_EXPORT int MPI_Wait(MPI_Request* req, MPI_Status* status) {
  if (!g_config.on) return PMPI_Wait(req, status);
  return shim::wait(req, status);
}

HAULER_EXPORT int MPI_Test(MPI_Request* req, int* flag, MPI_Status* status) {
  if (!g_config.on) return PMPI_Test(req, flag, status);
  return shim::test(req, flag, status);
}

HAULER_EXPORT int MPI_Waitall(int n, MPI_Request* reqs, MPI_Status* statuses) {
  if (!g_config.on) return PMPI_Waitall(n, reqs, statuses);
  return shim::waitall(n, reqs, statuses);
}

HAULER_EXPORT int MPI_Testall(int n, MPI_Request* reqs, int* flag, MPI_Status* statuses) {
  if (!g_config.on) return PMPI_Testall(n, reqs, flag, statuses);
  return shim::testall(n, reqs, flag, statuses);
}

HAULER_EXPORT int MPI_Waitany(int n, MPI_Request* reqs, int* index, MPI_Status* status) {
  if (!g_config.on) return PMPI_Waitany(n, reqs, index, status);
  return shim::waitany(n, reqs, index, status);
}

HAULER_EXPORT int MPI_Testany(int n, MPI_Request* reqs, int* index, int* flag, MPI_Status* status) {
  if (!g_config.on) return PMPI_Testany(n, reqs, index, flag, status);
  return shim::testany(n, reqs, index, flag, status);
}

HAULER_EXPORT int MPI_Waitsome(int n, MPI_Request* reqs, int* outcount, int* indices, MPI_Status* statuses) {
  if (!g_config.on) return PMPI_Waitsome(n, reqs, outcount, indices, statuses);
  return shim::waitsome(n, reqs, outcount, indices, statuses);
}

HAULER_EXPORT int MPI_Testsome(int n, MPI_Request* reqs, int* outcount, int* indices, MPI_Status* statuses) {
  if (!g_config.on) return PMPI_Testsome(n, reqs, outcount, indices, statuses);
  return shim::testsome(n, reqs, outcount, indices, statuses);
}

HAULER_EXPORT int MPI_Request_free(MPI_Request* req) {
  if (!g_config.on) return PMPI_Request_free(req);
  return shim::request_free(req);
}

HAULER_EXPORT int MPI_Request_get_status(MPI_Request req, int* flag, MPI_Status* status) {
  if (!g_config.on) return PMPI_Request_get_status(req, flag, status);
  return shim::request_get_status(req, flag, status);
}

// With the pipeline on (g_pipe_on), the receive calls the shim cannot finish: a probe that finds a
// message of a header's size (48 to 256 bytes: possibly a pipelined message's header) and a
// persistent receive large enough to meet one are refused; MPI_Sendrecv_replace pulls a pipelined
// message like MPI_Recv.
HAULER_EXPORT int MPI_Probe(int source, int tag, MPI_Comm comm, MPI_Status* status) {
  if (!g_pipe_on) return PMPI_Probe(source, tag, comm, status);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  return pipe_probed(PMPI_Probe(source, tag, comm, s), 1, s, comm, "MPI_Probe");
}

HAULER_EXPORT int MPI_Iprobe(int source, int tag, MPI_Comm comm, int* flag, MPI_Status* status) {
  if (!g_pipe_on) return PMPI_Iprobe(source, tag, comm, flag, status);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Iprobe(source, tag, comm, flag, s);
  return pipe_probed(rc, rc == MPI_SUCCESS && *flag, s, comm, "MPI_Iprobe");
}

HAULER_EXPORT int MPI_Mprobe(int source, int tag, MPI_Comm comm, MPI_Message* msg, MPI_Status* status) {
  if (!g_pipe_on) return PMPI_Mprobe(source, tag, comm, msg, status);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  return pipe_probed(PMPI_Mprobe(source, tag, comm, msg, s), 1, s, comm, "MPI_Mprobe");
}

HAULER_EXPORT int MPI_Improbe(int source, int tag, MPI_Comm comm, int* flag, MPI_Message* msg, MPI_Status* status) {
  if (!g_pipe_on) return PMPI_Improbe(source, tag, comm, flag, msg, status);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Improbe(source, tag, comm, flag, msg, s);
  return pipe_probed(rc, rc == MPI_SUCCESS && *flag, s, comm, "MPI_Improbe");
}

HAULER_EXPORT int MPI_Recv_init(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm,
                                MPI_Request* req) {
  if (source == MPI_PROC_NULL || !pipe_watch(count, t))
    return PMPI_Recv_init(buf, count, t, source, tag, comm, req);
  return pipe_refuse_persistent(count, t, comm, req);
}

HAULER_EXPORT int MPI_Sendrecv_replace(void* buf, int count, MPI_Datatype t, int dest, int stag, int source,
                                       int rtag, MPI_Comm comm, MPI_Status* status) {
  if (source == MPI_PROC_NULL || !pipe_watch(count, t))
    return PMPI_Sendrecv_replace(buf, count, t, dest, stag, source, rtag, comm, status);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  Pending p;
  watch_receive(&p, buf, count, t, comm);
  int rc = PMPI_Sendrecv_replace(buf, count, t, dest, stag, source, rtag, comm, s);
  int prc = rc == MPI_SUCCESS ? finish(p, s) : (release(p), MPI_SUCCESS);
  return rc == MPI_SUCCESS ? prc : rc;
}

HAULER_EXPORT int MPI_Cancel(MPI_Request* req) {
  // The real request is the application's handle: the library cancels it; the completion
  // call that reports it cancelled releases the staging buffer without unpacking.
  return PMPI_Cancel(req);
}

HAULER_EXPORT int MPI_Alltoallv(const void* sbuf, const int* scounts, const int* sdispls, MPI_Datatype stype,
                                void* rbuf, const int* rcounts, const int* rdispls, MPI_Datatype rtype,
                                MPI_Comm comm) {
  if (!g_config.on) return PMPI_Alltoallv(sbuf, scounts, sdispls, stype, rbuf, rcounts, rdispls, rtype, comm);
  return shim::alltoallv(sbuf, scounts, sdispls, stype, rbuf, rcounts, rdispls, rtype, comm, false);
}

HAULER_EXPORT int MPI_Alltoallw(const void* sbuf, const int* scounts, const int* sdispls,
                                const MPI_Datatype* stypes, void* rbuf, const int* rcounts, const int* rdispls,
                                const MPI_Datatype* rtypes, MPI_Comm comm) {
  if (!g_config.on) return PMPI_Alltoallw(sbuf, scounts, sdispls, stypes, rbuf, rcounts, rdispls, rtypes, comm);
  return shim::alltoallw(sbuf, scounts, nullptr, sdispls, stypes, rbuf, rcounts, nullptr, rdispls, rtypes, comm, false);
}

HAULER_EXPORT int MPI_Neighbor_alltoallv(const void* sbuf, const int* scounts, const int* sdispls,
                                         MPI_Datatype stype, void* rbuf, const int* rcounts, const int* rdispls,
                                         MPI_Datatype rtype, MPI_Comm comm) {
  if (!g_config.on) return PMPI_Neighbor_alltoallv(sbuf, scounts, sdispls, stype, rbuf, rcounts, rdispls, rtype, comm);
  return shim::alltoallv(sbuf, scounts, sdispls, stype, rbuf, rcounts, rdispls, rtype, comm, true);
}

HAULER_EXPORT int MPI_Neighbor_alltoallw(const void* sbuf, const int* scounts, const MPI_Aint* sdispls,
                                         const MPI_Datatype* stypes, void* rbuf, const int* rcounts,
                                         const MPI_Aint* rdispls, const MPI_Datatype* rtypes, MPI_Comm comm) {
  if (!g_config.on) return PMPI_Neighbor_alltoallw(sbuf, scounts, sdispls, stypes, rbuf, rcounts, rdispls, rtypes, comm);
  return shim::alltoallw(sbuf, scounts, sdispls, nullptr, stypes, rbuf, rcounts, rdispls, nullptr, rtypes, comm, true);
}
