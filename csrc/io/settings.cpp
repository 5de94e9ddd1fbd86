// Settings of the I/O engine, read from the HAULER_IO_* variables on every
// use (hauler.config.set exports its overrides to the environment), and the
// backend choice.
#include <cerrno>
#include <cstdlib>
#include <mutex>
#include <string>

#include "io.hpp"

namespace hauler::io {

namespace {
int64_t read_int(const char* name, int64_t fallback, int64_t min, int64_t max) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v, &end, 10);
  while (end && *end == ' ') ++end;
  if (errno != 0 || end == v || *end != '\0' || x < min || x > max)
    fail(Status::invalid_argument, std::string(name) + "='" + v + "' is not an integer in [" +
                                       std::to_string(min) + ", " + std::to_string(max) + "]");
  return x;
}
}  // namespace

int queue_depth() { return static_cast<int>(read_int("HAULER_IO_QUEUE_DEPTH", 32, 1, 4096)); }
int64_t task_size() {
  int64_t t = read_int("HAULER_IO_TASK_SIZE", int64_t(1) << 20, 1, int64_t(1) << 30);  // io_uring: < 4 GiB
  return (t + kAlign - 1) / kAlign * kAlign;  // whole aligned blocks
}
int64_t bounce_pool_bytes() { return read_int("HAULER_IO_BOUNCE_POOL", int64_t(32) << 20, 0, int64_t(1) << 50); }
int io_threads() { return static_cast<int>(read_int("HAULER_IO_THREADS", 16, 1, 1024)); }
int request_threads() { return static_cast<int>(read_int("HAULER_IO_REQUESTS", 4, 1, 256)); }
namespace {
int read_bool(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (v != nullptr) {
    std::string s = v;
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (s == "true" || s == "yes" || s == "on") return 1;
    if (s == "false" || s == "no" || s == "off") return 0;
  }
  return static_cast<int>(read_int(name, fallback, 0, 1));
}
}  // namespace

int direct_mode() { return read_bool("HAULER_IO_DIRECT", 1); }
int register_mode() { return read_bool("HAULER_IO_REGISTER", 1); }

namespace {
std::once_flag g_probe_once;
bool g_uring_ok = false;
std::string g_uring_why;
void probe_uring() {
  std::call_once(g_probe_once, [] { g_uring_ok = uring_backend().probe(&g_uring_why); });
}
std::string backend_name() {
  const char* v = std::getenv("HAULER_IO_BACKEND");
  std::string s = v ? v : "";
  while (!s.empty() && s.back() == ' ') s.pop_back();
  while (!s.empty() && s.front() == ' ') s.erase(s.begin());
  if (s.empty()) s = "auto";
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s == "uring") s = "io_uring";
  if (s != "auto" && s != "io_uring" && s != "threads")
    fail(Status::invalid_argument, "HAULER_IO_BACKEND='" + std::string(v) + "': expected auto, io_uring or threads");
  return s;
}
}  // namespace

const BackendOps& backend() {
  std::string want = backend_name();
  if (want == "threads") return threads_backend();
  probe_uring();
  if (g_uring_ok) return uring_backend();
  if (want == "io_uring")
    fail(Status::invalid_argument, "HAULER_IO_BACKEND=io_uring but io_uring cannot run here: " + g_uring_why);
  return threads_backend();
}

bool backend_is_fallback() {
  std::string want = backend_name();
  if (want != "auto") return false;
  probe_uring();
  return !g_uring_ok;
}

std::string backend_description() {
  std::string want = backend_name();
  const BackendOps& b = backend();
  std::string d = b.name;
  if (want == "threads") return d + " (forced by HAULER_IO_BACKEND=threads)";
  if (backend_is_fallback()) return d + " (FALLBACK: io_uring unavailable: " + g_uring_why + ")";
  return d + "; registration: " + registration_description();
}

}  // namespace hauler::io
