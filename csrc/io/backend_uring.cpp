// The io_uring backend (liburing): one ring per thread that runs requests,
// sized to the queue depth; no SQPOLL (it burns a core). Short transfers are
// resubmitted for the rest; EAGAIN/EINTR are retried. Built only when liburing
// is present (setup.py defines HAULER_HAVE_LIBURING and links -luring);
// otherwise its probe says so and the thread-pool backend runs.
//
// Registration (HAULER_IO_REGISTER): each ring registers the bounce arena
// (io_uring_register_buffers) the first time it runs a bounced task, which then
// runs as read_fixed/write_fixed (no per-op page pinning), and a one-slot sparse
// file table that holds the request's descriptor for requests of many tasks
// (IOSQE_FIXED_FILE: no per-op file lookup). A registration that fails
// (RLIMIT_MEMLOCK, ENOMEM, an old kernel) leaves the plain ops running and is
// reported by registration_description(), never silently.
//
// Fork: a ring made before fork() is the parent's (shared memory and fd); a
// child abandons its copy and makes its own ring on first use.
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "io.hpp"

#ifdef HAULER_HAVE_LIBURING
#include <liburing.h>
#endif

namespace hauler::io {

namespace {
// What registration did, process-wide (the description and counters read it).
struct RegState {
  std::mutex m;
  int buffers = 0;  // 0 not tried yet, 1 registered (by some ring), -1 failed
  int files = 0;
  std::string buffers_why, files_why;
  int64_t arena_bytes = 0;
  std::atomic<int64_t> ops{0}, fixed_buffer_ops{0}, fixed_file_ops{0}, waits{0};
};
RegState& reg() {
  static RegState* r = new RegState;  // never destroyed: rings may run during static teardown
  return *r;
}
void note(int RegState::*which, std::string RegState::*why, int rc, const std::string& what) {
  RegState& r = reg();
  std::lock_guard<std::mutex> g(r.m);
  if (rc >= 0) {
    if (r.*which == 0) r.*which = 1;
    return;
  }
  r.*which = -1;
  r.*why = what + " failed: " + errno_text(-rc);
  if (-rc == ENOMEM) r.*why += " (RLIMIT_MEMLOCK too small for the bounce arena? see ulimit -l)";
}
}  // namespace

IoCounters io_counters() {
  RegState& r = reg();
  return {r.ops.load(), r.fixed_buffer_ops.load(), r.fixed_file_ops.load(), r.waits.load()};
}

std::string registration_description() {
  if (!register_mode()) return "off (HAULER_IO_REGISTER=0)";
  RegState& r = reg();
  std::lock_guard<std::mutex> g(r.m);
  std::string b = r.buffers == 1    ? "bounce arena registered (" + std::to_string(r.arena_bytes >> 20) + " MiB)"
                  : r.buffers == 0 ? "bounce arena not yet registered (at the first bounced request)"
                                   : "FALLBACK: bounce arena NOT registered: " + r.buffers_why;
  std::string f = r.files == 1    ? "file registered per request"
                  : r.files == 0 ? "files not yet registered (at the first request of many tasks)"
                                 : "FALLBACK: files NOT registered: " + r.files_why;
  return b + "; " + f;
}

bool registration_failed() {
  if (!register_mode()) return false;
  RegState& r = reg();
  std::lock_guard<std::mutex> g(r.m);
  return r.buffers < 0 || r.files < 0;
}

#ifdef HAULER_HAVE_LIBURING
namespace {

// Two register calls per request (set and clear the slot) pay off only over several ops.
constexpr size_t kFixedFileMinTasks = 8;

struct Ring {
  io_uring ring{};
  unsigned depth = 0;
  bool ok = false;
  uint64_t gen = 0;
  int buffers = 0;  // this ring: 0 not tried, 1 registered, -1 failed
  int files = 0;
  ~Ring() { drop(); }
  void drop() {
    if (ok) io_uring_queue_exit(&ring);  // in a child: only the child's copies of the parent's ring go
    ok = false;
  }
  int init(unsigned d) {
    if (ok && gen != fork_generation()) drop();
    if (ok && depth >= d) return 0;
    drop();
    int rc = io_uring_queue_init(d, &ring, 0);
    if (rc < 0) return rc;
    ok = true;
    depth = d;
    gen = fork_generation();
    buffers = files = 0;
    return 0;
  }
  bool buffers_registered() {
    if (buffers == 0) {
      std::vector<iovec> iov = bounce_arena_iovecs();
      int rc = iov.empty() ? -EINVAL : io_uring_register_buffers(&ring, iov.data(), static_cast<unsigned>(iov.size()));
      buffers = rc < 0 ? -1 : 1;
      int64_t bytes = 0;
      for (const iovec& v : iov) bytes += static_cast<int64_t>(v.iov_len);
      note(&RegState::buffers, &RegState::buffers_why, rc,
           "io_uring_register_buffers of the " + std::to_string(bytes) + "-byte bounce arena");
      if (rc >= 0) {
        std::lock_guard<std::mutex> g(reg().m);
        reg().arena_bytes = bytes;
      }
    }
    return buffers == 1;
  }
  bool file_table() {
    if (files == 0) {
      int rc = io_uring_register_files_sparse(&ring, 1);
      files = rc < 0 ? -1 : 1;
      if (rc < 0) note(&RegState::files, &RegState::files_why, rc, "io_uring_register_files_sparse");
    }
    return files == 1;
  }
};

thread_local Ring t_ring;

// Holds the request's descriptor in slot 0 of the ring's file table while the request runs;
// clears it after (a kept slot would keep a closed file open in the kernel).
class FixedFile {
 public:
  explicit FixedFile(Ring& r) : r_(r) {}
  ~FixedFile() {
    if (fd_ < 0) return;
    int none = -1;
    io_uring_register_files_update(&r_.ring, 0, &none, 1);
  }
  // Slot 0 for tasks on fd once it is registered, else fd itself (and sets *fixed).
  int slot(int fd, bool want, bool* fixed) {
    if (want && fd_ < 0 && !tried_) {
      tried_ = true;
      if (r_.file_table()) {
        int rc = io_uring_register_files_update(&r_.ring, 0, &fd, 1);
        note(&RegState::files, &RegState::files_why, rc < 0 ? rc : 0, "io_uring_register_files_update");
        if (rc == 1) fd_ = fd;
      }
    }
    *fixed = fd_ >= 0 && fd == fd_;
    return *fixed ? 0 : fd;
  }

 private:
  Ring& r_;
  int fd_ = -1;
  bool tried_ = false;
};

bool uring_probe(std::string* why) {
  io_uring r;
  int rc = io_uring_queue_init(4, &r, 0);
  if (rc < 0) {
    if (why) *why = std::string("io_uring_queue_init failed: ") + std::strerror(-rc);
    return false;
  }
  io_uring_queue_exit(&r);
  return true;
}

void prep(io_uring_sqe* sqe, Task* t, size_t i, Ring& ring, FixedFile& ff, bool want_files, bool want_buffers) {
  bool fixed_file = false;
  int fd = ff.slot(t->fd, want_files, &fixed_file);
  bool fixed_buf = want_buffers && t->buf_index >= 0 && ring.buffers_registered();
  uint8_t* p = t->buf + t->done;
  unsigned len = static_cast<unsigned>(t->len - t->done);
  uint64_t off = static_cast<uint64_t>(t->off + t->done);
  if (t->op == Op::read) {
    if (fixed_buf) io_uring_prep_read_fixed(sqe, fd, p, len, off, t->buf_index);
    else io_uring_prep_read(sqe, fd, p, len, off);
  } else {
    if (fixed_buf) io_uring_prep_write_fixed(sqe, fd, p, len, off, t->buf_index);
    else io_uring_prep_write(sqe, fd, p, len, off);
  }
  if (fixed_file) io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE);
  io_uring_sqe_set_data64(sqe, static_cast<uint64_t>(i));
  RegState& r = reg();
  r.ops.fetch_add(1, std::memory_order_relaxed);
  if (fixed_buf) r.fixed_buffer_ops.fetch_add(1, std::memory_order_relaxed);
  if (fixed_file) r.fixed_file_ops.fetch_add(1, std::memory_order_relaxed);
}

void uring_run(Batch& batch, size_t n, int qd) {
  if (n == 0) return;
  unsigned depth = static_cast<unsigned>(qd < 1 ? 1 : qd);
  if (depth > n) depth = static_cast<unsigned>(n);
  unsigned ring_depth = 1;
  while (ring_depth < depth) ring_depth <<= 1;
  int rc = t_ring.init(ring_depth);
  if (rc < 0) fail(Status::io_error, std::string("io_uring_queue_init failed: ") + std::strerror(-rc));
  io_uring* ring = &t_ring.ring;
  bool want_reg = register_mode() != 0;
  bool want_files = want_reg && n >= kFixedFileMinTasks;
  FixedFile ff(t_ring);
  std::vector<Task*> tasks(n, nullptr);
  size_t next = 0;
  unsigned inflight = 0;
  bool stop = false;
  std::exception_ptr err;
  while (true) {
    // fill the queue
    unsigned queued = 0;
    while (!stop && next < n && inflight + queued < depth) {
      Task* t = nullptr;
      try {
        t = batch.prepare(next);
      } catch (...) {
        err = std::current_exception();
      }
      if (t == nullptr) {
        stop = true;
        break;
      }
      tasks[next] = t;
      io_uring_sqe* sqe = io_uring_get_sqe(ring);
      prep(sqe, t, next, t_ring, ff, want_files, want_reg);
      ++next;
      ++queued;
    }
    if (queued) {
      int s;
      do {
        s = io_uring_submit(ring);
      } while (s == -EINTR);
      if (s < 0) {
        // cannot submit: fail every queued task, drain what is in flight
        for (size_t i = next - queued; i < next; ++i) {
          tasks[i]->err = -s;
          batch.complete(i);
        }
        stop = true;
      } else {
        inflight += queued;
      }
    }
    if (inflight == 0) break;
    // Nothing left to queue: sleep until every task in flight is done (one wake-up per request,
    // not one per task: each wake-up preempts whatever computes on that core, and a preempted
    // thread of a parallel region stalls its siblings). Otherwise wake per completion to refill.
    unsigned wait_nr = (stop || next >= n) ? inflight : 1;
    io_uring_cqe* cqe = nullptr;
    reg().waits.fetch_add(1, std::memory_order_relaxed);
    int w = io_uring_wait_cqe_nr(ring, &cqe, wait_nr);
    if (w == -EINTR) continue;
    if (w < 0) fail(Status::io_error, std::string("io_uring_wait_cqe failed: ") + std::strerror(-w));
    // reap every ready completion
    unsigned head;
    unsigned seen = 0;
    std::vector<size_t> resubmit;
    io_uring_for_each_cqe(ring, head, cqe) {
      ++seen;
      size_t i = static_cast<size_t>(io_uring_cqe_get_data64(cqe));
      Task* t = tasks[i];
      int res = cqe->res;
      --inflight;
      if (res == -EAGAIN || res == -EINTR) {
        resubmit.push_back(i);
        continue;
      }
      if (res < 0) {
        t->err = -res;
      } else if (res == 0) {
        if (t->op == Op::read) t->eof = true;
        else t->err = EIO;  // a write that moves nothing
      } else {
        t->done += res;
        if (t->done < t->len) {
          resubmit.push_back(i);
          continue;
        }
      }
      batch.complete(i);
    }
    io_uring_cq_advance(ring, seen);
    for (size_t i : resubmit) {
      io_uring_sqe* sqe = io_uring_get_sqe(ring);
      prep(sqe, tasks[i], i, t_ring, ff, want_files, want_reg);
      ++inflight;
    }
    if (!resubmit.empty()) {
      int s;
      do {
        s = io_uring_submit(ring);
      } while (s == -EINTR);
      if (s < 0) fail(Status::io_error, std::string("io_uring_submit failed: ") + std::strerror(-s));
    }
  }
  if (err) std::rethrow_exception(err);
}

}  // namespace

const BackendOps& uring_backend() {
  static const BackendOps ops{"io_uring", uring_probe, uring_run};
  return ops;
}

#else  // no liburing at build time

namespace {
bool uring_probe(std::string* why) {
  if (why) *why = "hauler was built without liburing (install liburing-dev and rebuild)";
  return false;
}
void uring_run(Batch&, size_t, int) {
  fail(Status::invalid_argument, "hauler was built without liburing");
}
}  // namespace

const BackendOps& uring_backend() {
  static const BackendOps ops{"io_uring", uring_probe, uring_run};
  return ops;
}

#endif

}  // namespace hauler::io
