// A queue of tasks served by threads that start on demand, up to a count read
// at each post (so a changed setting takes effect) and live for the process.
// The thread backend and the future-completing request threads each own one.
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hauler::io {

class TaskThreads {
 public:
  explicit TaskThreads(int (*wanted)()) : wanted_(wanted) {}

  void post(std::function<void()> fn) {
    std::lock_guard<std::mutex> g(m_);
    while (static_cast<int>(threads_.size()) < wanted_()) threads_.emplace_back([this] { loop(); });
    q_.push_back(std::move(fn));
    cv_.notify_one();
  }

 private:
  void loop() {
    while (true) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> l(m_);
        cv_.wait(l, [this] { return !q_.empty(); });
        fn = std::move(q_.front());
        q_.pop_front();
      }
      fn();
    }
  }
  int (*wanted_)();
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> q_;
  std::vector<std::thread> threads_;  // never joined: the owner lives for the process
};

}  // namespace hauler::io
