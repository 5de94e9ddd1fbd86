// The shim's counters (one set per thread) and the per-rank report written at MPI_Finalize
// (HAULER_INTERPOSE_REPORT).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "shim.hpp"

namespace shim {

namespace {

struct Totals {
#define HAULER_FIELD(n) long long n = 0;
  HAULER_STATS(HAULER_FIELD)
#undef HAULER_FIELD
};

std::mutex g_thread_stats_mu;
std::vector<Stats*> g_thread_stats;  // every thread's, never freed: a thread's counts outlive it

Totals totals() {
  Totals t;
  std::lock_guard<std::mutex> lk(g_thread_stats_mu);
  for (Stats* s : g_thread_stats) {
#define HAULER_FIELD(n) t.n += s->n.v.load(std::memory_order_relaxed);
    HAULER_STATS(HAULER_FIELD)
#undef HAULER_FIELD
  }
  return t;
}

}  // namespace

HAULER_TLS Stats* tl_thread_stats = nullptr;

Stats& new_thread_stats() {
  auto* s = new Stats;
  std::lock_guard<std::mutex> lk(g_thread_stats_mu);
  g_thread_stats.push_back(s);
  tl_thread_stats = s;
  return *s;
}

void count_fortran() { stats().fortran++; }

namespace {

// HAULER_INTERPOSE_REPORT's file for this rank, never one file shared by the ranks: every %r
// becomes the rank; a directory (existing, or named with a trailing '/') gets
// hauler-interpose.<rank>.txt; any other name gets .<rank> appended.
std::string report_path(std::string path, int rank) {
  const std::string r = std::to_string(rank);
  bool named = false;
  for (size_t at = path.find("%r"); at != std::string::npos; at = path.find("%r", at + r.size())) {
    path.replace(at, 2, r);
    named = true;
  }
  if (named) return path;
  struct stat st {};
  if (path.back() == '/' || (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)))
    return path + (path.back() == '/' ? "" : "/") + "hauler-interpose." + r + ".txt";
  return path + "." + r;
}

}  // namespace

void write_report() {
  const Config& g = g_config;
  if (g.report.empty() || g.report == "0") return;
  std::string path = g.report;
  FILE* f = stderr;
  bool close = false;
  if (path != "1" && path != "stderr") {
    path = report_path(path, g_world_rank);
    // not fopen("a"): a symlink planted at the name is refused, and a new report is private
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
    f = fd < 0 ? nullptr : ::fdopen(fd, "a");
    if (!f) {
      int err = errno;
      if (fd >= 0) ::close(fd);
      logf(kError, "HAULER_INTERPOSE_REPORT=%s cannot be written (%s)", path.c_str(), std::strerror(err));
      return;
    }
    close = true;
  }
  Totals t = totals();
  std::fprintf(f,
               "hauler-interpose rank %d: calls=%lld packed_msgs=%lld unpacked_msgs=%lld bytes_packed=%lld "
               "bytes_unpacked=%lld pack_ms=%.3f passthrough=%lld contiguous=%lld mpi_pack=%lld "
               "coll_packed=%lld coll_passthrough=%lld types_decoded=%lld types_refused=%lld device_passthrough=%lld "
               "cuda_driver=%d fortran=%lld gpu_packed=%lld gpu_unpacked=%lld gpu_device=%lld gpu_oneshot=%lld "
               "staging_held=%lld cuda_queries=%lld paused=%lld trial_lib=%lld trial_pack=%lld kept_lib=%lld "
               "kept_pack=%lld pipe_sent=%lld pipe_chunks=%lld pipe_received=%lld pipe_watched=%lld\n",
               g_world_rank, t.calls, t.packed_msgs,
               t.unpacked_msgs, t.bytes_packed,
               t.bytes_unpacked, t.pack_ns / 1e6, t.passthrough,
               t.contiguous, t.mpi_pack_calls,
               t.coll_packed, t.coll_passthrough,
               t.types_decoded, t.types_refused,
               (long long)g_device_buffers_to_library.load(), cuda_driver_seen() ? 1 : 0,
               t.fortran, t.gpu_packed, t.gpu_unpacked,
               t.gpu_device, t.gpu_oneshot, (long long)g_staging_buffers_held.load(),
               (long long)g_cuda_pointer_queries.load(), t.paused, t.trial_lib, t.trial_pack, t.kept_lib,
               t.kept_pack, t.pipe_sent, t.pipe_chunks, t.pipe_received, t.pipe_watched);
  write_selections(f, g_world_rank);
  if (close) std::fclose(f);
}

}  // namespace shim
