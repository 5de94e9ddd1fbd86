// The shim's settings (read once after MPI_Init through the core's table and parser), its log,
// and the model file that `hauler-bench calibrate` writes.
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/settings.hpp"
#include "shim.hpp"

namespace shim {

Config g_config;
std::atomic<bool> g_paused_by_pcontrol{false};
bool g_time_packing = false;
int g_world_rank = -1;

#if defined(OPEN_MPI)
constexpr const char* kFlavour = "openmpi";
#elif defined(MPICH_VERSION)
constexpr const char* kFlavour = "mpich";
#else
constexpr const char* kFlavour = "mpi";
#endif

namespace {

std::string env_str(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

// Where `hauler-bench calibrate` writes its model by default (runtime/interpose.py says the same):
// $XDG_CONFIG_HOME/hauler/interpose-model.txt, else ~/.config/hauler/interpose-model.txt.
std::string default_model_path() {
  std::string base = env_str("XDG_CONFIG_HOME");
  if (base.empty()) {
    std::string home = env_str("HOME");
    if (home.empty()) return std::string();
    base = home + "/.config";
  }
  return base + "/hauler/interpose-model.txt";
}

// named: HAULER_INTERPOSE_MODEL named the file, so a file that cannot be read is worth a warning;
// the calibrated default is only read when it exists. A file with a line the shim does not
// understand (unknown key, garbage, a bad number) is not half used: rank 0 names the first such
// line once and the built-in model decides.
void load_model(const std::string& path, bool named) {
  Config& g = g_config;
  FILE* f = std::fopen(path.c_str(), "r");
  if (!f) {
    if (named && g_world_rank <= 0) logf(kWarning, "HAULER_INTERPOSE_MODEL=%s cannot be read; built-in defaults", path.c_str());
    return;
  }
  Config m;  // the built-in values, overwritten line by line
  char key[128];
  char line[512];
  int lineno = 0;
  const char* bad = nullptr;
  while (!bad && std::fgets(line, sizeof line, f)) {
    ++lineno;
    if (line[0] == '#' || std::sscanf(line, "%127s", key) != 1) continue;
    // "key value" for every flavour, "<flavour>.key value" for this one (hauler-bench calibrate)
    const char* k = key;
    const char* dot = std::strchr(key, '.');
    if (dot) {
      if (std::strncmp(key, kFlavour, static_cast<size_t>(dot - key)) != 0 || kFlavour[dot - key] != '\0') continue;
      k = dot + 1;
    }
    char where[16], rest[2];
    long long block = 0, bytes = 0, val = 0;
    double speedup = 0;
    if (std::strcmp(k, "grid") == 0) {  // grid peer|self BLOCK BYTES SPEEDUP
      if (std::sscanf(line, "%*s %15s %lld %lld %lf %1s", where, &block, &bytes, &speedup, rest) == 4 && block > 0 &&
          bytes > 0 && speedup >= 0 && (std::strcmp(where, "peer") == 0 || std::strcmp(where, "self") == 0))
        m.grid[where[0] == 's'].push_back(Config::Cell{octaves(block), octaves(bytes), speedup});
      else
        bad = "want: grid peer|self BLOCK BYTES SPEEDUP (sizes above 0)";
      continue;
    }
    int64_t* field = std::strcmp(k, "max_block") == 0         ? &m.max_block
                     : std::strcmp(k, "min_bytes") == 0       ? &m.min_bytes
                     : std::strcmp(k, "gpu_oneshot_max") == 0 ? &m.gpu_oneshot_max
                                                              : nullptr;
    if (!field) bad = "unknown key (known: max_block, min_bytes, gpu_oneshot_max, grid)";
    else if (std::sscanf(line, "%*s %lld %1s", &val, rest) != 1 || val < 0) bad = "want: KEY NUMBER (at least 0)";
    else *field = val;
  }
  std::fclose(f);
  if (bad) {
    if (g_world_rank <= 0)
      logf(kError, "HAULER_INTERPOSE_MODEL %s line %d: %s; the built-in model decides", path.c_str(), lineno, bad);
    return;
  }
  g.max_block = m.max_block;
  g.min_bytes = m.min_bytes;
  g.gpu_oneshot_max = m.gpu_oneshot_max;
  g.grid[0] = std::move(m.grid[0]);
  g.grid[1] = std::move(m.grid[1]);
  logf(kInfo, "model %s: max_block=%lld min_bytes=%lld gpu_oneshot_max=%lld grid peer=%zu self=%zu cells",
       path.c_str(), (long long)g.max_block, (long long)g.min_bytes, (long long)g.gpu_oneshot_max,
       g.grid[0].size(), g.grid[1].size());
}

}  // namespace

void logf(int level, const char* fmt, ...) {
  if (level < g_config.log) return;
  static const char* names[] = {"debug", "info", "warning", "error", "critical"};
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "hauler-interpose[%d] %s: %s\n", g_world_rank, names[level], buf);
}

// Linear between powers of two: enough to find the nearest measured cell (and no libm for the
// shim to link).
double octaves(int64_t x) {
  if (x < 1) x = 1;
  int e = 63 - __builtin_clzll(static_cast<unsigned long long>(x));
  return e + (double(x) / double(1ull << e) - 1.0);
}

namespace hs = hauler::settings;

namespace {

// A setting through the core's table: the parser and the message of Python and the core. An invalid
// value is reported here, once at MPI_Init, whatever the log level, and the caller turns the
// feature it steers off (pass-through, never "on"); `then` says what happens instead.
bool read_setting(hs::Id id, hs::Value* v, const char* then) {
  std::string error;
  if (hs::get(id, v, &error)) return true;
  std::fprintf(stderr, "hauler-interpose[%d] error: %s; %s\n", g_world_rank, error.c_str(), then);
  *v = hs::Value();
  return false;
}

bool read_flag(hs::Id id, const char* then) {
  hs::Value v;
  return read_setting(id, &v, then) && v.number != 0;
}

}  // namespace

void configure() {
  Config& g = g_config;
  hs::Value v;
  g.log = read_setting(hs::Id::interpose_log, &v, "the log level is warning") ? int(v.number) : kWarning;
  // One packing thread per rank unless HAULER_THREADS says otherwise: ranks share the cores.
  const char* t = std::getenv("HAULER_THREADS");
  if (t == nullptr || t[std::strspn(t, " \t\n\r\f\v")] == '\0') hs::set("HAULER_THREADS", "1");
  // The engine reads these on every pack: with one invalid, every message goes to the library.
  bool engine = true;
  for (hs::Id id : {hs::Id::threads, hs::Id::pack_parallel_min, hs::Id::pack_stream_min})
    engine = read_setting(id, &v, "every message goes to the library unchanged") && engine;
  g.pack = read_flag(hs::Id::interpose_pack, "MPI_Pack/MPI_Unpack go to the library") && engine;
  g.p2p = read_flag(hs::Id::interpose_p2p, "point-to-point messages go to the library") && engine;
  g.coll = read_flag(hs::Id::interpose_coll, "collectives go to the library") && engine;
  g.gpu = read_flag(hs::Id::interpose_gpu, "device buffers go to the library") && engine;
  g.gpu = read_setting(hs::Id::cuda_lib, &v, "device buffers go to the library") && g.gpu;
  g.report = read_setting(hs::Id::interpose_report, &v, "no report") ? v.text : std::string();
  g_time_packing = !g.report.empty() && g.report != "0";
  // the named file; "builtin": the defaults above; unset: the calibrated model if one was written
  if (!read_setting(hs::Id::interpose_model, &v, "the built-in model decides")) g.model.clear();
  else if (!v.is_set) g.model = default_model_path();
  else g.model = v.text == "builtin" ? std::string() : v.text;
  if (!g.model.empty()) load_model(g.model, v.is_set);
  g.trials = read_setting(hs::Id::interpose_trials, &v, "the model decides alone") ? int(v.number) : 0;
  g.pipeline_min = read_setting(hs::Id::interpose_pipeline, &v, "no message is pipelined") ? v.number : 0;
  if (g.pipeline_min > 0 && g.pipeline_min < 4096) {
    std::fprintf(stderr, "hauler-interpose[%d] error: HAULER_INTERPOSE_PIPELINE=%lld: want 0 (off) or at least 4096 "
                 "bytes; no message is pipelined\n", g_world_rank, (long long)g.pipeline_min);
    g.pipeline_min = 0;
  }
  if (read_setting(hs::Id::interpose_pipeline_chunk, &v, "no message is pipelined")) g.pipeline_chunk = v.number;
  else g.pipeline_min = 0;
  g.on = read_flag(hs::Id::interpose, "every call goes to the library");
}

}  // namespace shim
