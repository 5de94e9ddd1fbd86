// Core I/O engine tests, independent of Python: random unaligned writes and
// reads on both backends (O_DIRECT and buffered) checked against a model of
// the file and the bytes read back with plain pread; reads past the end, a
// closed handle, futures; io_uring registration on and off; a forked child using
// the engine the parent used. Run under ASan/UBSan by scripts/core_tests.sh --sanitize.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/status.hpp"
#include "io/io.hpp"
#include "check.hpp"

using namespace hauler;

static std::mt19937_64 rng(12345);
static int64_t rnd(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }

static std::vector<uint8_t> disk(const std::string& path) {
  std::vector<uint8_t> v;
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return v;
  uint8_t b[65536];
  ssize_t r;
  while ((r = ::read(fd, b, sizeof b)) > 0) v.insert(v.end(), b, b + r);
  ::close(fd);
  return v;
}

static bool random_ops(const std::string& path, int direct) {
  ::unlink(path.c_str());
  io::File f(path, "w+", direct);
  std::vector<uint8_t> model;
  std::vector<uint8_t> mem(600000 + 8192);
  for (int it = 0; it < 60; ++it) {
    int64_t len = rnd(1, 300000), off = rnd(0, 250000), shift = rnd(0, 4095);
    uint8_t* p = mem.data() + shift;
    for (int64_t i = 0; i < len; ++i) p[i] = static_cast<uint8_t>(rnd(0, 255));
    CHECK(f.write(p, len, off) == len, "write");
    if (static_cast<int64_t>(model.size()) < off + len) model.resize(off + len, 0);
    std::memcpy(model.data() + off, p, len);
    CHECK(disk(path) == model, "file differs from the model after write len=%lld off=%lld shift=%lld direct=%d",
          (long long)len, (long long)off, (long long)shift, (int)f.direct());
    // read a random range back into a poisoned, misaligned buffer
    int64_t roff = rnd(0, model.size() - 1), rlen = rnd(1, model.size() - roff), rs = rnd(0, 4095);
    std::vector<uint8_t> out(rlen + rs + 64, 0xEE);
    CHECK(f.read(out.data() + rs, rlen, roff) == rlen, "read");
    CHECK(std::memcmp(out.data() + rs, model.data() + roff, rlen) == 0, "read bytes differ");
    for (int64_t i = 0; i < rs; ++i) CHECK(out[i] == 0xEE, "wrote before the buffer");
    for (size_t i = rs + rlen; i < out.size(); ++i) CHECK(out[i] == 0xEE, "wrote past the buffer");
  }
  // past the end: out_of_range, nothing reported as whole
  std::vector<uint8_t> out(model.size() + 10);
  try {
    f.read(out.data(), model.size() + 1, 0);
    CHECK(false, "read past the end did not throw");
  } catch (const Error& e) {
    CHECK(e.status() == Status::out_of_range, "past the end: status %d", (int)e.status());
  }
  // futures
  auto fut = io::submit(f.state(), io::Op::read, out.data(), model.size(), 0);
  CHECK(fut->get() == static_cast<int64_t>(model.size()), "future read");
  CHECK(std::memcmp(out.data(), model.data(), model.size()) == 0, "future bytes");
  f.close();
  try {
    f.read(out.data(), 1, 0);
    CHECK(false, "read after close did not throw");
  } catch (const Error& e) {
    CHECK(e.status() == Status::io_error && std::strstr(e.what(), "EBADF"), "closed: %s", e.what());
  }
  ::unlink(path.c_str());
  return true;
}

// The engine after fork(): the child (its own threads and ring; alarm() turns a hang into a
// failure) runs the random test on its own file; the parent runs it again after.
static bool forked_ops(const std::string& path) {
  std::fflush(stdout);  // else the child would print the parent's buffered output again
  pid_t pid = ::fork();
  if (pid == 0) {
    ::alarm(120);
    bool ok = random_ops(path + ".child", 1) && g_fail == 0;
    std::fflush(stdout);
    ::_exit(ok ? 0 : 1);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "forked child failed: status %d", status);
  return random_ops(path, 1);
}

int main() {
  char tmpl[] = "/tmp/hauler-core-io-XXXXXX";
  const char* dir = mkdtemp(tmpl);
  if (!dir) return 2;
  std::string path = std::string(dir) + "/f";
  for (const char* be : {"io_uring", "threads"}) {
    setenv("HAULER_IO_BACKEND", be, 1);
    std::string why;
    if (std::string(be) == "io_uring" && !io::uring_backend().probe(&why)) {
      std::printf("skip io_uring: %s\n", why.c_str());
      continue;
    }
    for (int64_t ts : {4096, 65536, 1 << 20}) {
      setenv("HAULER_IO_TASK_SIZE", std::to_string(ts).c_str(), 1);
      for (int direct : {1, 0}) {
        if (random_ops(path, direct)) ++g_pass;
      }
    }
    setenv("HAULER_IO_REGISTER", "0", 1);
    if (random_ops(path, 1)) ++g_pass;
    unsetenv("HAULER_IO_REGISTER");
    if (forked_ops(path)) ++g_pass;
  }
  rmdir(dir);
  std::printf("test_io: %d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
