// Cross-memory attach moves, staging copies and the lease table (see cma.hpp).
#include "cma.hpp"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sys/uio.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "../common/status.hpp"

namespace hauler::kv {

namespace {

constexpr int kIovMax = IOV_MAX;

void check_segments(const int64_t* segs, int64_t n) {
  if (n < 0) fail(Status::invalid_argument, "segment count " + std::to_string(n) + " is negative");
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* r = segs + 3 * i;
    if (r[0] < 0 || r[1] < 0 || r[2] < 0)
      fail(Status::invalid_argument, "segment " + std::to_string(i) + " (" + std::to_string(r[0]) + ", " +
                                         std::to_string(r[1]) + ", " + std::to_string(r[2]) +
                                         ") has a negative address or size");
  }
}

// True when the process behind pidfd has exited (pidfd polls readable then).
bool peer_exited(int pidfd) {
  if (pidfd < 0) return false;
  struct pollfd p = {pidfd, POLLIN, 0};
  int r;
  do r = ::poll(&p, 1, 0);
  while (r < 0 && errno == EINTR);
  return r > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}

// Appends [addr, addr + len) to iov, merging with the last entry when contiguous; false when a
// new entry is needed and the array is full.
bool add_iov(struct iovec* iov, int& count, int64_t addr, int64_t len) {
  if (count > 0) {
    auto& last = iov[count - 1];
    if (reinterpret_cast<int64_t>(last.iov_base) + static_cast<int64_t>(last.iov_len) == addr) {
      last.iov_len += static_cast<size_t>(len);
      return true;
    }
  }
  if (count == kIovMax) return false;
  iov[count].iov_base = reinterpret_cast<void*>(addr);
  iov[count].iov_len = static_cast<size_t>(len);
  ++count;
  return true;
}

}  // namespace

CmaResult cma_move(int pid, int pidfd, bool write, const int64_t* segs, int64_t n, int64_t max_call_bytes,
                   XferProgress* progress) {
  check_segments(segs, n);
  if (max_call_bytes <= 0)
    fail(Status::invalid_argument, "max_call_bytes " + std::to_string(max_call_bytes) + " must be positive");
  CmaResult res;
  std::vector<struct iovec> local(kIovMax), remote(kIovMax);
  int64_t seg = 0, off = 0;  // cursor: the first byte not yet moved
  auto publish = [&] {
    res.segments_done = seg;
    if (progress) {
      progress->bytes_done.store(res.bytes_done, std::memory_order_release);
      progress->segments_done.store(seg, std::memory_order_release);
    }
  };
  while (true) {
    while (seg < n && segs[3 * seg + 2] == off) ++seg, off = 0;  // empty rows and finished ones
    publish();
    if (seg == n) return res;
    if (progress && progress->cancel.load(std::memory_order_acquire)) {
      res.error = ECANCELED;
      return res;
    }
    if (peer_exited(pidfd)) {
      res.error = ESRCH;
      return res;
    }
    int nl = 0, nr = 0;
    int64_t total = 0;
    for (int64_t s = seg, o = off; s < n && total < max_call_bytes;) {
      const int64_t* r = segs + 3 * s;
      int64_t len = std::min(r[2] - o, max_call_bytes - total);
      if (len == 0) {
        ++s, o = 0;
        continue;
      }
      int64_t peer = (write ? r[1] : r[0]) + o, mine = (write ? r[0] : r[1]) + o;
      // Check both sides fit before adding either, so the two streams stay the same length.
      bool lm = nl > 0 && reinterpret_cast<int64_t>(local[nl - 1].iov_base) +
                                  static_cast<int64_t>(local[nl - 1].iov_len) == mine;
      bool rm = nr > 0 && reinterpret_cast<int64_t>(remote[nr - 1].iov_base) +
                                  static_cast<int64_t>(remote[nr - 1].iov_len) == peer;
      if ((!lm && nl == kIovMax) || (!rm && nr == kIovMax)) break;
      add_iov(local.data(), nl, mine, len);
      add_iov(remote.data(), nr, peer, len);
      total += len;
      o += len;
      if (o == r[2]) ++s, o = 0;
    }
    ssize_t got = write ? ::process_vm_writev(pid, local.data(), nl, remote.data(), nr, 0)
                        : ::process_vm_readv(pid, local.data(), nl, remote.data(), nr, 0);
    ++res.calls;
    if (got < 0) {
      if (errno == EINTR) continue;
      res.error = errno;
      return res;
    }
    if (got == 0) {  // nothing moved though bytes were asked: the first remote page is not mapped
      res.error = EFAULT;
      return res;
    }
    res.bytes_done += got;
    for (int64_t left = got; left > 0;) {  // advance the cursor past what moved
      int64_t step = std::min(left, segs[3 * seg + 2] - off);
      off += step, left -= step;
      if (off == segs[3 * seg + 2]) ++seg, off = 0;
    }
  }
}

void segments_stage(const int64_t* segs, int64_t n, int col, int64_t stream_off, uint8_t* buf, int64_t len,
                    bool to_buf) {
  check_segments(segs, n);
  if (col != 0 && col != 1) fail(Status::invalid_argument, "column " + std::to_string(col) + " must be 0 or 1");
  if (stream_off < 0 || len < 0)
    fail(Status::invalid_argument, "stream range (" + std::to_string(stream_off) + ", " + std::to_string(len) +
                                       ") is negative");
  int64_t pos = 0, done = 0;
  for (int64_t i = 0; i < n && done < len; ++i) {
    const int64_t* r = segs + 3 * i;
    int64_t lo = std::max(pos, stream_off), hi = std::min(pos + r[2], stream_off + len);
    if (lo < hi) {
      auto* mem = reinterpret_cast<uint8_t*>(r[col] + (lo - pos));
      uint8_t* b = buf + (lo - stream_off);
      if (to_buf)
        std::memcpy(b, mem, static_cast<size_t>(hi - lo));
      else
        std::memcpy(mem, b, static_cast<size_t>(hi - lo));
      done += hi - lo;
    }
    pos += r[2];
  }
  if (done != len)
    fail(Status::out_of_range, "stream range (" + std::to_string(stream_off) + ", " + std::to_string(len) +
                                   ") ends past the segments' " + std::to_string(pos) + " bytes");
}

int64_t monotonic_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

namespace {

void check_blocks(int64_t num_blocks, const int64_t* blocks, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (blocks[i] < 0 || blocks[i] >= num_blocks)
      fail(Status::out_of_range, "block " + std::to_string(blocks[i]) + " (position " + std::to_string(i) +
                                     ") is outside the lease table's " + std::to_string(num_blocks) + " blocks");
}

uint64_t load(const uint64_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
int64_t load(const int64_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

// Owner side, single writer: generation odd while the entry changes, even after.
void set_entry(LeaseEntry& e, uint64_t id, int64_t deadline) {
  uint64_t g = e.gen;
  __atomic_store_n(&e.gen, g + 1, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_RELEASE);
  __atomic_store_n(&e.lease_id, id, __ATOMIC_RELAXED);
  __atomic_store_n(&e.deadline_ns, deadline, __ATOMIC_RELAXED);
  __atomic_store_n(&e.gen, g + 2, __ATOMIC_RELEASE);
}

}  // namespace

int64_t lease_grant(LeaseEntry* table, int64_t num_blocks, const int64_t* blocks, int64_t n, uint64_t lease_id,
                    int64_t deadline_ns) {
  check_blocks(num_blocks, blocks, n);
  if (lease_id == 0) fail(Status::invalid_argument, "lease id 0 is reserved for 'no lease'");
  int64_t now = monotonic_ns();
  for (int64_t i = 0; i < n; ++i) {
    const LeaseEntry& e = table[blocks[i]];
    if (e.lease_id != 0 && e.lease_id != lease_id && e.deadline_ns > now) return i;
  }
  for (int64_t i = 0; i < n; ++i) set_entry(table[blocks[i]], lease_id, deadline_ns);
  return -1;
}

void lease_clear(LeaseEntry* table, int64_t num_blocks, const int64_t* blocks, int64_t n, uint64_t lease_id) {
  check_blocks(num_blocks, blocks, n);
  for (int64_t i = 0; i < n; ++i)
    if (table[blocks[i]].lease_id == lease_id) set_entry(table[blocks[i]], 0, 0);
}

int64_t lease_snapshot(const LeaseEntry* table, int64_t num_blocks, const int64_t* blocks, int64_t n,
                       uint64_t lease_id, uint64_t* gens, int64_t* min_deadline) {
  check_blocks(num_blocks, blocks, n);
  int64_t now = monotonic_ns(), lo = INT64_MAX;
  for (int64_t i = 0; i < n; ++i) {
    const LeaseEntry& e = table[blocks[i]];
    uint64_t g = load(&e.gen);
    uint64_t id = load(&e.lease_id);
    int64_t dl = load(&e.deadline_ns);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if ((g & 1) || load(&e.gen) != g || id != lease_id || dl <= now) return i;
    gens[i] = g;
    lo = std::min(lo, dl);
  }
  *min_deadline = lo;
  return -1;
}

int64_t lease_verify(const LeaseEntry* table, int64_t num_blocks, const int64_t* blocks, int64_t n,
                     const uint64_t* gens, int64_t min_deadline) {
  check_blocks(num_blocks, blocks, n);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);  // the copy happened before these loads
  for (int64_t i = 0; i < n; ++i)
    if (load(&table[blocks[i]].gen) != gens[i]) return i;
  return monotonic_ns() < min_deadline ? -1 : n;
}

}  // namespace hauler::kv
