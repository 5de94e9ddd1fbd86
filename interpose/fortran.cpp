// Fortran (mpif.h and `use mpi`) entry points of the shim, Open MPI only.
//
// Open MPI's Fortran layer (libmpi_mpifh: mpi_send_ -> ompi_send_f -> PMPI_Send) calls PMPI_*
// directly, so a Fortran program would bypass every C entry point of the shim, MPI_Init included.
// Each function here does what Open MPI's own wrapper does (handles through f2c/c2f, statuses
// through Status_c2f, the MPI_BOTTOM / STATUS(ES)_IGNORE sentinels) but calls the shim's MPI_X,
// which applies the kill switches. The set is closed under completion: every Fortran call that
// can complete a request the shim posted (Wait*, Test*, Request_free, Request_get_status) is
// here too, or a packed receive would never be unpacked. MPICH's Fortran layer calls the C MPI_*
// functions, which the shim already intercepts, so nothing here is built for it. Open MPI's
// mpi_f08 layer reaches the same bodies through the names it calls (ompi_x_f, pmpi_test_ ...;
// listed at the end).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#if defined(OPEN_MPI)
#include <dlfcn.h>

#include <cctype>
#include <string>
#include <vector>

#include "shim.hpp"

namespace {

using F = MPI_Fint;
constexpr int kStatusInts = sizeof(MPI_Status) / sizeof(F);  // MPI_STATUS_SIZE

// The addresses of a Fortran sentinel common block under every name mangling Open MPI knows
// (mpi_fortran_bottom_ etc.); looked up once, after MPI_Init.
struct Sentinel {
  const char* base;
  void* at[4] = {};
  bool is(const void* p) const {
    if (p == nullptr) return false;
    for (void* a : at)
      if (a != nullptr && a == p) return true;
    return false;
  }
};
Sentinel g_bottom{"mpi_fortran_bottom"}, g_status_ignore{"mpi_fortran_status_ignore"},
    g_statuses_ignore{"mpi_fortran_statuses_ignore"};

void find_sentinels() {
  for (Sentinel* s : {&g_bottom, &g_status_ignore, &g_statuses_ignore}) {
    std::string lower = s->base, upper = lower;
    for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    const std::string names[4] = {lower, lower + "_", lower + "__", upper};
    for (int i = 0; i < 4; ++i) s->at[i] = dlsym(RTLD_DEFAULT, names[i].c_str());
  }
}

void* buf(void* b) { return g_bottom.is(b) ? MPI_BOTTOM : b; }

// A C status for a Fortran one (nullptr: ignored) and back.
struct Status {
  F* f;
  MPI_Status c;
  explicit Status(F* fs) : f(g_status_ignore.is(fs) || fs == MPI_F_STATUS_IGNORE ? nullptr : fs) {}
  MPI_Status* get() { return f ? &c : MPI_STATUS_IGNORE; }
  void out() {
    if (f) PMPI_Status_c2f(&c, f);
  }
};

struct Statuses {
  F* f;
  std::vector<MPI_Status> c;
  Statuses(F* fs, int n)
      : f(g_statuses_ignore.is(fs) || fs == MPI_F_STATUSES_IGNORE ? nullptr : fs), c(f && n > 0 ? n : 0) {}
  MPI_Status* get() { return f ? c.data() : MPI_STATUSES_IGNORE; }
  void out(int n) {
    if (f)
      for (int i = 0; i < n; ++i) PMPI_Status_c2f(&c[i], f + i * kStatusInts);
  }
};

struct Requests {
  F* f;
  std::vector<MPI_Request> c;
  Requests(F* fs, int n) : f(fs), c(n > 0 ? n : 0) {
    for (int i = 0; i < n; ++i) c[i] = PMPI_Request_f2c(f[i]);
  }
  // Completed requests are MPI_REQUEST_NULL now (or stay, if persistent): the Fortran handle follows.
  void out() {
    for (size_t i = 0; i < c.size(); ++i) f[i] = PMPI_Request_c2f(c[i]);
  }
};

void set(F* ierr, int rc) {
  if (ierr) *ierr = rc;
}
int logical(int flag) { return flag ? 1 : 0; }  // gfortran's .TRUE. / .FALSE. (Open MPI's too)
int index_out(int i) { return i == MPI_UNDEFINED || i < 0 ? i : i + 1; }  // Fortran indices are 1-based

MPI_Datatype T(const F* t) { return PMPI_Type_f2c(*t); }
MPI_Comm C(const F* c) { return PMPI_Comm_f2c(*c); }

template <auto fn>  // MPI_Send, MPI_Ssend, MPI_Bsend, MPI_Rsend
void send(void* b, F* count, F* type, F* dest, F* tag, F* comm, F* ierr) {
  shim::count_fortran();
  set(ierr, fn(buf(b), *count, T(type), *dest, *tag, C(comm)));
}

template <auto fn>  // MPI_Isend, MPI_Irecv
void ipost(void* b, F* count, F* type, F* peer, F* tag, F* comm, F* req, F* ierr) {
  shim::count_fortran();
  MPI_Request c = MPI_REQUEST_NULL;
  int rc = fn(buf(b), *count, T(type), *peer, *tag, C(comm), &c);
  if (rc == MPI_SUCCESS) *req = PMPI_Request_c2f(c);
  set(ierr, rc);
}

template <auto fn>  // MPI_Waitsome, MPI_Testsome
void some(F* count, F* reqs, F* outcount, F* indices, F* statuses, F* ierr) {
  Requests r(reqs, *count);
  Statuses s(statuses, *count);
  int out = MPI_UNDEFINED;
  int rc = fn(*count, r.c.data(), &out, indices, s.get());
  r.out();
  if (rc == MPI_SUCCESS || rc == MPI_ERR_IN_STATUS) {
    *outcount = out;
    for (int k = 0; out != MPI_UNDEFINED && k < out; ++k) indices[k] = index_out(indices[k]);
    if (out != MPI_UNDEFINED) s.out(out);
  }
  set(ierr, rc);
}

}  // namespace

// Bodies take Fortran arguments (all by reference) and end with ierr; the four names each
// Fortran compiler may look for (mpi_x, mpi_x_, mpi_x__, MPI_X) are aliases of one body.
#define HAULER_F_ALIAS(impl, name) \
  extern "C" __attribute__((visibility("default"), alias(#impl))) decltype(impl) name;
#define HAULER_FORTRAN(impl, lower, UPPER) \
  HAULER_F_ALIAS(impl, lower) HAULER_F_ALIAS(impl, lower##_) HAULER_F_ALIAS(impl, lower##__) HAULER_F_ALIAS(impl, UPPER)

extern "C" {

void hauler_f_init(F* ierr) {
  shim::g_fortran_init = true;  // no pipelining: this layer does not reach the probes the pipeline must see
  int argc = 0;
  char** argv = nullptr;
  int rc = MPI_Init(&argc, &argv);
  find_sentinels();
  set(ierr, rc);
}

void hauler_f_init_thread(F* required, F* provided, F* ierr) {
  shim::g_fortran_init = true;
  int argc = 0, p = 0;
  char** argv = nullptr;
  int rc = MPI_Init_thread(&argc, &argv, *required, &p);
  find_sentinels();
  if (rc == MPI_SUCCESS) *provided = p;
  set(ierr, rc);
}

void hauler_f_finalize(F* ierr) { set(ierr, MPI_Finalize()); }

void hauler_f_type_commit(F* type, F* ierr) {
  MPI_Datatype t = PMPI_Type_f2c(*type);
  int rc = MPI_Type_commit(&t);
  if (rc == MPI_SUCCESS) *type = PMPI_Type_c2f(t);
  set(ierr, rc);
}

void hauler_f_type_free(F* type, F* ierr) {
  MPI_Datatype t = PMPI_Type_f2c(*type);
  int rc = MPI_Type_free(&t);
  if (rc == MPI_SUCCESS) *type = PMPI_Type_c2f(t);
  set(ierr, rc);
}

void hauler_f_send(void* b, F* n, F* t, F* d, F* tag, F* c, F* e) { send<MPI_Send>(b, n, t, d, tag, c, e); }
void hauler_f_ssend(void* b, F* n, F* t, F* d, F* tag, F* c, F* e) { send<MPI_Ssend>(b, n, t, d, tag, c, e); }
void hauler_f_bsend(void* b, F* n, F* t, F* d, F* tag, F* c, F* e) { send<MPI_Bsend>(b, n, t, d, tag, c, e); }
void hauler_f_rsend(void* b, F* n, F* t, F* d, F* tag, F* c, F* e) { send<MPI_Rsend>(b, n, t, d, tag, c, e); }
void hauler_f_isend(void* b, F* n, F* t, F* d, F* tag, F* c, F* r, F* e) { ipost<MPI_Isend>(b, n, t, d, tag, c, r, e); }
void hauler_f_irecv(void* b, F* n, F* t, F* s, F* tag, F* c, F* r, F* e) { ipost<MPI_Irecv>(b, n, t, s, tag, c, r, e); }

void hauler_f_recv(void* b, F* count, F* type, F* source, F* tag, F* comm, F* status, F* ierr) {
  shim::count_fortran();
  Status s(status);
  int rc = MPI_Recv(buf(b), *count, T(type), *source, *tag, C(comm), s.get());
  if (rc == MPI_SUCCESS) s.out();
  set(ierr, rc);
}

void hauler_f_sendrecv(void* sb, F* sn, F* stype, F* dest, F* stag, void* rb, F* rn, F* rtype, F* source, F* rtag,
                       F* comm, F* status, F* ierr) {
  shim::count_fortran();
  Status s(status);
  int rc = MPI_Sendrecv(buf(sb), *sn, T(stype), *dest, *stag, buf(rb), *rn, T(rtype), *source, *rtag, C(comm),
                        s.get());
  if (rc == MPI_SUCCESS) s.out();
  set(ierr, rc);
}

void hauler_f_wait(F* req, F* status, F* ierr) {
  MPI_Request c = PMPI_Request_f2c(*req);
  Status s(status);
  int rc = MPI_Wait(&c, s.get());
  *req = PMPI_Request_c2f(c);
  if (rc == MPI_SUCCESS) s.out();
  set(ierr, rc);
}

void hauler_f_test(F* req, int* flag, F* status, F* ierr) {
  MPI_Request c = PMPI_Request_f2c(*req);
  Status s(status);
  int f = 0;
  int rc = MPI_Test(&c, &f, s.get());
  *req = PMPI_Request_c2f(c);
  if (rc == MPI_SUCCESS) {
    *flag = logical(f);
    if (f) s.out();
  }
  set(ierr, rc);
}

void hauler_f_waitall(F* count, F* reqs, F* statuses, F* ierr) {
  Requests r(reqs, *count);
  Statuses s(statuses, *count);
  int rc = MPI_Waitall(*count, r.c.data(), s.get());
  r.out();
  if (rc == MPI_SUCCESS || rc == MPI_ERR_IN_STATUS) s.out(*count);
  set(ierr, rc);
}

void hauler_f_testall(F* count, F* reqs, int* flag, F* statuses, F* ierr) {
  Requests r(reqs, *count);
  Statuses s(statuses, *count);
  int f = 0;
  int rc = MPI_Testall(*count, r.c.data(), &f, s.get());
  r.out();
  if (rc == MPI_SUCCESS || rc == MPI_ERR_IN_STATUS) {
    *flag = logical(f);
    if (f) s.out(*count);
  }
  set(ierr, rc);
}

void hauler_f_waitany(F* count, F* reqs, F* index, F* status, F* ierr) {
  Requests r(reqs, *count);
  Status s(status);
  int i = MPI_UNDEFINED;
  int rc = MPI_Waitany(*count, r.c.data(), &i, s.get());
  r.out();
  if (rc == MPI_SUCCESS) {
    *index = index_out(i);
    s.out();
  }
  set(ierr, rc);
}

void hauler_f_testany(F* count, F* reqs, F* index, int* flag, F* status, F* ierr) {
  Requests r(reqs, *count);
  Status s(status);
  int i = MPI_UNDEFINED, f = 0;
  int rc = MPI_Testany(*count, r.c.data(), &i, &f, s.get());
  r.out();
  if (rc == MPI_SUCCESS) {
    *index = index_out(i);
    *flag = logical(f);
    if (f) s.out();
  }
  set(ierr, rc);
}

void hauler_f_waitsome(F* n, F* r, F* o, F* i, F* s, F* e) { some<MPI_Waitsome>(n, r, o, i, s, e); }
void hauler_f_testsome(F* n, F* r, F* o, F* i, F* s, F* e) { some<MPI_Testsome>(n, r, o, i, s, e); }

void hauler_f_request_free(F* req, F* ierr) {
  MPI_Request c = PMPI_Request_f2c(*req);
  int rc = MPI_Request_free(&c);
  if (rc == MPI_SUCCESS) *req = PMPI_Request_c2f(MPI_REQUEST_NULL);
  set(ierr, rc);
}

void hauler_f_request_get_status(F* req, int* flag, F* status, F* ierr) {
  Status s(status);
  int f = 0;
  int rc = MPI_Request_get_status(PMPI_Request_f2c(*req), &f, s.get());
  if (rc == MPI_SUCCESS) {
    *flag = logical(f);
    if (f) s.out();
  }
  set(ierr, rc);
}

void hauler_f_pack(void* in, F* incount, F* type, void* out, F* outsize, F* position, F* comm, F* ierr) {
  shim::count_fortran();
  set(ierr, MPI_Pack(buf(in), *incount, T(type), out, *outsize, position, C(comm)));
}

void hauler_f_unpack(void* in, F* insize, F* position, void* out, F* outcount, F* type, F* comm, F* ierr) {
  shim::count_fortran();
  set(ierr, MPI_Unpack(in, *insize, position, buf(out), *outcount, T(type), C(comm)));
}

// MPI_PCONTROL(LEVEL): no ierror in the Fortran binding.
void hauler_f_pcontrol(F* level) {
  shim::count_fortran();
  MPI_Pcontrol(*level);
}

}  // extern "C"

HAULER_FORTRAN(hauler_f_init, mpi_init, MPI_INIT)
HAULER_FORTRAN(hauler_f_init_thread, mpi_init_thread, MPI_INIT_THREAD)
HAULER_FORTRAN(hauler_f_finalize, mpi_finalize, MPI_FINALIZE)
HAULER_FORTRAN(hauler_f_type_commit, mpi_type_commit, MPI_TYPE_COMMIT)
HAULER_FORTRAN(hauler_f_type_free, mpi_type_free, MPI_TYPE_FREE)
HAULER_FORTRAN(hauler_f_send, mpi_send, MPI_SEND)
HAULER_FORTRAN(hauler_f_ssend, mpi_ssend, MPI_SSEND)
HAULER_FORTRAN(hauler_f_bsend, mpi_bsend, MPI_BSEND)
HAULER_FORTRAN(hauler_f_rsend, mpi_rsend, MPI_RSEND)
HAULER_FORTRAN(hauler_f_isend, mpi_isend, MPI_ISEND)
HAULER_FORTRAN(hauler_f_irecv, mpi_irecv, MPI_IRECV)
HAULER_FORTRAN(hauler_f_recv, mpi_recv, MPI_RECV)
HAULER_FORTRAN(hauler_f_sendrecv, mpi_sendrecv, MPI_SENDRECV)
HAULER_FORTRAN(hauler_f_wait, mpi_wait, MPI_WAIT)
HAULER_FORTRAN(hauler_f_test, mpi_test, MPI_TEST)
HAULER_FORTRAN(hauler_f_waitall, mpi_waitall, MPI_WAITALL)
HAULER_FORTRAN(hauler_f_testall, mpi_testall, MPI_TESTALL)
HAULER_FORTRAN(hauler_f_waitany, mpi_waitany, MPI_WAITANY)
HAULER_FORTRAN(hauler_f_testany, mpi_testany, MPI_TESTANY)
HAULER_FORTRAN(hauler_f_waitsome, mpi_waitsome, MPI_WAITSOME)
HAULER_FORTRAN(hauler_f_testsome, mpi_testsome, MPI_TESTSOME)
HAULER_FORTRAN(hauler_f_request_free, mpi_request_free, MPI_REQUEST_FREE)
HAULER_FORTRAN(hauler_f_request_get_status, mpi_request_get_status, MPI_REQUEST_GET_STATUS)
HAULER_FORTRAN(hauler_f_pack, mpi_pack, MPI_PACK)
HAULER_FORTRAN(hauler_f_unpack, mpi_unpack, MPI_UNPACK)
HAULER_FORTRAN(hauler_f_pcontrol, mpi_pcontrol, MPI_PCONTROL)

// mpi_f08: Open MPI's MPI_X_f08 wrappers (libmpi_usempif08) call ompi_x_f, the C function behind
// mpi_x_ in libmpi_mpifh, and for Test, Testall, Testany, Testsome and Request_get_status the
// Fortran profiling name pmpi_x_, each with mpi_x_'s arguments (handles as their MPI_VAL integers,
// statuses as Fortran integer arrays). The shim defines those names too, so an mpi_f08 program
// reaches it the way a `use mpi` one does.
HAULER_F_ALIAS(hauler_f_init, ompi_init_f)
HAULER_F_ALIAS(hauler_f_init_thread, ompi_init_thread_f)
HAULER_F_ALIAS(hauler_f_finalize, ompi_finalize_f)
HAULER_F_ALIAS(hauler_f_type_commit, ompi_type_commit_f)
HAULER_F_ALIAS(hauler_f_type_free, ompi_type_free_f)
HAULER_F_ALIAS(hauler_f_send, ompi_send_f)
HAULER_F_ALIAS(hauler_f_ssend, ompi_ssend_f)
HAULER_F_ALIAS(hauler_f_bsend, ompi_bsend_f)
HAULER_F_ALIAS(hauler_f_rsend, ompi_rsend_f)
HAULER_F_ALIAS(hauler_f_isend, ompi_isend_f)
HAULER_F_ALIAS(hauler_f_irecv, ompi_irecv_f)
HAULER_F_ALIAS(hauler_f_recv, ompi_recv_f)
HAULER_F_ALIAS(hauler_f_sendrecv, ompi_sendrecv_f)
HAULER_F_ALIAS(hauler_f_wait, ompi_wait_f)
HAULER_F_ALIAS(hauler_f_waitall, ompi_waitall_f)
HAULER_F_ALIAS(hauler_f_waitany, ompi_waitany_f)
HAULER_F_ALIAS(hauler_f_waitsome, ompi_waitsome_f)
HAULER_F_ALIAS(hauler_f_request_free, ompi_request_free_f)
HAULER_F_ALIAS(hauler_f_pack, ompi_pack_f)
HAULER_F_ALIAS(hauler_f_unpack, ompi_unpack_f)
HAULER_F_ALIAS(hauler_f_pcontrol, ompi_pcontrol_f)
HAULER_F_ALIAS(hauler_f_test, pmpi_test_)
HAULER_F_ALIAS(hauler_f_testall, pmpi_testall_)
HAULER_F_ALIAS(hauler_f_testany, pmpi_testany_)
HAULER_F_ALIAS(hauler_f_testsome, pmpi_testsome_)
HAULER_F_ALIAS(hauler_f_request_get_status, pmpi_request_get_status_)

#endif  // OPEN_MPI
