// The request table (staged requests by their real handle) and the completion calls that finish
// them: unpack what a receive brought, give the staging back.
#include <algorithm>

#include "shim.hpp"

namespace shim {

std::atomic<int64_t> g_staged_request_count{0};
std::atomic<int64_t> g_freed_request_count{0};
std::atomic<int64_t> g_staging_buffers_held{0};

namespace {

std::mutex g_requests_mu;
std::unordered_map<MPI_Request, Pending> g_staged_requests;
std::vector<MPI_Request> g_freed_requests;  // freed by the application, completed by us

// A completion call takes the shim's records out of the table *before* the library may complete
// a request: once the library has freed a request, another thread's next call can be handed the
// same handle, and its record must not meet this one's (MPI_THREAD_MULTIPLE). Records of requests
// that did not complete go back (node handles: no allocation either way); no other thread can
// reuse a handle the library still holds.

// The record of r, out of the table (empty: not a request of the shim's).
ReqNode take_node(MPI_Request r) {
  if (g_staged_request_count.load(std::memory_order_relaxed) == 0 || r == MPI_REQUEST_NULL) return ReqNode();
  std::lock_guard<std::mutex> lk(g_requests_mu);
  ReqNode n = g_staged_requests.extract(r);
  if (n) g_staged_request_count--;
  return n;
}

// A record whose request did not complete goes back.
void put_back(ReqNode&& n) {
  if (!n) return;
  std::lock_guard<std::mutex> lk(g_requests_mu);
  g_staged_requests.insert(std::move(n));
  g_staged_request_count++;
}

bool ours(MPI_Request r) {
  if (g_staged_request_count.load(std::memory_order_relaxed) == 0 || r == MPI_REQUEST_NULL) return false;
  std::lock_guard<std::mutex> lk(g_requests_mu);
  return g_staged_requests.count(r) != 0;
}

// Unpacks what arrived (the byte count in the status) into the application's buffer, once; a
// pipelined message's header pulls the chunks (into the application's buffer: nothing to unpack).
int unpack_arrived(Pending& p, MPI_Status* status) {
  if (!p.recv || p.unpacked || (!p.buf && !p.watch)) return MPI_SUCCESS;  // no staging: a timed library-path receive
  p.unpacked = true;
  if (p.watch) {
    p.land.staged = p.buf;
    bool pulled = false;
    int rc = pipe_arrived(p.land, status, MPI_SUCCESS, &pulled);
    if (rc != MPI_SUCCESS) status->MPI_ERROR = rc;
    if (pulled || rc != MPI_SUCCESS) return rc;
  }
  if (!p.buf) return MPI_SUCCESS;
  int cancelled = 0, got = 0;
  PMPI_Test_cancelled(status, &cancelled);
  if (cancelled || PMPI_Get_count(status, MPI_BYTE, &got) != MPI_SUCCESS || got == MPI_UNDEFINED || got <= 0)
    return MPI_SUCCESS;
  int64_t n = std::min<int64_t>(got, p.plan->total);
  Timer tm;
  if (p.where == Where::host) {
    dt::unpack(*p.plan, p.origin, p.buf, 0, n);
  } else {
    if (!gpu_run(false, *p.plan, p.origin, p, n)) return MPI_SUCCESS;
    stats().gpu_unpacked++;
  }
  stats().bytes_unpacked += n;
  stats().unpacked_msgs++;
  return MPI_SUCCESS;
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

// Waitsome, and Testsome.
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

}  // namespace

void remember(MPI_Request r, Pending p) {
  Pending earlier;
  bool shared = false;
  {
    std::lock_guard<std::mutex> lk(g_requests_mu);
    auto [it, fresh] = g_staged_requests.try_emplace(r);
    if (fresh) g_staged_request_count++;
    else earlier = std::move(it->second), shared = true;
    it->second = std::move(p);
  }
  if (!shared) return;
  // No two live requests share a handle unless it is one the library gives to completed
  // requests (predefined_complete() knows MPICH's): the earlier one is finished. A send's staging
  // goes back; a receive's bytes cannot be unpacked without its status.
  if (earlier.recv && earlier.buf && !earlier.unpacked)
    logf(kError, "the library gave handle 0x%llx to two requests at once; an earlier receive of %zu packed bytes "
         "was not unpacked", handle_bits(r), earlier.bytes);
  release(earlier);
}

void orphan(MPI_Request r, Pending p) {
  remember(r, std::move(p));
  std::lock_guard<std::mutex> lk(g_requests_mu);
  g_freed_requests.push_back(r);
  g_freed_request_count = static_cast<int64_t>(g_freed_requests.size());
}

void release(Pending& p) {
  if (p.dup != MPI_DATATYPE_NULL) PMPI_Type_free(&p.dup);
  if (p.sel) {  // a trial message: it took until now
    if (pthread_equal(pthread_self(), p.thread)) record(*p.sel, p.path, now_ns() - p.t0_ns);
    else unrecord(*p.sel, p.path);
    p.sel = nullptr;
  }
  if (!p.buf) return;
  if (p.where == Where::host) buf_put(p.buf, p.bytes);
  else gpu_put(p.where, p.bytes, GpuBuf{p.buf, p.dev});
  p.buf = nullptr;
  g_staging_buffers_held.fetch_sub(1, std::memory_order_relaxed);
}

int finish(Pending& p, MPI_Status* status) {
  int rc = unpack_arrived(p, status);
  release(p);
  return rc;
}

void complete_freed_requests(bool block) {
  std::vector<MPI_Request> mine;
  {
    std::lock_guard<std::mutex> lk(g_requests_mu);
    if (g_freed_requests.empty()) return;
    mine.swap(g_freed_requests);
    g_freed_request_count = 0;
  }
  std::vector<MPI_Request> left;
  for (MPI_Request r : mine) {
    MPI_Request h = r;
    MPI_Status s;
    int flag = 0;
    ReqNode n = take_node(r);  // before the library may free r (see take_node)
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
  std::lock_guard<std::mutex> lk(g_requests_mu);
  g_freed_requests.insert(g_freed_requests.end(), left.begin(), left.end());
  g_freed_request_count = static_cast<int64_t>(g_freed_requests.size());
}

// One pass under the lock; per-thread storage, reused: every caller hands each record on
// (finish) or back (put_back).
std::vector<Mine>* take_staged_among(int n, const MPI_Request* reqs) {
  static thread_local std::vector<Mine> mine;
  mine.clear();
  std::lock_guard<std::mutex> lk(g_requests_mu);
  for (int i = 0; i < n; ++i) {
    if (reqs[i] == MPI_REQUEST_NULL) continue;
    ReqNode node = g_staged_requests.extract(reqs[i]);
    if (!node) continue;
    g_staged_request_count--;
    mine.push_back(Mine{i, std::move(node)});
  }
  return mine.empty() ? nullptr : &mine;
}

int wait_staged(MPI_Request* req, MPI_Status* status) {
  ReqNode n = take_node(*req);
  if (!n) return PMPI_Wait(req, status);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Wait(req, s);
  int prc = finish(n.mapped(), s);
  return rc == MPI_SUCCESS ? prc : rc;
}

int test_staged(MPI_Request* req, int* flag, MPI_Status* status) {
  ReqNode n = take_node(*req);
  if (!n) return PMPI_Test(req, flag, status);
  MPI_Status local;
  MPI_Status* s = status == MPI_STATUS_IGNORE ? &local : status;
  int rc = PMPI_Test(req, flag, s);
  int prc = MPI_SUCCESS;
  if (*flag) prc = finish(n.mapped(), s);
  else put_back(std::move(n));
  return rc == MPI_SUCCESS ? prc : rc;
}

int waitall_staged(int n, MPI_Request* reqs, MPI_Status* statuses, std::vector<Mine>& mine) {
  return all(n, nullptr, statuses, mine, [&](MPI_Status* s) { return PMPI_Waitall(n, reqs, s); });
}

int testall_staged(int n, MPI_Request* reqs, int* flag, MPI_Status* statuses, std::vector<Mine>& mine) {
  return all(n, flag, statuses, mine, [&](MPI_Status* s) { return PMPI_Testall(n, reqs, flag, s); });
}

int waitany_staged(int n, MPI_Request* reqs, int* index, MPI_Status* status, std::vector<Mine>& mine) {
  return any(index, nullptr, status, mine, [&](MPI_Status* s) { return PMPI_Waitany(n, reqs, index, s); });
}

int testany_staged(int n, MPI_Request* reqs, int* index, int* flag, MPI_Status* status, std::vector<Mine>& mine) {
  return any(index, flag, status, mine, [&](MPI_Status* s) { return PMPI_Testany(n, reqs, index, flag, s); });
}

int waitsome_staged(int n, MPI_Request* reqs, int* outcount, int* indices, MPI_Status* statuses,
                    std::vector<Mine>& mine) {
  return some(n, outcount, indices, statuses, mine,
              [&](MPI_Status* s) { return PMPI_Waitsome(n, reqs, outcount, indices, s); });
}

int testsome_staged(int n, MPI_Request* reqs, int* outcount, int* indices, MPI_Status* statuses,
                    std::vector<Mine>& mine) {
  return some(n, outcount, indices, statuses, mine,
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
    std::lock_guard<std::mutex> lk(g_requests_mu);
    auto it = g_staged_requests.find(req);
    if (it != g_staged_requests.end()) unpack_arrived(it->second, s);
  }
  return rc;
}

int request_free(MPI_Request* req) {
  MPI_Request r = *req;
  if (!ours(r)) return PMPI_Request_free(req);
  // The library must not free a request whose completion we still have to act on (unpack,
  // staging buffer): keep the real handle and complete it ourselves later.
  {
    std::lock_guard<std::mutex> lk(g_requests_mu);
    g_freed_requests.push_back(r);
    g_freed_request_count = static_cast<int64_t>(g_freed_requests.size());
  }
  *req = MPI_REQUEST_NULL;
  return MPI_SUCCESS;
}

}  // namespace shim
