// hauler's file I/O engine: a move-only RAII file handle opened with O_DIRECT
// where the file system allows it (else buffered, and the handle says so),
// requests split into tasks run with many in flight by a backend (io_uring or
// a pread/pwrite thread pool, plugged in through a table of function
// pointers), unaligned buffers/offsets/sizes through pooled aligned bounce
// buffers with read-modify-write of partial edge blocks on writes, and
// futures for asynchronous calls.
//
// Errors: hauler::Error with io_error (errno text, path, offset, size),
// out_of_range (reads past the end of the file, short reads when the file
// shrinks underneath), invalid_argument / read_only (bad mode, bad call).
// A request either transfers every byte it was asked to or throws: a partial
// result is never reported as whole.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <sys/uio.h>

#include "../common/status.hpp"

namespace hauler::io {

enum class Op : int { read = 0, write = 1 };

// One system-call-sized piece of a request.
struct Task {
  Op op = Op::read;
  int fd = -1;
  uint8_t* buf = nullptr;
  int64_t len = 0;
  int64_t off = 0;
  int64_t done = 0;  // bytes transferred so far
  int err = 0;       // errno of the first failure, 0 if none
  bool eof = false;  // a read hit the end of the file before len bytes
  int buf_index = -1;  // buf lies in bounce_arena_iovecs()[buf_index] (io_uring may use fixed ops)
};

// The work a backend runs: n tasks, prepared lazily (prepare may return
// nullptr to stop submitting: an earlier task failed) and completed once each.
struct Batch {
  virtual ~Batch() = default;
  virtual Task* prepare(size_t i) = 0;   // called once per i, in order, before submission
  virtual void complete(size_t i) = 0;   // called once per prepared task when it finished
};

// A backend: a table of function pointers (the Yaksa habit).
struct BackendOps {
  const char* name;                         // "io_uring" or "threads"
  bool (*probe)(std::string* why);          // usable here? (io_uring_queue_init may fail)
  // Runs tasks 0..n-1 with at most qd in flight; returns when every prepared
  // task has completed. Each task ends with done == len, err != 0 or eof.
  void (*run)(Batch& batch, size_t n, int qd);
};

// Incremented in each forked child (pthread_atfork, installed on first call):
// per-process engine state (thread pools, io_uring rings) remembers the value it
// was made under and is rebuilt when it differs. The first call must happen
// before the state it guards is made; every such state calls it when made.
uint64_t fork_generation();
int current_pid();  // getpid(), without <unistd.h> in this header

const BackendOps& uring_backend();    // probe() false when built without liburing
const BackendOps& threads_backend();

// The backend in use: HAULER_IO_BACKEND (auto | io_uring | threads); auto =
// io_uring when its probe succeeds, else threads. Throws invalid_argument for
// an unknown name or a forced io_uring that cannot run (with the reason).
const BackendOps& backend();
// "io_uring" / "threads (fallback: <why io_uring is unavailable>)" / "threads (forced)".
std::string backend_description();
bool backend_is_fallback();

// strerror text with the errno name, e.g. "Input/output error (EIO)".
std::string errno_text(int e);

// io_uring registration (backend_uring.cpp). What it did, in words: "off (...)", or the bounce
// arena's and the files' state, "FALLBACK: ... NOT registered: <why>" when a registration failed.
std::string registration_description();
bool registration_failed();
struct IoCounters {
  int64_t ops;               // io_uring operations submitted
  int64_t fixed_buffer_ops;  // of them read_fixed/write_fixed on the registered bounce arena
  int64_t fixed_file_ops;    // of them on a registered file (IOSQE_FIXED_FILE)
  int64_t waits;             // times a thread slept for completions (io_uring_wait_cqe_nr)
};
IoCounters io_counters();
// Bytes moved through bounce buffers (whole aligned blocks), any backend, process-wide.
int64_t bounced_bytes();

// Settings read by the engine (runtime/config.py holds the table).
int queue_depth();          // HAULER_IO_QUEUE_DEPTH
int64_t task_size();        // HAULER_IO_TASK_SIZE
int64_t bounce_pool_bytes();// HAULER_IO_BOUNCE_POOL
int io_threads();           // HAULER_IO_THREADS
int request_threads();      // HAULER_IO_REQUESTS
int direct_mode();          // HAULER_IO_DIRECT: 0 never, 1 where allowed
int register_mode();        // HAULER_IO_REGISTER: 0 plain ops, 1 registered buffers and files

// Aligned bounce buffers from a process-wide arena of HAULER_IO_BOUNCE_POOL
// bytes (made at first use; io_uring registers it, see reg_index), or a plain
// aligned allocation when the arena cannot fit one at the moment.
class BounceBuffer {
 public:
  BounceBuffer() = default;
  explicit BounceBuffer(int64_t size);
  ~BounceBuffer();
  BounceBuffer(BounceBuffer&& o) noexcept : p_(o.p_), cap_(o.cap_), reg_(o.reg_), in_arena_(o.in_arena_) {
    o.p_ = nullptr;
    o.cap_ = 0;
    o.reg_ = -1;
    o.in_arena_ = false;
  }
  BounceBuffer& operator=(BounceBuffer&& o) noexcept;
  BounceBuffer(const BounceBuffer&) = delete;
  BounceBuffer& operator=(const BounceBuffer&) = delete;
  uint8_t* data() const { return p_; }
  int64_t capacity() const { return cap_; }
  // Index into bounce_arena_iovecs() of the piece holding this buffer; -1 when not in the arena.
  int reg_index() const { return reg_; }

 private:
  void release();
  uint8_t* p_ = nullptr;
  int64_t cap_ = 0;
  int reg_ = -1;
  bool in_arena_ = false;
};
// The arena as io_uring_register_buffers wants it (pieces of at most 1 GiB); empty when
// HAULER_IO_BOUNCE_POOL was 0 at first use.
std::vector<iovec> bounce_arena_iovecs();

constexpr int64_t kAlign = 4096;  // memory, offset and size alignment for O_DIRECT

struct FileState;  // the fd(s) and bookkeeping, shared with in-flight requests

// Move-only RAII handle.
class File {
 public:
  // mode: "r", "r+", "w" (create/truncate), "w+", "x" (create, fail if it
  // exists). direct: -1 = HAULER_IO_DIRECT (O_DIRECT where allowed), 0 = never,
  // 1 = required (invalid_argument... io_error if the file system refuses).
  File(const std::string& path, const std::string& mode, int direct = -1);
  File() = default;
  ~File();
  File(File&&) noexcept = default;
  File& operator=(File&&) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  bool is_open() const;
  bool direct() const;               // O_DIRECT in use
  std::string direct_reason() const; // why not, when not
  const std::string& path() const;
  std::string mode() const;
  int64_t size() const;              // fstat
  int fd() const;
  void close();                      // waits for submitted futures and requests in flight; idempotent

  // Blocking calls: every byte or an exception.
  int64_t read(void* buf, int64_t len, int64_t off) const;
  int64_t write(const void* buf, int64_t len, int64_t off) const;
  void sync(bool data_only = false) const;
  void truncate(int64_t size) const;

  std::shared_ptr<FileState> state() const { return st_; }

 private:
  std::shared_ptr<FileState> st_;
};

// The descriptor behind a state (-1 when closed).
int state_fd(const std::shared_ptr<FileState>& st);

// Runs one request on the calling thread (what futures run on a request thread).
int64_t execute(const std::shared_ptr<FileState>& st, Op op, uint8_t* buf, int64_t len, int64_t off);

// One piece of a scattered request: len bytes of memory at buf <-> the file at off.
struct Segment {
  uint8_t* buf;
  int64_t off;
  int64_t len;
};
// Runs many pieces as one request (all their tasks share the queue depth); overlapping write
// pieces land in an unspecified order. Returns the bytes moved; every byte or an exception.
int64_t execute_segments(const std::shared_ptr<FileState>& st, Op op, const std::vector<Segment>& segs);

// A request's future.
class Future {
 public:
  enum State : int { queued = 0, running = 1, finished = 2, was_cancelled = 3 };
  // Waits up to timeout_s (< 0: forever); true when finished or cancelled.
  bool wait(double timeout_s) const;
  bool done() const;
  // Cancels a request that has not started; true if it will never run.
  bool cancel();
  bool cancelled() const;
  // Bytes transferred; rethrows the request's error. Waits.
  int64_t get() const;
  State state() const;

 private:
  friend std::shared_ptr<Future> submit(const std::shared_ptr<FileState>&, Op, uint8_t*, int64_t, int64_t,
                                        std::function<void()>);
  mutable std::mutex m_;
  mutable std::condition_variable cv_;
  State state_ = queued;
  const uint64_t gen_ = fork_generation();  // the process that submitted it (see orphaned)
  const int pid_ = current_pid();
  bool orphaned() const;                    // under m_
  int64_t bytes_ = 0;
  std::exception_ptr err_;
  std::function<void()> on_done_;  // runs (no lock held) when the request finished or was cancelled
  void finish(int64_t bytes, std::exception_ptr err, State s);
  friend void run_future(const std::shared_ptr<Future>&, const std::shared_ptr<FileState>&, Op, uint8_t*,
                         int64_t, int64_t);
};

// Queues a request on the request threads. `on_done` (optional) runs once
// the request has finished or was cancelled, on the thread that finished it.
std::shared_ptr<Future> submit(const std::shared_ptr<FileState>& st, Op op, uint8_t* buf, int64_t len,
                               int64_t off, std::function<void()> on_done = {});

// cuFile / device buffers (csrc/io/cufile.cpp): loaded at run time.
// "available: ..." / "not available: <why>".
std::string cufile_status();
bool cufile_available();
// Device-buffer I/O: cuFile when available, else through a host bounce buffer
// copied with the CUDA driver. Throws no_device without a GPU.
int64_t device_read(const std::shared_ptr<FileState>& st, uint64_t dev_ptr, int64_t len, int64_t off);
int64_t device_write(const std::shared_ptr<FileState>& st, uint64_t dev_ptr, int64_t len, int64_t off);

}  // namespace hauler::io
