// Pooled aligned bounce buffers, carved from one arena of HAULER_IO_BOUNCE_POOL
// bytes (allocated at first use, size fixed from then on) so that io_uring can
// register the arena once per ring and run bounced tasks as read_fixed /
// write_fixed. A request the arena cannot fit at the moment gets a plain
// aligned allocation (unregistered, freed on release).
//
// Fork: the pool's mutex is held across fork() (pthread_atfork) so a child never
// inherits it locked or the free list half-updated; buffers that parent threads
// held at fork() stay taken in the child (it has none of those threads).
#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#include "fork.hpp"
#include "io.hpp"

namespace hauler::io {

namespace {
constexpr int64_t kIovMax = int64_t(1) << 30;  // the kernel's limit per registered buffer

struct Pool {
  std::mutex m;
  bool made = false;
  uint8_t* arena = nullptr;
  int64_t size = 0;
  std::vector<std::pair<int64_t, int64_t>> free;  // (offset, length) in the arena, sorted, coalesced

  void make() {  // under m
    if (made) return;
    made = true;
    int64_t want = bounce_pool_bytes() / kAlign * kAlign;
    void* p = nullptr;
    if (want > 0 && posix_memalign(&p, static_cast<size_t>(kAlign), static_cast<size_t>(want)) == 0 && p) {
      arena = static_cast<uint8_t*>(p);
      size = want;
      free.emplace_back(0, want);
    }
  }
  // Best fit; -1 when nothing fits.
  int64_t take(int64_t cap) {
    size_t best = free.size();
    for (size_t i = 0; i < free.size(); ++i)
      if (free[i].second >= cap && (best == free.size() || free[i].second < free[best].second)) best = i;
    if (best == free.size()) return -1;
    int64_t off = free[best].first;
    free[best].first += cap;
    free[best].second -= cap;
    if (free[best].second == 0) free.erase(free.begin() + static_cast<std::ptrdiff_t>(best));
    return off;
  }
  void give(int64_t off, int64_t cap) {
    auto it = std::lower_bound(free.begin(), free.end(), std::make_pair(off, int64_t(0)));
    it = free.insert(it, {off, cap});
    if (it + 1 != free.end() && it->first + it->second == (it + 1)->first) {
      it->second += (it + 1)->second;
      free.erase(it + 1);
    }
    if (it != free.begin() && (it - 1)->first + (it - 1)->second == it->first) {
      (it - 1)->second += it->second;
      free.erase(it);
    }
  }
};

void lock_for_fork(Pool& p) { p.m.lock(); }
void unlock_after_fork(Pool& p) { p.m.unlock(); }
Pool& pool() { return fork_safe_singleton<Pool, lock_for_fork, unlock_after_fork, unlock_after_fork>(); }
}  // namespace

BounceBuffer::BounceBuffer(int64_t size) {
  if (size <= 0) size = kAlign;
  int64_t cap = (size + kAlign - 1) / kAlign * kAlign;
  Pool& P = pool();
  {
    std::lock_guard<std::mutex> g(P.m);
    P.make();
    int64_t off = P.take(cap);
    if (off >= 0) {
      p_ = P.arena + off;
      cap_ = cap;
      // registered as 1 GiB pieces: a buffer straddling two is used unregistered
      if (off / kIovMax == (off + cap - 1) / kIovMax) reg_ = static_cast<int>(off / kIovMax);
      in_arena_ = true;
      return;
    }
  }
  void* p = nullptr;
  if (posix_memalign(&p, static_cast<size_t>(kAlign), static_cast<size_t>(cap)) != 0 || p == nullptr)
    fail(Status::io_error, "cannot allocate a " + std::to_string(cap) + "-byte aligned bounce buffer");
  p_ = static_cast<uint8_t*>(p);
  cap_ = cap;
}

BounceBuffer::~BounceBuffer() { release(); }

void BounceBuffer::release() {
  if (p_ == nullptr) return;
  if (in_arena_) {
    Pool& P = pool();
    std::lock_guard<std::mutex> g(P.m);
    P.give(p_ - P.arena, cap_);
  } else {
    std::free(p_);
  }
  p_ = nullptr;
  cap_ = 0;
  reg_ = -1;
  in_arena_ = false;
}

BounceBuffer& BounceBuffer::operator=(BounceBuffer&& o) noexcept {
  if (this != &o) {
    release();
    p_ = o.p_;
    cap_ = o.cap_;
    reg_ = o.reg_;
    in_arena_ = o.in_arena_;
    o.p_ = nullptr;
    o.cap_ = 0;
    o.reg_ = -1;
    o.in_arena_ = false;
  }
  return *this;
}

std::vector<iovec> bounce_arena_iovecs() {
  Pool& P = pool();
  std::lock_guard<std::mutex> g(P.m);
  P.make();
  std::vector<iovec> v;
  for (int64_t o = 0; o < P.size; o += kIovMax)
    v.push_back({P.arena + o, static_cast<size_t>(std::min(kIovMax, P.size - o))});
  return v;
}

}  // namespace hauler::io
