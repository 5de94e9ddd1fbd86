// Fork safety of the I/O engine. A forked child (DataLoader workers,
// multiprocessing 'fork') has only the thread that called fork(): the
// parent's pool threads are gone and an io_uring ring inherited from the
// parent is the parent's ring (submitting to it would run on the parent's
// queue). Per-process state is stamped with fork_generation(); the child
// handler bumps it, so stale state is abandoned and rebuilt lazily in the child.
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

#include "io.hpp"

namespace hauler::io {

namespace {
std::atomic<uint64_t> g_generation{0};
void bump_in_child() { g_generation.fetch_add(1, std::memory_order_acq_rel); }
}  // namespace

uint64_t fork_generation() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, bump_in_child); });
  return g_generation.load(std::memory_order_acquire);
}

int current_pid() { return static_cast<int>(::getpid()); }

}  // namespace hauler::io
