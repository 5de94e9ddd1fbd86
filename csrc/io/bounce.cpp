// Pooled aligned bounce buffers: freed buffers are kept (up to
// HAULER_IO_BOUNCE_POOL bytes) and handed out again to requests that fit.
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#include "io.hpp"

namespace hauler::io {

namespace {
struct Pool {
  std::mutex m;
  std::vector<std::pair<uint8_t*, int64_t>> free;  // (pointer, capacity)
  int64_t cached = 0;
};
Pool& pool() {
  static Pool* p = new Pool;  // never destroyed: buffers may be released at exit
  return *p;
}
}  // namespace

BounceBuffer::BounceBuffer(int64_t size) {
  if (size <= 0) size = kAlign;
  Pool& P = pool();
  {
    std::lock_guard<std::mutex> g(P.m);
    // the smallest cached buffer that fits
    size_t best = P.free.size();
    for (size_t i = 0; i < P.free.size(); ++i)
      if (P.free[i].second >= size && (best == P.free.size() || P.free[i].second < P.free[best].second)) best = i;
    if (best != P.free.size()) {
      p_ = P.free[best].first;
      cap_ = P.free[best].second;
      P.cached -= cap_;
      P.free.erase(P.free.begin() + static_cast<std::ptrdiff_t>(best));
      return;
    }
  }
  int64_t cap = (size + kAlign - 1) / kAlign * kAlign;
  void* p = nullptr;
  if (posix_memalign(&p, static_cast<size_t>(kAlign), static_cast<size_t>(cap)) != 0 || p == nullptr)
    fail(Status::io_error, "cannot allocate a " + std::to_string(cap) + "-byte aligned bounce buffer");
  p_ = static_cast<uint8_t*>(p);
  cap_ = cap;
}

BounceBuffer::~BounceBuffer() {
  if (p_ == nullptr) return;
  Pool& P = pool();
  int64_t limit = 0;
  try {
    limit = bounce_pool_bytes();
  } catch (...) {
    limit = 0;
  }
  {
    std::lock_guard<std::mutex> g(P.m);
    if (P.cached + cap_ <= limit) {
      P.free.emplace_back(p_, cap_);
      P.cached += cap_;
      p_ = nullptr;
      return;
    }
  }
  std::free(p_);
  p_ = nullptr;
}

BounceBuffer& BounceBuffer::operator=(BounceBuffer&& o) noexcept {
  if (this != &o) {
    BounceBuffer tmp(std::move(*this));
    p_ = o.p_;
    cap_ = o.cap_;
    o.p_ = nullptr;
    o.cap_ = 0;
  }
  return *this;
}

int64_t bounce_pool_cached() {
  std::lock_guard<std::mutex> g(pool().m);
  return pool().cached;
}

}  // namespace hauler::io
