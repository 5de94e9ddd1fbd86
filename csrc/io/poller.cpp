// The polled io_uring (poller.hpp). One mutex guards the ring's submission side, the CQ ring
// and the bookkeeping; a thread that must sleep for completions does so without it, and while
// it sleeps it is the only one that reaps (another thread reaping the completion it waits for
// would leave it asleep in the kernel).
#include "poller.hpp"

#include <cerrno>
#include <chrono>
#include <cstring>

#include "../common/status.hpp"
#include "io.hpp"

#ifdef HAULER_HAVE_LIBURING
#include <liburing.h>
#endif

namespace hauler::io {

#ifdef HAULER_HAVE_LIBURING
struct Poller::Ring {
  io_uring ring{};
};
#else
struct Poller::Ring {};
#endif

namespace {
std::string piece_text(const std::string& what, bool write, int64_t off, int64_t len) {
  return std::string(write ? "write" : "read") + " of " + what + " at offset " + std::to_string(off) + " (" +
         std::to_string(len) + " bytes)";
}
}  // namespace

bool Poller::usable() const { return gen_ == fork_generation(); }

#ifdef HAULER_HAVE_LIBURING

Poller::Poller(unsigned depth)
    : depth_(depth < 1 ? 1 : depth), task_size_(task_size()), gen_(fork_generation()) {
  unsigned entries = 1;
  while (entries < depth_) entries <<= 1;
  ring_ = std::make_unique<Ring>();
  // a plain ring: any thread may submit or reap (no SINGLE_ISSUER / DEFER_TASKRUN)
  int rc = io_uring_queue_init(entries, &ring_->ring, 0);
  if (rc < 0) {
    ring_.reset();
    fail(Status::io_error, "io_uring_queue_init(" + std::to_string(entries) + ") failed: " + errno_text(-rc));
  }
  slots_.resize(depth_);
  free_slots_.reserve(depth_);
  for (size_t i = depth_; i > 0; --i) free_slots_.push_back(i - 1);
}

Poller::~Poller() {
  if (!ring_) return;
  if (usable()) {
    std::unique_lock<std::mutex> l(m_);
    while (in_kernel_ > 0 || !pending_.empty()) {
      reap_locked();
      push_locked();
      if (in_kernel_ == 0) continue;
      io_uring_cqe* cqe = nullptr;
      l.unlock();
      int rc = io_uring_wait_cqe(&ring_->ring, &cqe);
      l.lock();
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN) break;  // nothing more can be done: the ring goes
    }
  }
  io_uring_queue_exit(&ring_->ring);
}

uint64_t Poller::submit(const std::vector<PollPiece>& pieces, const std::string& what) {
  if (!usable())
    fail(Status::io_error, "this io_uring poller was made by the parent process before fork(); a child "
                           "process needs its own");
  for (const PollPiece& p : pieces) {
    if (p.fd < 0 || p.len < 0 || p.off < 0 || (p.len > 0 && p.buf == nullptr))
      fail(Status::invalid_argument, "a piece of " + what + " has a bad descriptor, buffer, offset or size");
  }
  std::lock_guard<std::mutex> g(m_);
  if (broken_)
    fail(Status::io_error, "this io_uring poller cannot submit any more (io_uring_submit failed: " +
                               errno_text(broken_) + ")");
  uint64_t id = next_id_++;
  Request& r = reqs_[id];
  r.what = what;
  r.write = !pieces.empty() && pieces.front().write;
  queue_tasks_locked(id, pieces);
  push_locked();
  return id;
}

void Poller::queue_tasks_locked(uint64_t id, const std::vector<PollPiece>& pieces) {
  Request& r = reqs_[id];
  for (const PollPiece& p : pieces) {
    for (int64_t at = 0; at < p.len; at += task_size_) {
      Task t;
      t.req = id;
      t.p = p;
      t.p.buf = p.buf + at;
      t.p.off = p.off + at;
      t.p.len = std::min(task_size_, p.len - at);
      pending_.push_back(t);
      ++r.tasks_left;
    }
  }
}

void Poller::push_locked() {
  if (broken_) return;
  while (!pending_.empty() && !free_slots_.empty()) {
    Task t = pending_.front();
    pending_.pop_front();
    auto it = reqs_.find(t.req);
    if (it->second.err != 0 || it->second.eof) {  // the request failed already: skip the rest
      --it->second.tasks_left;
      continue;
    }
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_->ring);
    if (sqe == nullptr) {  // unsubmitted SQEs fill the ring: submit below, retry later
      pending_.push_front(t);
      break;
    }
    size_t slot = free_slots_.back();
    free_slots_.pop_back();
    slots_[slot] = t;
    uint8_t* p = t.p.buf + t.done;
    unsigned len = static_cast<unsigned>(t.p.len - t.done);
    uint64_t off = static_cast<uint64_t>(t.p.off + t.done);
    if (t.p.write) io_uring_prep_write(sqe, t.p.fd, p, len, off);
    else io_uring_prep_read(sqe, t.p.fd, p, len, off);
    io_uring_sqe_set_data64(sqe, static_cast<uint64_t>(slot));
    ++in_kernel_;
    unsubmitted_.push_back(slot);
  }
  while (!unsubmitted_.empty()) {
    int s = io_uring_submit(&ring_->ring);
    if (s == -EINTR) continue;
    if (s == -EAGAIN || s == -EBUSY) break;  // the kernel is short of room: the SQEs stay queued
    if (s < 0) {
      break_locked(-s);
      return;
    }
    unsubmitted_.erase(unsubmitted_.begin(), unsubmitted_.begin() + std::min<size_t>(unsubmitted_.size(), s));
    if (s == 0) break;
  }
}

// io_uring_submit failed for good: SQEs cannot be taken back from the ring, so it is never
// submitted to again. Tasks not in the kernel fail now; those in it finish as usual.
void Poller::break_locked(int err) {
  broken_ = err;
  auto fail_task = [&](const Task& t) {
    Request& r = reqs_.at(t.req);
    if (r.err == 0 && !r.eof) {
      r.err = err;
      r.err_off = t.p.off + t.done;
      r.err_len = t.p.len - t.done;
    }
    --r.tasks_left;
  };
  for (size_t slot : unsubmitted_) {
    fail_task(slots_[slot]);
    --in_kernel_;  // never went in; its slot stays taken
  }
  unsubmitted_.clear();
  for (const Task& t : pending_) fail_task(t);
  pending_.clear();
  cv_.notify_all();
}

void Poller::complete_task_locked(size_t slot, int res) {
  Task& t = slots_[slot];
  Request& r = reqs_.at(t.req);
  bool again = false;
  if (res == -EAGAIN || res == -EINTR) {
    again = true;
  } else if (res < 0) {
    if (r.err == 0 && !r.eof) {
      r.err = -res;
      r.err_off = t.p.off + t.done;
      r.err_len = t.p.len - t.done;
    }
  } else if (res == 0) {
    if (!t.p.write) {
      r.eof = true;
      r.err_off = t.p.off + t.done;
      r.err_len = t.p.len - t.done;
    } else if (r.err == 0) {
      r.err = EIO;  // a write that moves nothing
      r.err_off = t.p.off + t.done;
      r.err_len = t.p.len - t.done;
    }
  } else {
    t.done += res;
    r.bytes += res;
    if (t.done < t.p.len) {
      if (!t.p.write) {  // a short read of a regular file: its end (the rest is not there)
        r.eof = true;
        r.err_off = t.p.off + t.done;
        r.err_len = t.p.len - t.done;
      } else {
        again = true;  // the rest of a short write
      }
    }
  }
  --in_kernel_;
  if (again && r.err == 0 && !r.eof) {
    pending_.push_front(t);
  } else {
    --r.tasks_left;
  }
  free_slots_.push_back(slot);
}

void Poller::reap_locked() {
  unsigned head;
  unsigned seen = 0;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(&ring_->ring, head, cqe) {
    ++seen;
    complete_task_locked(static_cast<size_t>(io_uring_cqe_get_data64(cqe)), cqe->res);
  }
  if (seen) io_uring_cq_advance(&ring_->ring, seen);
}

bool Poller::finished_locked(uint64_t id) const {
  auto it = reqs_.find(id);
  return it == reqs_.end() || it->second.tasks_left == 0;  // unknown: taken already (over)
}

size_t Poller::poll() {
  std::lock_guard<std::mutex> g(m_);
  if (!sleeping_ && usable()) {
    reap_locked();
    push_locked();
  }
  size_t n = 0;
  for (const auto& kv : reqs_) n += kv.second.tasks_left > 0;
  return n;
}

bool Poller::done(uint64_t id) {
  std::lock_guard<std::mutex> g(m_);
  if (!sleeping_ && usable()) {
    reap_locked();
    push_locked();
  }
  return finished_locked(id);
}

bool Poller::wait(uint64_t id, double timeout_s) {
  using clock = std::chrono::steady_clock;
  if (!usable())
    fail(Status::io_error, "this io_uring poller was made by the parent process before fork(); its requests "
                           "run only there");
  auto deadline = clock::now() + std::chrono::duration_cast<clock::duration>(
                                     std::chrono::duration<double>(timeout_s < 0 ? 0 : timeout_s));
  std::unique_lock<std::mutex> l(m_);
  while (true) {
    if (!sleeping_) {
      reap_locked();
      push_locked();
    }
    if (finished_locked(id)) return true;
    if (timeout_s >= 0 && clock::now() >= deadline) return false;
    if (sleeping_) {  // another thread sleeps in the kernel and reaps for everyone
      if (timeout_s < 0) cv_.wait(l);
      else cv_.wait_until(l, deadline);
      continue;
    }
    sleeping_ = true;
    bool retry = !unsubmitted_.empty();
    l.unlock();
    io_uring_cqe* cqe = nullptr;
    int rc;
    if (timeout_s < 0 && !retry) {
      rc = io_uring_wait_cqe(&ring_->ring, &cqe);
    } else {
      // SQEs the kernel had no room for (EAGAIN/EBUSY) are retried after at most a millisecond
      auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - clock::now()).count();
      if (timeout_s < 0 || (retry && left > 1000000)) left = 1000000;
      if (left < 0) left = 0;
      __kernel_timespec ts{left / 1000000000, left % 1000000000};
      rc = io_uring_wait_cqe_timeout(&ring_->ring, &cqe, &ts);
    }
    l.lock();
    sleeping_ = false;
    reap_locked();
    push_locked();
    cv_.notify_all();
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN)
      fail(Status::io_error, "io_uring_wait_cqe failed: " + errno_text(-rc));
  }
}

int64_t Poller::take(uint64_t id) {
  wait(id, -1);
  std::lock_guard<std::mutex> g(m_);
  auto it = reqs_.find(id);
  if (it == reqs_.end())
    fail(Status::invalid_argument, "no request " + std::to_string(id) + " on this poller (taken already?)");
  Request r = std::move(it->second);
  reqs_.erase(it);
  if (r.err != 0)
    fail(Status::io_error, piece_text(r.what, r.write, r.err_off, r.err_len) + " failed: " + errno_text(r.err));
  if (r.eof)
    fail(Status::out_of_range, piece_text(r.what, r.write, r.err_off, r.err_len) +
                                   " met the end of the file (short read: truncated underneath?)");
  return r.bytes;
}

#else  // no liburing at build time

Poller::Poller(unsigned depth) : depth_(depth), task_size_(0), gen_(fork_generation()) {
  fail(Status::io_error, "built without liburing: no io_uring poller");
}
Poller::~Poller() = default;
uint64_t Poller::submit(const std::vector<PollPiece>&, const std::string&) { return 0; }
void Poller::queue_tasks_locked(uint64_t, const std::vector<PollPiece>&) {}
void Poller::push_locked() {}
void Poller::break_locked(int) {}
void Poller::reap_locked() {}
void Poller::complete_task_locked(size_t, int) {}
bool Poller::finished_locked(uint64_t) const { return true; }
size_t Poller::poll() { return 0; }
bool Poller::done(uint64_t) { return true; }
bool Poller::wait(uint64_t, double) { return true; }
int64_t Poller::take(uint64_t) { return 0; }

#endif

}  // namespace hauler::io
