// Point-to-point: the staged halves of the sends and receives (the pass-through tests are inline
// in shim.hpp).
//
// Every point-to-point call has the same shape: stage each side the shim takes (a send is packed
// into staging now; a receive gets staging to land in and unpacks on completion), hand the
// library bytes for a staged side and the application's own arguments otherwise, then release
// (blocking) or remember under the real request (non-blocking).
#include "shim.hpp"

namespace shim {

namespace {

bool fits_int(const dt::Plan& p) { return p.total <= INT32_MAX; }

// Stages buf in *p when the shim takes this side of a message, which decide() said it may
// (c.pack); false: the library does. A selection whose message cannot be staged (device memory
// without the GPU kernels, more than an int of bytes) stops its trials: the library takes them.
bool stage(const Choice& c, const void* buf, bool recv, Pending* p) {
  if (!c.pack) return false;
  TypeInfoRef info;
  Where where = Where::host;
  auto plan = placed(c.pack, buf, &info, &where);
  if (!plan || !fits_int(*plan)) {
    if (c.timed) select_off(*c.timed);
    return false;
  }
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
  g_staging_buffers_held.fetch_add(1, std::memory_order_relaxed);
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

}  // namespace

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

// A receive that could take a pipelined message's header is watched: its record says where it
// lands (the staging p already has, or the application's buffer under its type).
void watch_receive(Pending* p, void* buf, int64_t count, MPI_Datatype t, MPI_Comm comm) {
  if (!g_pipe_on) return;
  int64_t cap = pipe_capacity(count, t);
  if (cap < g_config.pipeline_min) return;
  p->recv = true;
  p->watch = true;
  p->land.origin = buf;
  p->land.count = count;
  p->land.comm = comm;
  p->land.cap = cap;
  stats().pipe_watched++;
  if (p->buf ? p->where == Where::device : device_buffer(buf, size_t(p->land.cap))) {
    p->land.device = true;  // a header here cannot be read back: refused if one comes (pipe_arrived)
    return;
  }
  if (p->buf) {
    p->land.plan = p->plan;
    return;
  }
  if (TypeInfoRef info = brief(t).info) {
    p->type = info;
    p->land.contiguous = info->contiguous;
    if (!info->contiguous) p->land.plan = info->plan(count);
    return;
  }
  // a type the shim did not decode (the predefined ones among them): the library's own
  // pack/unpack, on a duplicate the application cannot free under us
  MPI_Aint lb = 0, extent = 0;
  int size = 0;
  PMPI_Type_get_extent(t, &lb, &extent);
  PMPI_Type_size(t, &size);
  p->land.contiguous = lb == 0 && extent == size;
  if (PMPI_Type_dup(t, &p->dup) == MPI_SUCCESS) p->land.t = p->dup;
}

// A non-blocking call posted bytes from/to p's staging, or a timed library request: the request
// now owns the record.
int keep_request(int rc, MPI_Request* req, Pending p) {
  if (rc != MPI_SUCCESS || *req == MPI_REQUEST_NULL) release(p);
  else if (!p.recv && predefined_complete(*req)) release(p);  // already sent
  else remember(*req, std::move(p));
  return rc;
}

// A trial of a non-blocking call is timed until its completion: p records it (its type keeps the
// selection alive); a library-path trial is such a record without staging.
void time_it(const Choice& c, bool packed, int64_t t0, MPI_Datatype t, Pending* p) {
  if (!c.timed) return;
  p->sel = c.timed;
  p->path = packed ? kPack : kLib;
  p->t0_ns = t0;
  p->thread = pthread_self();
  if (!p->type) p->type = brief(t).info;
}


static int nbytes(const Pending& p) { return static_cast<int>(p.bytes); }

int send_staged(SendFn fn, const void* buf, int count, MPI_Datatype t, int dest, int tag, MPI_Comm comm, Choice c) {
  int64_t t0 = c.timed ? now_ns() : 0;
  int rc = MPI_SUCCESS;
  if (pipe_send(fn, c, buf, t, dest, tag, comm, nullptr, &rc, t0)) {
    if (c.timed) record(*c.timed, kPack, now_ns() - t0);
    return rc;
  }
  Pending p;
  bool packed = stage(c, buf, false, &p);
  rc = packed ? fn(p.buf, nbytes(p), MPI_BYTE, dest, tag, comm) : fn(buf, count, t, dest, tag, comm);
  release(p);
  if (c.timed) record(*c.timed, packed ? kPack : kLib, now_ns() - t0);
  return rc;
}

int recv_staged(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm, MPI_Status* status,
                Choice c) {
  int64_t t0 = c.timed ? now_ns() : 0;
  Pending p;
  bool packed = stage(c, buf, true, &p);
  watch_receive(&p, buf, count, t, comm);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = packed ? PMPI_Recv(p.buf, nbytes(p), MPI_BYTE, source, tag, comm, s)
                  : PMPI_Recv(buf, count, t, source, tag, comm, s);
  if (packed || p.watch) {
    int prc = finish(p, s);
    if (rc == MPI_SUCCESS) rc = prc;
  }
  if (c.timed) record(*c.timed, packed ? kPack : kLib, now_ns() - t0);
  return rc;
}

// The staged halves of isend/irecv live apart so that the pass-through path keeps a small frame.
int isend_staged(const void* buf, int count, MPI_Datatype t, int dest, int tag, MPI_Comm comm, MPI_Request* req,
                 Choice c) {
  int64_t t0 = c.timed ? now_ns() : 0;
  int rc = MPI_SUCCESS;
  if (pipe_send(nullptr, c, buf, t, dest, tag, comm, req, &rc, t0)) return rc;
  Pending p;
  bool packed = stage(c, buf, false, &p);
  time_it(c, packed, t0, t, &p);
  rc = packed ? PMPI_Isend(p.buf, nbytes(p), MPI_BYTE, dest, tag, comm, req)
                  : PMPI_Isend(buf, count, t, dest, tag, comm, req);
  return keep_request(rc, req, std::move(p));
}

int irecv_staged(void* buf, int count, MPI_Datatype t, int source, int tag, MPI_Comm comm, MPI_Request* req,
                 Choice c) {
  int64_t t0 = c.timed ? now_ns() : 0;
  Pending p;
  bool packed = stage(c, buf, true, &p);
  time_it(c, packed, t0, t, &p);
  watch_receive(&p, buf, count, t, comm);
  int rc = packed ? PMPI_Irecv(p.buf, nbytes(p), MPI_BYTE, source, tag, comm, req)
                  : PMPI_Irecv(buf, count, t, source, tag, comm, req);
  return keep_request(rc, req, std::move(p));
}

// Each side is staged (or not) on its own; a trial on either side times the whole call.
int sendrecv(const void* sbuf, int scount, MPI_Datatype stype, int dest, int stag, void* rbuf, int rcount,
             MPI_Datatype rtype, int source, int rtag, MPI_Comm comm, MPI_Status* status) {
  stats().calls++;
  Choice sc = choose(scount, stype, dest, comm, kSend), rc_ = choose(rcount, rtype, source, comm, kRecv);
  if (plain(sc) && plain(rc_) && !pipe_watch(rcount, rtype))
    return PMPI_Sendrecv(sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, source, rtag, comm, status);
  int64_t t0 = sc.timed || rc_.timed ? now_ns() : 0;
  if (sc.pack && g_pipe_on) {
    // A pipelined send half: as MPI_Isend + MPI_Irecv + two waits, so that the chunks go while
    // the receive half waits (each half keeps its own choice and trial)
    MPI_Request sr = MPI_REQUEST_NULL, rr = MPI_REQUEST_NULL;
    int src = MPI_SUCCESS;
    if (pipe_send(nullptr, sc, sbuf, stype, dest, stag, comm, &sr, &src, t0)) {
      int rrc = plain(rc_) && !pipe_watch(rcount, rtype)
                    ? PMPI_Irecv(rbuf, rcount, rtype, source, rtag, comm, &rr)
                    : irecv_staged(rbuf, rcount, rtype, source, rtag, comm, &rr, rc_);
      if (rrc == MPI_SUCCESS) rrc = wait(&rr, status);
      if (src == MPI_SUCCESS) src = wait(&sr, MPI_STATUS_IGNORE);
      return rrc != MPI_SUCCESS ? rrc : src;
    }
  }
  Pending sp, rp;
  bool s_on = stage(sc, sbuf, false, &sp);
  bool r_on = stage(rc_, rbuf, true, &rp);
  watch_receive(&rp, rbuf, rcount, rtype, comm);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Sendrecv(s_on ? sp.buf : sbuf, s_on ? nbytes(sp) : scount, s_on ? MPI_BYTE : stype, dest, stag,
                         r_on ? rp.buf : rbuf, r_on ? nbytes(rp) : rcount, r_on ? MPI_BYTE : rtype, source, rtag,
                         comm, s);
  if (r_on || rp.watch) {
    int prc = finish(rp, s);
    if (rc == MPI_SUCCESS) rc = prc;
  }
  release(sp);
  if (t0) {
    int64_t ns = now_ns() - t0;
    if (sc.timed) record(*sc.timed, s_on ? kPack : kLib, ns);
    if (rc_.timed) record(*rc_.timed, r_on ? kPack : kLib, ns);
  }
  return rc;
}

}  // namespace shim
