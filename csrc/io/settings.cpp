// Settings of the I/O engine (read through csrc/common/settings: cached, overridden by
// hauler.config.set) and the backend choice.
#include <mutex>
#include <string>

#include "../common/settings.hpp"
#include "io.hpp"

namespace hauler::io {

using settings::Id;
using settings::number;

int queue_depth() { return static_cast<int>(number(Id::io_queue_depth)); }
int64_t task_size() { return (number(Id::io_task_size) + kAlign - 1) / kAlign * kAlign; }  // whole aligned blocks
int64_t bounce_pool_bytes() { return number(Id::io_bounce_pool); }
int io_threads() { return static_cast<int>(number(Id::io_threads)); }
int request_threads() { return static_cast<int>(number(Id::io_requests)); }
int direct_mode() { return static_cast<int>(number(Id::io_direct)); }
int register_mode() { return static_cast<int>(number(Id::io_register)); }

namespace {
std::once_flag g_probe_once;
bool g_uring_ok = false;
std::string g_uring_why;
void probe_uring() {
  std::call_once(g_probe_once, [] { g_uring_ok = uring_backend().probe(&g_uring_why); });
}
// HAULER_IO_BACKEND: auto, io_uring or threads.
std::string backend_name() { return settings::text(Id::io_backend); }
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
