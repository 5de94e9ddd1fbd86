// The shim's settings (HAULER_INTERPOSE*, read once after MPI_Init), its log, and the model file
// that `hauler-bench calibrate` writes.
#include <cctype>
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

bool env_bool(const char* name, bool dflt) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return dflt;
  std::string s(v);
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s == "0" || s == "false" || s == "no" || s == "off") return false;
  return true;
}

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
// the calibrated default is only read when it exists.
void load_model(const std::string& path, bool named) {
  Config& g = g_config;
  FILE* f = std::fopen(path.c_str(), "r");
  if (!f) {
    if (named) logf(kWarning, "HAULER_INTERPOSE_MODEL=%s cannot be read; built-in defaults", path.c_str());
    return;
  }
  char key[128];
  long long val;
  char line[512];
  while (std::fgets(line, sizeof line, f)) {
    if (line[0] == '#' || std::sscanf(line, "%127s", key) != 1) continue;
    bool number = std::sscanf(line, "%*s %lld", &val) == 1;
    // "key value" for every flavour, "<flavour>.key value" for this one (hauler-bench calibrate)
    const char* k = key;
    const char* dot = std::strchr(key, '.');
    if (dot) {
      if (std::strncmp(key, kFlavour, static_cast<size_t>(dot - key)) != 0 || kFlavour[dot - key] != '\0') continue;
      k = dot + 1;
    }
    char where[16];
    long long block = 0, bytes = 0;
    double speedup = 0;
    if (std::strcmp(k, "grid") == 0) {  // grid peer|self BLOCK BYTES SPEEDUP
      if (std::sscanf(line, "%*s %15s %lld %lld %lf", where, &block, &bytes, &speedup) == 4 && block > 0 &&
          bytes > 0 && (std::strcmp(where, "peer") == 0 || std::strcmp(where, "self") == 0))
        g.grid[where[0] == 's'].push_back(Config::Cell{octaves(block), octaves(bytes), speedup});
      continue;
    }
    if (!number) continue;
    if (std::strcmp(k, "max_block") == 0) g.max_block = val;
    else if (std::strcmp(k, "min_bytes") == 0) g.min_bytes = val;
    else if (std::strcmp(k, "gpu_oneshot_max") == 0) g.gpu_oneshot_max = val;
  }
  std::fclose(f);
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

void configure() {
  Config& g = g_config;
  g.pack = env_bool("HAULER_INTERPOSE_PACK", true);
  g.p2p = env_bool("HAULER_INTERPOSE_P2P", true);
  g.coll = env_bool("HAULER_INTERPOSE_COLL", true);
  g.gpu = env_bool("HAULER_INTERPOSE_GPU", true);
  std::string lv = env_str("HAULER_INTERPOSE_LOG");
  static const char* names[] = {"debug", "info", "warning", "error", "critical"};
  for (int i = 0; i < 5; ++i)
    if (lv == names[i]) g.log = i;
  g.report = env_str("HAULER_INTERPOSE_REPORT");
  g_time_packing = !g.report.empty() && g.report != "0";
  // the named file; "builtin": the defaults above; unset: the calibrated model if one was written
  g.model = env_str("HAULER_INTERPOSE_MODEL");
  bool named = !g.model.empty();
  if (g.model == "builtin") g.model.clear();
  else if (!named) g.model = default_model_path();
  if (!g.model.empty()) load_model(g.model, named);
  // One packing thread per rank unless HAULER_THREADS says otherwise: ranks share the cores.
  const char* t = std::getenv("HAULER_THREADS");
  if (t == nullptr || *t == '\0') hauler::settings::set_override("HAULER_THREADS", 1);
  // The engine reads its settings from the environment on every pack (getenv: ~40 ns, a tenth of
  // a small message's cost); the shim's environment is fixed at launch, so read them once.
  try {
    namespace hs = hauler::settings;
    hs::set_override("HAULER_THREADS", hs::threads());
    hs::set_override("HAULER_PACK_PARALLEL_MIN", hs::pack_parallel_min());
    hs::set_override("HAULER_PACK_STREAM_MIN", hs::pack_stream_min());
  } catch (const std::exception& e) {
    logf(kWarning, "%s; built-in defaults", e.what());
  }
  g.on = env_bool("HAULER_INTERPOSE", true);
}

}  // namespace shim
