// A queue of tasks served by threads that start on demand, up to a count read
// at each post (so a changed setting takes effect) and live for the process.
// The thread backend and the future-completing request threads each own one.
//
// Fork: a child has none of the parent's threads, and the queue's mutex may
// have been held by one of them at fork(). The queue and its threads live in a
// Pool stamped with fork_generation(); a child finds the stamp stale and
// starts a fresh Pool (the parent's copy is leaked on purpose: its mutex and
// queue may be mid-update and its std::threads must not be destroyed).
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "io.hpp"

namespace hauler::io {

class TaskThreads {
 public:
  explicit TaskThreads(int (*wanted)()) : wanted_(wanted) {}

  void post(std::function<void()> fn) {
    Pool* p = current();
    std::lock_guard<std::mutex> g(p->m);
    while (static_cast<int>(p->threads.size()) < wanted_()) p->threads.emplace_back([p] { p->loop(); });
    p->q.push_back(std::move(fn));
    p->cv.notify_one();
  }

 private:
  struct Pool {
    explicit Pool(uint64_t g) : gen(g) {}
    void loop() {
      while (true) {
        std::function<void()> fn;
        {
          std::unique_lock<std::mutex> l(m);
          cv.wait(l, [this] { return !q.empty(); });
          fn = std::move(q.front());
          q.pop_front();
        }
        fn();
      }
    }
    const uint64_t gen;
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::function<void()>> q;
    std::vector<std::thread> threads;  // never joined: a Pool lives for the process
  };

  Pool* current() {
    uint64_t g = fork_generation();
    Pool* p = pool_.load(std::memory_order_acquire);
    if (p != nullptr && p->gen == g) return p;
    Pool* fresh = new Pool(g);
    if (pool_.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return fresh;
    delete fresh;  // another thread of this process installed one first
    return p;
  }

  int (*wanted_)();
  std::atomic<Pool*> pool_{nullptr};
};

}  // namespace hauler::io
