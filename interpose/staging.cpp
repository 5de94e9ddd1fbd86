// Host staging buffers for packed messages, pooled by power-of-two size class: per thread first,
// then one shared pool of at most kStagingPoolMax bytes.
#include <cstdlib>
#include <map>

#include "shim.hpp"

namespace shim {

std::mutex g_staging_pool_mu;

namespace {

std::multimap<size_t, void*> g_host_staging_pool;
size_t g_host_staging_pool_bytes = 0;

// Staging up to kLocalMax bytes is kept per thread first (a message's staging is usually taken
// and given back by the thread that posts and completes it), so a small message takes no lock
// here: at most kLocalPerClass buffers per size class, ~4 MiB per thread at worst.
constexpr size_t kLocalMax = size_t(256) << 10;
constexpr size_t kLocalPerClass = 8;
struct LocalPool {
  std::vector<void*> cls[13];  // size classes 64 B .. 256 KiB
  ~LocalPool() {
    for (auto& v : cls)
      for (void* p : v) std::free(p);
  }
  std::vector<void*>* at(size_t c) {
    if (c > kLocalMax) return nullptr;
    return &cls[__builtin_ctzll(c) - 6];
  }
};
thread_local LocalPool tl_host_staging;

}  // namespace

size_t size_class(size_t n) {
  size_t c = 64;
  while (c < n) c <<= 1;
  return c;
}

void* buf_get(size_t n) {
  size_t c = size_class(n);
  if (auto* v = tl_host_staging.at(c); v && !v->empty()) {
    void* p = v->back();
    v->pop_back();
    return p;
  }
  {
    std::lock_guard<std::mutex> lk(g_staging_pool_mu);
    auto it = g_host_staging_pool.find(c);
    if (it != g_host_staging_pool.end()) {
      void* p = it->second;
      g_host_staging_pool.erase(it);
      g_host_staging_pool_bytes -= c;
      return p;
    }
  }
  void* p = nullptr;
  if (posix_memalign(&p, 64, c) != 0) return nullptr;
  return p;
}

void buf_put(void* p, size_t n) {
  if (!p) return;
  size_t c = size_class(n);
  if (auto* v = tl_host_staging.at(c); v && v->size() < kLocalPerClass) {
    v->push_back(p);
    return;
  }
  std::lock_guard<std::mutex> lk(g_staging_pool_mu);
  if (g_host_staging_pool_bytes + c > kStagingPoolMax) {
    std::free(p);
    return;
  }
  g_host_staging_pool.emplace(c, p);
  g_host_staging_pool_bytes += c;
}

}  // namespace shim
