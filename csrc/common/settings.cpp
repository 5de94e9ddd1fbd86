#include "settings.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <thread>

#include "status.hpp"

namespace hauler::settings {

namespace {

struct IntSetting {
  const char* name;
  int64_t fallback;
  int64_t min;
  std::atomic<int64_t> override_value{-1};
};

IntSetting g_threads{"HAULER_THREADS", 0, 0};
IntSetting g_parallel_min{"HAULER_PACK_PARALLEL_MIN", int64_t(1) << 20, 0};
IntSetting g_stream_min{"HAULER_PACK_STREAM_MIN", int64_t(16) << 20, 0};

IntSetting g_gather_threads{"HAULER_GATHER_THREADS", 0, 0};
IntSetting g_gather_parallel_min{"HAULER_GATHER_PARALLEL_MIN", int64_t(256) << 10, 0};
IntSetting g_gather_stream_min{"HAULER_GATHER_STREAM_MIN", int64_t(16) << 20, 0};
IntSetting g_gather_prefetch{"HAULER_GATHER_PREFETCH", 4096, 0};
IntSetting g_gather_gpu_blocks{"HAULER_GATHER_GPU_BLOCKS", 0, 0};

int64_t read(IntSetting& s) {
  int64_t o = s.override_value.load(std::memory_order_relaxed);
  if (o >= 0) return o;
  const char* v = std::getenv(s.name);
  if (v == nullptr || *v == '\0') return s.fallback;
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || x < s.min)
    fail(Status::invalid_argument, std::string(s.name) + "='" + v + "' is not an integer >= " +
                                       std::to_string(s.min));
  return x;
}

}  // namespace

int threads() {
  int64_t t = read(g_threads);
  if (t == 0) t = std::max(1u, std::thread::hardware_concurrency());
  return static_cast<int>(std::min<int64_t>(t, 1024));
}

int64_t pack_parallel_min() { return read(g_parallel_min); }

int64_t pack_stream_min() { return read(g_stream_min); }

int gather_threads() {
  int64_t t = read(g_gather_threads);
  if (t == 0) return threads();
  return static_cast<int>(std::min<int64_t>(t, 1024));
}

int64_t gather_parallel_min() { return read(g_gather_parallel_min); }
int64_t gather_stream_min() { return read(g_gather_stream_min); }
int64_t gather_prefetch() { return read(g_gather_prefetch); }
int64_t gather_gpu_blocks() { return read(g_gather_gpu_blocks); }

void set_override(const std::string& name, int64_t value) {
  IntSetting* s = nullptr;
  for (IntSetting* x : {&g_threads, &g_parallel_min, &g_stream_min, &g_gather_threads, &g_gather_parallel_min,
                        &g_gather_stream_min, &g_gather_prefetch, &g_gather_gpu_blocks})
    if (name == x->name) s = x;
  if (s == nullptr) fail(Status::invalid_argument, "unknown run-time setting '" + name + "'");
  s->override_value.store(value < 0 ? -1 : value, std::memory_order_relaxed);
}

}  // namespace hauler::settings
