// The io_uring backend (liburing): one ring per request thread, sized to the
// queue depth; no SQPOLL (it burns a core). Short transfers are resubmitted
// for the rest; EAGAIN/EINTR are retried. Built only when liburing is present
// (setup.py defines HAULER_HAVE_LIBURING and links -luring); otherwise its
// probe says so and the thread-pool backend runs.
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "io.hpp"

#ifdef HAULER_HAVE_LIBURING
#include <liburing.h>
#endif

namespace hauler::io {

#ifdef HAULER_HAVE_LIBURING
namespace {

struct Ring {
  io_uring ring{};
  unsigned depth = 0;
  bool ok = false;
  ~Ring() {
    if (ok) io_uring_queue_exit(&ring);
  }
  int init(unsigned d) {
    if (ok && depth >= d) return 0;
    if (ok) {
      io_uring_queue_exit(&ring);
      ok = false;
    }
    int rc = io_uring_queue_init(d, &ring, 0);
    if (rc < 0) return rc;
    ok = true;
    depth = d;
    return 0;
  }
};

thread_local Ring t_ring;

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

void prep(io_uring_sqe* sqe, Task* t, size_t i) {
  if (t->op == Op::read)
    io_uring_prep_read(sqe, t->fd, t->buf + t->done, static_cast<unsigned>(t->len - t->done),
                       static_cast<uint64_t>(t->off + t->done));
  else
    io_uring_prep_write(sqe, t->fd, t->buf + t->done, static_cast<unsigned>(t->len - t->done),
                        static_cast<uint64_t>(t->off + t->done));
  io_uring_sqe_set_data64(sqe, static_cast<uint64_t>(i));
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
      prep(sqe, t, next);
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
    io_uring_cqe* cqe = nullptr;
    int w = io_uring_wait_cqe(ring, &cqe);
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
      prep(sqe, tasks[i], i);
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
