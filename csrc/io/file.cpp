// The file handle, request execution (split into tasks, aligned or through
// bounce buffers, read-modify-write of partial edge blocks) and futures.
#include <atomic>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cerrno>
#include <cstring>
#include <deque>
#include <new>
#include <set>
#include <thread>
#include <vector>

#include "../common/checked.hpp"
#include "fork.hpp"
#include "io.hpp"
#include "task_threads.hpp"

namespace hauler::io {

struct FileState {
  std::string path;
  std::string mode;
  int fd = -1;
  bool direct = false;
  bool readable = false;
  bool writable = false;
  std::string direct_reason;
  std::mutex m;
  std::condition_variable cv;
  int inflight = 0;  // requests executing
  int queued = 0;    // futures submitted and not yet finished (close waits for them)
  bool closed = false;

  FileState();
  ~FileState();
  void close() {
    std::unique_lock<std::mutex> l(m);
    cv.wait(l, [this] { return queued == 0; });  // submitted futures run first
    closed = true;
    cv.wait(l, [this] { return inflight == 0; });
    if (fd >= 0) {
      ::close(fd);
      fd = -1;
    }
  }
};

// Fork: every live FileState's mutex is held across fork() (a child never
// inherits one locked), and in the child its counts of requests drop to zero:
// the parent's requests do not run there, so close() must not wait for them.
namespace {
struct Registry {
  std::mutex m;
  std::set<FileState*> all;
};
void files_prepare(Registry& r) {
  r.m.lock();
  for (FileState* st : r.all) st->m.lock();
}
void files_parent(Registry& r) {
  for (FileState* st : r.all) st->m.unlock();
  r.m.unlock();
}
void files_child(Registry& r) {
  for (FileState* st : r.all) {
    st->inflight = 0;
    st->queued = 0;
    new (&st->cv) std::condition_variable();  // the parent's waiters never leave it
    st->m.unlock();
  }
  r.m.unlock();
}
Registry& registry() { return fork_safe_singleton<Registry, files_prepare, files_parent, files_child>(); }
}  // namespace

FileState::FileState() {
  Registry& r = registry();
  std::lock_guard<std::mutex> g(r.m);
  r.all.insert(this);
}

FileState::~FileState() {
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> g(r.m);
    r.all.erase(this);
  }
  if (fd >= 0) ::close(fd);
}

std::string errno_text(int e) {
  const char* name = nullptr;
  switch (e) {
    case EIO: name = "EIO"; break;
    case ENOSPC: name = "ENOSPC"; break;
    case EFBIG: name = "EFBIG"; break;
    case EBADF: name = "EBADF"; break;
    case EINVAL: name = "EINVAL"; break;
    case EDQUOT: name = "EDQUOT"; break;
    case EROFS: name = "EROFS"; break;
    case EACCES: name = "EACCES"; break;
    case ENOENT: name = "ENOENT"; break;
    case EEXIST: name = "EEXIST"; break;
    case EISDIR: name = "EISDIR"; break;
    case ENOMEM: name = "ENOMEM"; break;
    case EPERM: name = "EPERM"; break;
    default: break;
  }
  std::string s = std::strerror(e);
  if (name) s += std::string(" (") + name + ")";
  return s;
}

namespace {

// Marks a request in flight on the handle; refuses a closed one.
class Use {
 public:
  explicit Use(FileState& st) : st_(st) {
    std::lock_guard<std::mutex> g(st_.m);
    if (st_.closed || st_.fd < 0)
      fail(Status::io_error, "file '" + st_.path + "' is closed: " + errno_text(EBADF));
    ++st_.inflight;
  }
  ~Use() {
    std::lock_guard<std::mutex> g(st_.m);
    if (--st_.inflight == 0) st_.cv.notify_all();
  }

 private:
  FileState& st_;
};

int64_t fsize(const FileState& st) {
  struct stat sb;
  if (::fstat(st.fd, &sb) != 0) fail(Status::io_error, "fstat of '" + st.path + "' failed: " + errno_text(errno));
  if (S_ISBLK(sb.st_mode)) {  // a block device: its size, not st_size (0)
    uint64_t n = 0;
    if (::ioctl(st.fd, BLKGETSIZE64, &n) != 0)
      fail(Status::io_error, "BLKGETSIZE64 of '" + st.path + "' failed: " + errno_text(errno));
    return static_cast<int64_t>(n);
  }
  return static_cast<int64_t>(sb.st_size);
}

// pread of up to len bytes (fewer at end of file); the rest is zero-filled.
void pread_fill(const FileState& st, uint8_t* p, int64_t len, int64_t off) {
  int64_t got = 0;
  while (got < len) {
    ssize_t r = ::pread(st.fd, p + got, static_cast<size_t>(len - got), off + got);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      fail(Status::io_error, "read-modify-write: reading the edge block at offset " + std::to_string(off) +
                                 " of '" + st.path + "' failed: " + errno_text(errno));
    }
    if (r == 0) break;
    got += r;
  }
  if (got < len) std::memset(p + got, 0, static_cast<size_t>(len - got));
}

inline int64_t down(int64_t x) { return x / kAlign * kAlign; }
inline int64_t up(int64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

struct Slot {
  Task t;
  BounceBuffer bb;
  int64_t s = 0, e = 0, a0 = 0;
  bool bounced = false;
  // a bounced write staged ahead on a copy thread: posted, then ready or failed (under the
  // batch's mutex)
  enum Stage : int { none = 0, posted = 1, ready = 2, failed = 3 } stage = none;
  std::exception_ptr stage_err;
};

// Copies between bounce buffers and user memory run here, so the thread driving the queue keeps
// it full while they run (a copy on that thread leaves the drive idle for its duration).
int copy_threads() { return std::max(1, std::min(4, static_cast<int>(std::thread::hardware_concurrency()) / 2)); }
TaskThreads& copiers() {
  static TaskThreads* p = new TaskThreads(copy_threads);  // never destroyed, like the request threads
  return *p;
}
// Bounced writes staged this many tasks ahead of the one being submitted.
constexpr size_t kStageAhead = 4;
// Pieces smaller than this are copied on the queue's thread (a hand-off costs more).
constexpr int64_t kAsyncCopyMin = 64 * 1024;
// Reads' copies queued on the copy threads at most (each holds a bounce buffer).
constexpr int kMaxCopying = 8;

struct Chunk {
  uint8_t* user;
  int64_t s, e;  // file range
};

std::atomic<int64_t> g_bounced_bytes{0};

class RequestBatch : public Batch {
 public:
  // segments: (user memory, file offset, length); each is cut at multiples of ts in the file
  // (direct: so partial blocks only occur at a segment's two ends) or every ts bytes (buffered).
  // Direct, with memory at the file's phase modulo 4 KiB: a partial block at either end is a
  // task of its own, so only those blocks bounce and the rest goes straight from user memory
  // (the whole first and last tasks bounced before: up to 2 task sizes copied per request).
  // size_before: the file's size when the request started (edge blocks past it are not read).
  RequestBatch(FileState& st, Op op, const std::vector<Segment>& segs, int64_t ts, std::string what,
               int64_t size_before)
      : st_(st), op_(op), ts_(ts), what_(std::move(what)), size_before_(size_before) {
    for (const Segment& g : segs) {
      if (g.len == 0) continue;
      int64_t end = g.off + g.len;
      bool phased = st_.direct && (reinterpret_cast<uintptr_t>(g.buf) - static_cast<uintptr_t>(g.off)) % kAlign == 0;
      int64_t s = g.off;
      while (s < end) {
        int64_t e = st_.direct ? std::min(end, (s / ts_ + 1) * ts_) : std::min(end, s + ts_);
        if (phased && s % kAlign && up(s) < e) e = up(s);             // the partial head block
        else if (phased && e % kAlign && down(e) > s) e = down(e);   // the aligned part before a partial tail
        chunks_.push_back({g.buf + (s - g.off), s, e});
        s = e;
      }
    }
    n_ = chunks_.size();
    slots_.resize(n_);
  }
  ~RequestBatch() { drain(); }
  size_t size() const { return n_; }

  // Waits for the copies still running on the copy threads (they use this batch).
  void drain() {
    std::unique_lock<std::mutex> l(m_);
    copy_cv_.wait(l, [this] { return copying_ == 0; });
  }

  Task* prepare(size_t i) override {
    if (failed_.load(std::memory_order_acquire)) return nullptr;
    Slot& sl = slots_[i];
    sl.s = chunks_[i].s;
    sl.e = chunks_[i].e;
    uint8_t* user = chunks_[i].user;
    Task& t = sl.t;
    t.op = op_;
    t.fd = st_.fd;
    if (!st_.direct || (sl.s % kAlign == 0 && sl.e % kAlign == 0 &&
                        reinterpret_cast<uintptr_t>(user) % static_cast<uintptr_t>(kAlign) == 0)) {
      t.buf = user;
      t.off = sl.s;
      t.len = sl.e - sl.s;
      t.buf_index = -1;
      return &t;
    }
    sl.bounced = true;
    sl.a0 = down(sl.s);
    int64_t a1 = up(sl.e);
    if (op_ == Op::write) {
      // stage this task and the next few on the copy threads, then wait for this one
      for (size_t j = i; j < n_ && j < i + kStageAhead; ++j) post_stage(j);
      std::exception_ptr err;
      {
        std::unique_lock<std::mutex> l(m_);
        copy_cv_.wait(l, [&] { return sl.stage >= Slot::ready; });
        err = sl.stage_err;
      }
      if (err) {
        record(sl.s, Status::io_error, err);
        sl.bb = BounceBuffer();
        return nullptr;
      }
    } else {
      try {
        sl.bb = BounceBuffer(a1 - sl.a0);
      } catch (...) {
        record(sl.s, Status::io_error, std::current_exception());
        return nullptr;
      }
    }
    g_bounced_bytes.fetch_add(a1 - sl.a0, std::memory_order_relaxed);
    t.buf = sl.bb.data();
    t.buf_index = sl.bb.reg_index();
    t.off = sl.a0;
    t.len = a1 - sl.a0;
    return &t;
  }

  void complete(size_t i) override {
    Slot& sl = slots_[i];
    Task& t = sl.t;
    const char* verb = op_ == Op::read ? "read" : "write";
    if (t.err) {
      std::string msg = std::string(verb) + " of " + std::to_string(t.len) + " bytes at offset " +
                        std::to_string(t.off) + " of '" + st_.path + "' failed: " + errno_text(t.err) +
                        " (request: " + what_ + "; " + std::to_string(t.done) + " bytes of this piece done)";
      if (t.err == EINVAL && st_.direct) msg += "; the handle uses O_DIRECT";
      record(sl.s, Status::io_error, std::make_exception_ptr(Error(Status::io_error, msg)));
    } else if (op_ == Op::read) {
      int64_t need = sl.bounced ? sl.e - sl.a0 : t.len;
      if (t.done < need) {
        int64_t at = (sl.bounced ? sl.a0 : sl.s) + t.done;
        std::string msg = "short read: '" + st_.path + "' ended at offset " + std::to_string(at) +
                          " while reading " + what_ + " (the file shrank underneath?); no partial result is returned";
        record(sl.s, Status::out_of_range, std::make_exception_ptr(Error(Status::out_of_range, msg)));
      } else if (sl.bounced) {
        bool async = false;
        if (sl.e - sl.s >= kAsyncCopyMin) {
          std::lock_guard<std::mutex> g(m_);
          async = copying_ < kMaxCopying;  // else copy here: bounce memory stays bounded
          copying_ += async;
        }
        if (async) {
          // out of the bounce buffer on a copy thread; the buffer goes back to the pool there
          copiers().post([this, i] {
            Slot& c = slots_[i];
            std::memcpy(chunks_[i].user, c.bb.data() + (c.s - c.a0), static_cast<size_t>(c.e - c.s));
            c.bb = BounceBuffer();
            done_copying();
          });
          return;
        }
        std::memcpy(chunks_[i].user, sl.bb.data() + (sl.s - sl.a0), static_cast<size_t>(sl.e - sl.s));
      }
    }
    if (sl.bounced) sl.bb = BounceBuffer();  // back to the pool
  }

  void rethrow() {
    std::lock_guard<std::mutex> g(m_);
    if (err_) std::rethrow_exception(err_);
  }
  int64_t max_bounced_end() const { return max_bounced_end_; }

 private:
  void record(int64_t at, Status, std::exception_ptr e) {
    std::lock_guard<std::mutex> g(m_);
    if (!err_ || at < err_at_) {
      err_ = e;
      err_at_ = at;
    }
    failed_.store(true, std::memory_order_release);
  }

  // Task j of a write, when it bounces: its bounce buffer filled (edge blocks kept, the user's
  // bytes copied in) on a copy thread, once; small pieces are staged by the caller's thread.
  void post_stage(size_t j) {
    int64_t s = chunks_[j].s, e = chunks_[j].e;
    if (s % kAlign == 0 && e % kAlign == 0 && reinterpret_cast<uintptr_t>(chunks_[j].user) % kAlign == 0)
      return;  // straight from user memory
    {
      std::lock_guard<std::mutex> g(m_);
      if (slots_[j].stage != Slot::none) return;
      slots_[j].stage = Slot::posted;
      ++copying_;
    }
    if (e - s < kAsyncCopyMin) {
      stage(j);
      return;
    }
    copiers().post([this, j] { stage(j); });
  }

  void stage(size_t j) {
    Slot& sl = slots_[j];
    int64_t s = chunks_[j].s, e = chunks_[j].e, a0 = down(s), a1 = up(e);
    std::exception_ptr err;
    try {
      sl.bb = BounceBuffer(a1 - a0);
      // read-modify-write of the partial head and tail blocks; where the file has no bytes
      // to keep around the data (past its end when the request started), zeros, not a read
      bool head = s != a0, tail = e != a1;
      if (head) keep_block(sl.bb.data(), a0, a0 < size_before_);
      if (tail && !(head && a1 - kAlign == a0)) keep_block(sl.bb.data() + (a1 - kAlign - a0), a1 - kAlign, e < size_before_);
      std::memcpy(sl.bb.data() + (s - a0), chunks_[j].user, static_cast<size_t>(e - s));
    } catch (...) {
      err = std::current_exception();
      sl.bb = BounceBuffer();
    }
    std::lock_guard<std::mutex> g(m_);
    if (!err) max_bounced_end_ = std::max(max_bounced_end_, a1);
    sl.stage_err = err;
    sl.stage = err ? Slot::failed : Slot::ready;
    --copying_;
    copy_cv_.notify_all();
  }

  void done_copying() {
    std::lock_guard<std::mutex> g(m_);
    --copying_;
    copy_cv_.notify_all();
  }

  void keep_block(uint8_t* p, int64_t off, bool read) {
    if (read) pread_fill(st_, p, kAlign, off);
    else std::memset(p, 0, kAlign);
  }

  FileState& st_;
  Op op_;
  int64_t ts_;
  std::string what_;
  int64_t size_before_;
  std::vector<Chunk> chunks_;
  size_t n_ = 0;
  std::vector<Slot> slots_;
  std::mutex m_;
  std::exception_ptr err_;
  int64_t err_at_ = 0;
  std::atomic<bool> failed_{false};
  int64_t max_bounced_end_ = 0;
  std::condition_variable copy_cv_;
  int copying_ = 0;  // copies posted to the copy threads and not yet finished
};

}  // namespace

int64_t bounced_bytes() { return g_bounced_bytes.load(std::memory_order_relaxed); }

int64_t execute(const std::shared_ptr<FileState>& stp, Op op, uint8_t* buf, int64_t len, int64_t off) {
  if (len < 0) fail(Status::invalid_argument, "size must be >= 0, got " + std::to_string(len));
  if (off < 0) fail(Status::invalid_argument, "offset must be >= 0, got " + std::to_string(off));
  add64(off, len, "offset + size");
  if (len > 0 && buf == nullptr) fail(Status::invalid_argument, "null buffer");
  return execute_segments(stp, op, {Segment{buf, off, len}});
}

int64_t execute_segments(const std::shared_ptr<FileState>& stp, Op op, const std::vector<Segment>& segs) {
  if (!stp) fail(Status::io_error, "file is closed: " + errno_text(EBADF));
  FileState& st = *stp;
  int64_t total = 0, lo = INT64_MAX, hi = 0;
  bool misaligned = false;
  for (const Segment& g : segs) {
    if (g.len < 0) fail(Status::invalid_argument, "size must be >= 0, got " + std::to_string(g.len));
    if (g.off < 0) fail(Status::invalid_argument, "offset must be >= 0, got " + std::to_string(g.off));
    int64_t end = add64(g.off, g.len, "offset + size");
    total = add64(total, g.len, "total size");
    if (g.len == 0) continue;
    lo = std::min(lo, g.off);
    hi = std::max(hi, end);
    if ((reinterpret_cast<uintptr_t>(g.buf) - static_cast<uintptr_t>(g.off)) % kAlign != 0) misaligned = true;
  }
  std::string what = segs.size() == 1
                         ? std::to_string(total) + " bytes at offset " + std::to_string(segs[0].off)
                         : std::to_string(segs.size()) + " pieces, " + std::to_string(total) + " bytes in [" +
                               std::to_string(total ? lo : 0) + ", " + std::to_string(hi) + ")";
  Use use(st);
  if (op == Op::read && !st.readable)
    fail(Status::invalid_argument, "'" + st.path + "' was opened with mode '" + st.mode + "': not readable");
  if (op == Op::write && !st.writable)
    fail(Status::invalid_argument, "'" + st.path + "' was opened with mode '" + st.mode + "': not writable");
  if (total == 0) return 0;
  int64_t size_before = fsize(st);
  if (op == Op::read && hi > size_before)
    fail(Status::out_of_range, "read of " + what + " of '" + st.path + "' goes past the end of the file (" +
                                   std::to_string(size_before) + " bytes)");
  if (op == Op::write && st.direct && segs.size() > 1) {
    // read-modify-write of a block by two pieces at once would lose one of them
    std::vector<std::pair<int64_t, int64_t>> r;
    r.reserve(segs.size());
    for (const Segment& g : segs)
      if (g.len) r.emplace_back(g.off, g.off + g.len);
    std::sort(r.begin(), r.end());
    for (size_t i = 1; i < r.size(); ++i)
      if (r[i].first < r[i - 1].second ||
          (down(r[i].first) < up(r[i - 1].second) && (r[i].first % kAlign || r[i - 1].second % kAlign)))
        fail(Status::invalid_argument, "write pieces [" + std::to_string(r[i - 1].first) + ", " +
                                           std::to_string(r[i - 1].second) + ") and [" + std::to_string(r[i].first) +
                                           ", " + std::to_string(r[i].second) +
                                           ") overlap or share a 4 KiB block of an O_DIRECT file");
  }
  int64_t ts = std::max<int64_t>(task_size(), 1);
  RequestBatch batch(st, op, segs, ts, what, size_before);
  const BackendOps& be = backend();
  int qd = queue_depth();
  if (st.direct && misaligned) {
    // memory misaligned relative to the file: tasks bounce; bound the bounce memory of the
    // requests that may run at once by HAULER_IO_BOUNCE_POOL
    int64_t per = (ts + kAlign) * request_threads();
    qd = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(qd, bounce_pool_bytes() / per)));
  }
  std::exception_ptr run_err;
  try {
    be.run(batch, batch.size(), qd);
  } catch (...) {
    run_err = std::current_exception();
  }
  batch.drain();  // the last reads' copies out of bounce buffers; writes staged but never sent
  if (op == Op::write && st.direct) {
    // bounce writes cover whole blocks: cut what went past the intended end
    int64_t want = std::max(size_before, hi);
    if (batch.max_bounced_end() > want && fsize(st) > want) {
      if (::ftruncate(st.fd, want) != 0 && !run_err)
        fail(Status::io_error, "ftruncate of '" + st.path + "' to " + std::to_string(want) +
                                   " bytes after an unaligned O_DIRECT write failed: " + errno_text(errno));
    }
  }
  batch.rethrow();
  if (run_err) std::rethrow_exception(run_err);
  return total;
}

int state_fd(const std::shared_ptr<FileState>& st) { return st ? st->fd : -1; }

// ---- File ---------------------------------------------------------------------------------------

File::File(const std::string& path, const std::string& mode, int direct) {
  auto st = std::make_shared<FileState>();
  st->path = path;
  st->mode = mode;
  int flags = O_CLOEXEC;
  if (mode == "r" || mode == "rb") {
    flags |= O_RDONLY;
    st->readable = true;
  } else if (mode == "r+" || mode == "rb+" || mode == "r+b") {
    flags |= O_RDWR;
    st->readable = st->writable = true;
  } else if (mode == "w" || mode == "wb" || mode == "w+" || mode == "wb+" || mode == "w+b") {
    flags |= O_RDWR | O_CREAT | O_TRUNC;  // O_RDWR: read-modify-write of edge blocks
    st->writable = true;
    st->readable = mode.find('+') != std::string::npos;
  } else if (mode == "x" || mode == "xb" || mode == "x+" || mode == "xb+" || mode == "x+b") {
    flags |= O_RDWR | O_CREAT | O_EXCL;
    st->writable = true;
    st->readable = mode.find('+') != std::string::npos;
  } else {
    fail(Status::invalid_argument, "mode '" + mode + "': expected r, r+, w, w+, x or x+");
  }
  bool want = direct < 0 ? direct_mode() != 0 : direct != 0;
  int fd = -1;
  if (want) {
    fd = ::open(path.c_str(), flags | O_DIRECT, 0666);
    if (fd >= 0) {
      st->direct = true;
    } else if (errno == EINVAL) {
      if (direct == 1)
        fail(Status::io_error, "open of '" + path + "' with O_DIRECT failed: " + errno_text(EINVAL) +
                                   " (the file system refuses O_DIRECT; pass direct=None for buffered I/O)");
      st->direct_reason = "the file system refuses O_DIRECT (open gave EINVAL): buffered I/O";
      fd = ::open(path.c_str(), flags & ~O_EXCL, 0666);
    }
  } else {
    st->direct_reason = direct == 0 ? "direct=False: buffered I/O" : "HAULER_IO_DIRECT=0: buffered I/O";
    fd = ::open(path.c_str(), flags, 0666);
  }
  if (fd < 0) fail(Status::io_error, "open of '" + path + "' (mode '" + mode + "') failed: " + errno_text(errno));
  st->fd = fd;
  st_ = std::move(st);
}

File::~File() {
  if (st_) st_->close();
}

File& File::operator=(File&& o) noexcept {
  if (this != &o) {
    if (st_) st_->close();
    st_ = std::move(o.st_);
  }
  return *this;
}

bool File::is_open() const {
  if (!st_) return false;
  std::lock_guard<std::mutex> g(st_->m);
  return !st_->closed;
}
bool File::direct() const { return st_ && st_->direct; }
std::string File::direct_reason() const { return st_ ? st_->direct_reason : "closed"; }
const std::string& File::path() const {
  static const std::string none;
  return st_ ? st_->path : none;
}
std::string File::mode() const { return st_ ? st_->mode : ""; }
int File::fd() const { return st_ ? st_->fd : -1; }
void File::close() {
  if (st_) st_->close();
}
int64_t File::size() const {
  if (!st_) fail(Status::io_error, "file is closed: " + errno_text(EBADF));
  Use u(*st_);
  return fsize(*st_);
}
int64_t File::read(void* buf, int64_t len, int64_t off) const {
  return execute(st_, Op::read, static_cast<uint8_t*>(buf), len, off);
}
int64_t File::write(const void* buf, int64_t len, int64_t off) const {
  return execute(st_, Op::write, static_cast<uint8_t*>(const_cast<void*>(buf)), len, off);
}
void File::sync(bool data_only) const {
  if (!st_) fail(Status::io_error, "file is closed: " + errno_text(EBADF));
  Use u(*st_);
  if ((data_only ? ::fdatasync(st_->fd) : ::fsync(st_->fd)) != 0)
    fail(Status::io_error, "fsync of '" + st_->path + "' failed: " + errno_text(errno));
}
void File::truncate(int64_t size) const {
  if (!st_) fail(Status::io_error, "file is closed: " + errno_text(EBADF));
  if (size < 0) fail(Status::invalid_argument, "size must be >= 0");
  Use u(*st_);
  if (!st_->writable) fail(Status::invalid_argument, "'" + st_->path + "' is not writable");
  if (::ftruncate(st_->fd, size) != 0)
    fail(Status::io_error, "ftruncate of '" + st_->path + "' failed: " + errno_text(errno));
}

// ---- futures and the request threads -------------------------------------------------------------

namespace {
TaskThreads& request_pool() {
  static TaskThreads* p = new TaskThreads(request_threads);  // never destroyed, like the backend's
  return *p;
}
}  // namespace

void Future::finish(int64_t bytes, std::exception_ptr err, State s) {
  std::function<void()> cb;
  {
    std::lock_guard<std::mutex> g(m_);
    bytes_ = bytes;
    err_ = err;
    state_ = s;
    cb = std::move(on_done_);
    on_done_ = nullptr;
  }
  cv_.notify_all();
  if (cb) cb();
}

// A request submitted before fork() runs only in the parent: in a child its future is
// "orphaned" (done, and get() says why) instead of a wait that never ends.
bool Future::orphaned() const {
  return gen_ != fork_generation() && state_ != finished && state_ != was_cancelled;
}

bool Future::wait(double timeout_s) const {
  std::unique_lock<std::mutex> l(m_);
  if (orphaned()) return true;
  auto ready = [this] { return state_ == finished || state_ == was_cancelled; };
  if (timeout_s < 0) {
    cv_.wait(l, ready);
    return true;
  }
  return cv_.wait_for(l, std::chrono::duration<double>(timeout_s), ready);
}
bool Future::done() const {
  std::lock_guard<std::mutex> g(m_);
  return state_ == finished || state_ == was_cancelled || orphaned();
}
bool Future::cancelled() const {
  std::lock_guard<std::mutex> g(m_);
  return state_ == was_cancelled;
}
Future::State Future::state() const {
  std::lock_guard<std::mutex> g(m_);
  return state_;
}
bool Future::cancel() {
  std::function<void()> cb;
  {
    std::lock_guard<std::mutex> g(m_);
    if (state_ == was_cancelled || orphaned()) return true;
    if (state_ != queued) return false;
    state_ = was_cancelled;
    cb = std::move(on_done_);
    on_done_ = nullptr;
  }
  cv_.notify_all();
  if (cb) cb();
  return true;
}
int64_t Future::get() const {
  wait(-1);
  std::lock_guard<std::mutex> g(m_);
  if (state_ == was_cancelled) fail(Status::invalid_argument, "the request was cancelled");
  if (orphaned())
    fail(Status::io_error, "the request was submitted before fork() by the parent process (pid " +
                               std::to_string(pid_) + "); it runs only there, not in this process (pid " +
                               std::to_string(::getpid()) + ")");
  if (err_) std::rethrow_exception(err_);
  return bytes_;
}

void run_future(const std::shared_ptr<Future>& f, const std::shared_ptr<FileState>& st, Op op, uint8_t* buf,
                int64_t len, int64_t off) {
  struct Done {  // the file's count of submitted futures, however this ends
    FileState& st;
    ~Done() {
      std::lock_guard<std::mutex> g(st.m);
      if (--st.queued == 0) st.cv.notify_all();
    }
  } done{*st};
  {
    std::lock_guard<std::mutex> g(f->m_);
    if (f->state_ != Future::queued) return;  // cancelled
    f->state_ = Future::running;
  }
  try {
    int64_t n = execute(st, op, buf, len, off);
    f->finish(n, nullptr, Future::finished);
  } catch (...) {
    f->finish(0, std::current_exception(), Future::finished);
  }
}

std::shared_ptr<Future> submit(const std::shared_ptr<FileState>& st, Op op, uint8_t* buf, int64_t len,
                               int64_t off, std::function<void()> on_done) {
  if (!st) fail(Status::io_error, "file is closed: " + errno_text(EBADF));
  auto f = std::make_shared<Future>();
  f->on_done_ = std::move(on_done);
  {
    std::lock_guard<std::mutex> g(st->m);
    ++st->queued;
  }
  request_pool().post([f, st, op, buf, len, off] { run_future(f, st, op, buf, len, off); });
  return f;
}

}  // namespace hauler::io
