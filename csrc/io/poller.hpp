// A polled io_uring: requests are submitted by the calling thread and their completions are
// reaped by whichever caller polls or waits next. No thread of hauler's runs or wakes for them.
//
// Why: on a machine whose cores all compute (activation offload on CPU, a data loader beside a
// training step), every hand-over to an I/O thread wakes it, and each wake-up preempts a
// computing thread; a preempted thread of a parallel region stalls its siblings at the next
// barrier. The kernel starts an O_DIRECT transfer inline in io_uring_enter, so the submitting
// thread pays only for that call, and completions wait in the ring until someone asks.
//
// Pieces must be whole O_DIRECT blocks when the descriptor is O_DIRECT (the caller bounces
// edges); a piece is split into tasks of at most task_size() bytes; up to `depth` tasks are in
// the kernel, the rest queue here and go in as earlier ones are reaped. A request either moves
// every byte or its take() throws: a read that meets the end of the file throws out_of_range,
// any other failure io_error naming the request, errno, offset and size.
//
// Not fork-safe: a Poller belongs to the process that made it (usable() is false in a child).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace hauler::io {

struct PollPiece {
  bool write = false;
  int fd = -1;
  uint8_t* buf = nullptr;
  int64_t len = 0;
  int64_t off = 0;
};

class Poller {
 public:
  // depth: tasks in the kernel at once (>= 1). Throws io_error when io_uring cannot run here.
  explicit Poller(unsigned depth);
  ~Poller();  // waits for every request in flight (their buffers are the caller's)
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;

  // Starts a request of `pieces`; `what` names it in errors. Returns its id.
  uint64_t submit(const std::vector<PollPiece>& pieces, const std::string& what);
  // True when request `id` has finished or was taken (reaps what is ready; never sleeps).
  bool done(uint64_t id);
  // Waits up to timeout_s (< 0: forever) for request `id`; true when it finished.
  bool wait(uint64_t id, double timeout_s);
  // Bytes moved by a finished request, or its error (thrown); the id is forgotten either way.
  // Waits when it has not finished.
  int64_t take(uint64_t id);
  // Reaps whatever is ready (never sleeps); the number of requests still unfinished.
  size_t poll();
  bool usable() const;  // false in a forked child

 private:
  struct Request {
    std::string what;
    int64_t bytes = 0;
    size_t tasks_left = 0;
    int err = 0;
    int64_t err_off = 0, err_len = 0;
    bool eof = false;
    bool write = false;
  };
  struct Task {
    uint64_t req = 0;
    PollPiece p;
    int64_t done = 0;
  };
  struct Ring;
  void queue_tasks_locked(uint64_t id, const std::vector<PollPiece>& pieces);
  void push_locked();                 // pending tasks into free slots, then io_uring_submit
  void reap_locked();                 // every ready CQE
  void break_locked(int err);         // io_uring_submit failed for good
  void complete_task_locked(size_t slot, int res);
  bool finished_locked(uint64_t id) const;

  std::unique_ptr<Ring> ring_;
  unsigned depth_;
  int64_t task_size_;
  uint64_t gen_;
  std::mutex m_;
  std::condition_variable cv_;
  bool sleeping_ = false;             // a thread waits in the kernel for completions
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Request> reqs_;
  std::vector<Task> slots_;           // index = the SQE's user data
  std::vector<size_t> free_slots_;
  std::deque<Task> pending_;          // not yet in the kernel
  unsigned in_kernel_ = 0;
  std::vector<size_t> unsubmitted_;   // slots of SQEs prepared but not yet submitted
  int broken_ = 0;                    // errno of a failed io_uring_submit: no more submissions
};

}  // namespace hauler::io
