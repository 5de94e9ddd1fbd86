// The MPI-4 large-count entry points (MPI_Send_c, MPI_Isend_c, MPI_Recv_c, MPI_Pack_c, ...), where
// the library has them. A call whose counts fit in an int is the same message as the int call, so
// it takes the shim's path for that call (packed, counted, its requests tracked like any other);
// one whose counts do not is handed to the library's _c call as it is and counted as passed
// through. The shim keeps no state for those: the application holds the library's own request.
// The _c calls not defined here (collectives, Issend_c, ...) never reach the shim at all.
#include <climits>

#include "shim.hpp"

#if HAULER_MPI_LARGE_COUNT

using namespace shim;

namespace {

bool fits(MPI_Count c) { return c >= 0 && c <= INT_MAX; }

// A large-count call the library takes whole: counted so the report shows it.
template <typename F>
int passed_through(F&& call) {
  if (g_config.on) {
    stats().calls++;
    stats().passthrough++;
  }
  return call();
}

// A large-count receive with the pipeline on, when it could take a pipelined message's header:
// watched like the int calls' (only the counts that do not fit an int get here).
template <typename F>
int watched_recv(void* buf, MPI_Count count, MPI_Datatype t, MPI_Comm comm, MPI_Status* status, F call) {
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  Pending p;
  watch_receive(&p, buf, count, t, comm);
  int rc = call(s);
  int prc = rc == MPI_SUCCESS ? finish(p, s) : (release(p), MPI_SUCCESS);
  return rc == MPI_SUCCESS ? prc : rc;
}

bool watched(int source, MPI_Count count, MPI_Datatype t) {
  return source != MPI_PROC_NULL && pipe_watch(count, t);
}

}  // namespace

#define HAULER_BLOCKING_SEND_C(NAME)                                                                            \
  HAULER_EXPORT int MPI_##NAME##_c(const void* buf, MPI_Count count, MPI_Datatype t, int dest, int tag,          \
                                   MPI_Comm comm) {                                                              \
    if (!g_config.on || !g_config.p2p || !fits(count))                                                          \
      return passed_through([&] { return PMPI_##NAME##_c(buf, count, t, dest, tag, comm); });                   \
    return send_common(PMPI_##NAME, buf, static_cast<int>(count), t, dest, tag, comm);                          \
  }
HAULER_BLOCKING_SEND_C(Send)
HAULER_BLOCKING_SEND_C(Ssend)
HAULER_BLOCKING_SEND_C(Bsend)
HAULER_BLOCKING_SEND_C(Rsend)

HAULER_EXPORT int MPI_Recv_c(void* buf, MPI_Count count, MPI_Datatype t, int source, int tag, MPI_Comm comm,
                             MPI_Status* status) {
  if (!fits(count) && watched(source, count, t))
    return watched_recv(buf, count, t, comm, status,
                        [&](MPI_Status* s) { return PMPI_Recv_c(buf, count, t, source, tag, comm, s); });
  if (!g_config.on || !g_config.p2p || !fits(count))
    return passed_through([&] { return PMPI_Recv_c(buf, count, t, source, tag, comm, status); });
  return shim::recv(buf, static_cast<int>(count), t, source, tag, comm, status);
}

HAULER_EXPORT int MPI_Isend_c(const void* buf, MPI_Count count, MPI_Datatype t, int dest, int tag, MPI_Comm comm,
                              MPI_Request* req) {
  if (!g_config.on || !g_config.p2p || !fits(count))
    return passed_through([&] { return PMPI_Isend_c(buf, count, t, dest, tag, comm, req); });
  return shim::isend(buf, static_cast<int>(count), t, dest, tag, comm, req);
}

HAULER_EXPORT int MPI_Irecv_c(void* buf, MPI_Count count, MPI_Datatype t, int source, int tag, MPI_Comm comm,
                              MPI_Request* req) {
  if (!fits(count) && watched(source, count, t)) {
    Pending p;
    watch_receive(&p, buf, count, t, comm);
    return keep_request(PMPI_Irecv_c(buf, count, t, source, tag, comm, req), req, std::move(p));
  }
  if (!g_config.on || !g_config.p2p || !fits(count))
    return passed_through([&] { return PMPI_Irecv_c(buf, count, t, source, tag, comm, req); });
  return shim::irecv(buf, static_cast<int>(count), t, source, tag, comm, req);
}

HAULER_EXPORT int MPI_Sendrecv_c(const void* sbuf, MPI_Count scount, MPI_Datatype stype, int dest, int stag,
                                 void* rbuf, MPI_Count rcount, MPI_Datatype rtype, int source, int rtag, MPI_Comm comm,
                                 MPI_Status* status) {
  if ((!fits(scount) || !fits(rcount)) && watched(source, rcount, rtype))
    return watched_recv(rbuf, rcount, rtype, comm, status, [&](MPI_Status* s) {
      return PMPI_Sendrecv_c(sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, source, rtag, comm, s);
    });
  if (!g_config.on || !g_config.p2p || !fits(scount) || !fits(rcount))
    return passed_through([&] {
      return PMPI_Sendrecv_c(sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, source, rtag, comm, status);
    });
  return shim::sendrecv(sbuf, static_cast<int>(scount), stype, dest, stag, rbuf, static_cast<int>(rcount), rtype,
                        source, rtag, comm, status);
}

HAULER_EXPORT int MPI_Recv_init_c(void* buf, MPI_Count count, MPI_Datatype t, int source, int tag, MPI_Comm comm,
                                  MPI_Request* req) {
  if (!watched(source, count, t)) return PMPI_Recv_init_c(buf, count, t, source, tag, comm, req);
  return pipe_refuse_persistent(count, t, comm, req);
}

HAULER_EXPORT int MPI_Sendrecv_replace_c(void* buf, MPI_Count count, MPI_Datatype t, int dest, int stag, int source,
                                         int rtag, MPI_Comm comm, MPI_Status* status) {
  if (!watched(source, count, t))
    return PMPI_Sendrecv_replace_c(buf, count, t, dest, stag, source, rtag, comm, status);
  return watched_recv(buf, count, t, comm, status, [&](MPI_Status* s) {
    return PMPI_Sendrecv_replace_c(buf, count, t, dest, stag, source, rtag, comm, s);
  });
}

HAULER_EXPORT int MPI_Pack_c(const void* in, MPI_Count incount, MPI_Datatype t, void* out, MPI_Count outsize,
                             MPI_Count* position, MPI_Comm comm) {
  if (!g_config.on || !g_config.pack || !position || !fits(incount) || !fits(outsize) || !fits(*position))
    return PMPI_Pack_c(in, incount, t, out, outsize, position, comm);
  int pos = static_cast<int>(*position);
  int rc = shim::pack(in, static_cast<int>(incount), t, out, static_cast<int>(outsize), &pos, comm);
  *position = pos;
  return rc;
}

HAULER_EXPORT int MPI_Unpack_c(const void* in, MPI_Count insize, MPI_Count* position, void* out, MPI_Count outcount,
                               MPI_Datatype t, MPI_Comm comm) {
  if (!g_config.on || !g_config.pack || !position || !fits(insize) || !fits(outcount) || !fits(*position))
    return PMPI_Unpack_c(in, insize, position, out, outcount, t, comm);
  int pos = static_cast<int>(*position);
  int rc = shim::unpack(in, static_cast<int>(insize), &pos, out, static_cast<int>(outcount), t, comm);
  *position = pos;
  return rc;
}

#endif  // HAULER_MPI_LARGE_COUNT
