// The thread-pool backend: pread/pwrite on a pool of HAULER_IO_THREADS
// workers (started on first use), at most queue-depth tasks of one batch at
// a time; the calling thread works too. Runs wherever io_uring cannot.
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "io.hpp"
#include "task_threads.hpp"

namespace hauler::io {

namespace {

void do_task(Task* t) {
  while (t->done < t->len) {
    ssize_t r = t->op == Op::read ? ::pread(t->fd, t->buf + t->done, static_cast<size_t>(t->len - t->done),
                                            t->off + t->done)
                                  : ::pwrite(t->fd, t->buf + t->done, static_cast<size_t>(t->len - t->done),
                                             t->off + t->done);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      t->err = errno;
      return;
    }
    if (r == 0) {
      if (t->op == Op::read) t->eof = true;
      else t->err = EIO;
      return;
    }
    t->done += r;
  }
}

// One run(): workers claim indices until the batch is exhausted or stopped.
struct Shared {
  Batch* batch;
  size_t n;
  std::mutex m;
  std::condition_variable cv;
  size_t next = 0;
  bool stop = false;
  int active = 0;  // participants still working
  std::exception_ptr err;

  void work() {
    while (true) {
      size_t i;
      Task* t = nullptr;
      {
        std::lock_guard<std::mutex> g(m);
        if (stop || next >= n) break;
        i = next++;
        try {
          t = batch->prepare(i);  // in order, under the lock
        } catch (...) {
          if (!err) err = std::current_exception();
        }
        if (t == nullptr) {
          stop = true;
          break;
        }
      }
      do_task(t);
      batch->complete(i);
    }
    std::lock_guard<std::mutex> g(m);
    if (--active == 0) cv.notify_all();
  }
};

TaskThreads& pool() {
  static TaskThreads* p = new TaskThreads(io_threads);  // never destroyed: threads outlive static teardown
  return *p;
}

bool threads_probe(std::string*) { return true; }

void threads_run(Batch& batch, size_t n, int qd) {
  if (n == 0) return;
  auto sh = std::make_shared<Shared>();
  sh->batch = &batch;
  sh->n = n;
  size_t helpers = static_cast<size_t>(qd < 1 ? 1 : qd) - 1;
  if (helpers > n - 1) helpers = n - 1;
  if (helpers > static_cast<size_t>(io_threads())) helpers = static_cast<size_t>(io_threads());
  sh->active = static_cast<int>(helpers) + 1;
  for (size_t k = 0; k < helpers; ++k) pool().post([sh] { sh->work(); });
  sh->work();
  std::unique_lock<std::mutex> l(sh->m);
  sh->cv.wait(l, [&] { return sh->active == 0; });
  if (sh->err) std::rethrow_exception(sh->err);
}

}  // namespace

const BackendOps& threads_backend() {
  static const BackendOps ops{"threads", threads_probe, threads_run};
  return ops;
}

}  // namespace hauler::io
