#include "gpu.hpp"

#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "cuda_driver.hpp"
#include "settings.hpp"
#include "status.hpp"

namespace hauler::gpu {

static_assert(HAULER_GPU_EINVAL == static_cast<int>(Status::invalid_argument), "ABI codes follow Status");
static_assert(HAULER_GPU_ERANGE == static_cast<int>(Status::out_of_range), "ABI codes follow Status");
static_assert(HAULER_GPU_ENODEV == static_cast<int>(Status::no_device), "ABI codes follow Status");
static_assert(HAULER_GPU_EINTERNAL == static_cast<int>(Status::internal), "ABI codes follow Status");

namespace {

struct Loaded {
  bool ok = false;
  std::string message;
  std::string library;
  Backend backend{};
  HaulerDeviceInfo device{};
};

std::atomic<bool> g_emulation{false};

const char kAnchor = 0;  // an address inside this module, for dladdr

bool file_exists(const std::string& p, bool* is_dir) {
  struct stat st;
  if (stat(p.c_str(), &st) != 0) return false;
  *is_dir = S_ISDIR(st.st_mode);
  return true;
}

std::string driver_version_string(int v) {
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

template <class F>
bool bind(void* lib, const char* sym, F* out, Loaded& l) {
  *out = reinterpret_cast<F>(dlsym(lib, sym));
  if (*out) return true;
  l.message = "GPU library " + l.library + " lacks entry point " + sym + " (stale build? reinstall hauler)";
  return false;
}

Loaded load() {
  Loaded l;
  // 1. The driver.
  const cuda::Driver* driver = cuda::driver(&l.message);
  if (!driver) return l;
  if (!driver->init || !driver->device_get_count || !driver->driver_get_version) {
    l.message = "no driver (libcuda.so.1 lacks cuInit, cuDeviceGetCount or cuDriverGetVersion)";
    return l;
  }
  // 2. A device. A driver without a GPU fails cuInit with CUDA_ERROR_NO_DEVICE.
  int rc = driver->init(0);
  if (rc == cuda::kErrorNoDevice) {
    l.message = "no device (cuInit returned CUDA_ERROR_NO_DEVICE)";
    return l;
  }
  if (rc != 0) {
    l.message = driver->error(rc) + " initializing CUDA";
    return l;
  }
  int count = 0;
  rc = driver->device_get_count(&count);
  if (rc != 0) {
    l.message = driver->error(rc) + " counting CUDA devices";
    return l;
  }
  if (count == 0) {
    l.message = "no device (cuDeviceGetCount returned 0)";
    return l;
  }
  int driver_version = 0;
  driver->driver_get_version(&driver_version);  // informational only
  // 3. The kernels.
  try {
    l.library = library_path();
  } catch (const std::exception& e) {  // an invalid HAULER_CUDA_LIB: no GPU path, said why
    l.message = e.what();
    return l;
  }
  bool is_dir = false;
  if (!file_exists(l.library, &is_dir) || is_dir) {
    l.message = "GPU library not built (libhauler_cuda.so not found at " + l.library + ")";
    return l;
  }
  void* lib = dlopen(l.library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* why = dlerror();
    l.message = "GPU library " + l.library + " failed to load: " + (why ? why : "unknown dlopen error");
    return l;
  }
  Backend b{};
  b.name = "cuda";
  if (!bind(lib, "hauler_cuda_abi", &b.abi, l) || !bind(lib, "hauler_cuda_init", &b.init, l) ||
      !bind(lib, "hauler_cuda_pack", &b.pack, l) || !bind(lib, "hauler_cuda_synchronize", &b.synchronize, l) ||
      !bind(lib, "hauler_cuda_gather", &b.gather, l) || !bind(lib, "hauler_cuda_host_register", &b.host_register, l) ||
      !bind(lib, "hauler_cuda_host_unregister", &b.host_unregister, l) ||
      !bind(lib, "hauler_cuda_scatter", &b.scatter, l) || !bind(lib, "hauler_cuda_kv_copy", &b.kv_copy, l))
    return l;
  if (b.abi() != HAULER_GPU_ABI) {
    l.message = "GPU library " + l.library + " has ABI version " + std::to_string(b.abi()) + ", the core expects " +
                std::to_string(HAULER_GPU_ABI) + " (stale build? reinstall hauler)";
    return l;
  }
  char err[512] = "";
  rc = b.init(&l.device, err, sizeof err);
  if (rc == HAULER_GPU_ENODEV) {
    l.message = std::string("no device (") + err + ")";
    return l;
  }
  if (rc != 0) {
    l.message = std::string("GPU library failed to initialize CUDA: ") + err;
    return l;
  }
  if (l.device.driver_version == 0) l.device.driver_version = driver_version;
  l.ok = true;
  l.backend = b;
  l.message = std::string("CUDA available: ") + l.device.name + ", driver " +
              driver_version_string(l.device.driver_version) +
              (l.device.device_count > 1 ? " (" + std::to_string(l.device.device_count) + " devices)" : "");
  return l;
}

const Loaded& loaded() {
  static const Loaded l = load();  // once, thread-safe (magic static)
  return l;
}

}  // namespace

Status status_of(int rc) {
  switch (rc) {
    case HAULER_GPU_EINVAL: return Status::invalid_argument;
    case HAULER_GPU_ERANGE: return Status::out_of_range;
    case HAULER_GPU_ENODEV: return Status::no_device;
    default: return Status::internal;
  }
}

namespace {

std::string parent_dir(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return path.substr(0, slash == 0 ? 1 : slash);
}

}  // namespace

std::string library_path() {
  std::string p = settings::text(settings::Id::cuda_lib);
  if (!p.empty()) {
    bool is_dir = false;
    if (file_exists(p, &is_dir) && is_dir) p += "/libhauler_cuda.so";
    return p;
  }
  Dl_info info;
  if (dladdr(&kAnchor, &info) && info.dli_fname && *info.dli_fname) return library_near(info.dli_fname);
  return "./libhauler_cuda.so";
}

std::string library_near(const std::string& module) {
  const std::string dir = parent_dir(module);
  // The Python extension sits beside the library in the package; the MPI shim, which links the
  // core statically, two folders below it (<package>/interpose/<flavour>/).
  const std::string beside = dir + "/libhauler_cuda.so";
  const std::string package = parent_dir(parent_dir(dir)) + "/libhauler_cuda.so";
  bool is_dir = false;
  if (!file_exists(beside, &is_dir) && file_exists(package, &is_dir) && !is_dir) return package;
  return beside;
}

const Backend* backend() {
  if (g_emulation.load(std::memory_order_acquire)) return &emulation_backend();
  const Loaded& l = loaded();
  return l.ok ? &l.backend : nullptr;
}

bool available() { return backend() != nullptr; }

GpuStatus status() {
  GpuStatus s;
  if (g_emulation.load(std::memory_order_acquire)) {
    s.available = true;
    s.emulated = true;
    s.message = "host emulation of the GPU kernels (testing only)";
    return s;
  }
  return loader_status();
}

GpuStatus loader_status() {
  GpuStatus s;
  const Loaded& l = loaded();
  s.available = l.ok;
  s.message = l.message;
  s.library = l.library;
  s.device = l.device;
  return s;
}

std::string status_message() { return status().message; }

void use_emulation(bool on) { g_emulation.store(on, std::memory_order_release); }

bool emulation() { return g_emulation.load(std::memory_order_acquire); }

void synchronize(void* stream) {
  const Backend* b = backend();
  if (!b) fail(Status::no_device, status_message() + ": device buffers need a GPU");
  char err[512] = "";
  int rc = b->synchronize(stream, err, sizeof err);
  if (rc != 0) fail(status_of(rc), std::string(b->name) + " synchronize: " + err);
}

namespace {

// A registration hauler made: its pages, and the host_register calls still using it.
struct Owned {
  uintptr_t lo, hi;  // [first page, end of last page)
  bool readonly;
  int users;
  const Backend* backend;  // the one that made it unregisters it
};

// One host_register call in force: the registrations of hauler's it holds (none when the range
// lies in someone else's).
struct User {
  uintptr_t p;
  std::vector<uintptr_t> holds;
};

std::mutex g_reg_mu;
std::map<uintptr_t, Owned> g_owned;  // by the address registered
std::vector<User> g_users;

std::string where(const void* p, size_t n) {
  char s[64];
  std::snprintf(s, sizeof s, "%zu bytes at %p", n, p);
  return s;
}

}  // namespace

void* host_register(void* p, size_t n, bool readonly) {
  const Backend* b = backend();
  if (!b) fail(Status::no_device, status_message() + ": registering host memory needs a GPU");
  if (!p || n == 0) fail(Status::invalid_argument, "cannot register " + where(p, n) + " for the GPU: " +
                                                       (p ? "the range is empty" : "the pointer is null"));
  const uintptr_t pg = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE)), a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t lo = a / pg * pg, hi = (a + n + pg - 1) / pg * pg;
  std::lock_guard<std::mutex> lk(g_reg_mu);
  User u{a, {}};
  for (const auto& [base, o] : g_owned) {
    if (o.lo >= hi || lo >= o.hi) continue;
    if (o.readonly && !readonly)
      fail(Status::invalid_argument, "cannot register " + where(p, n) + " writable for the GPU: it shares pages "
                                         "with a read-only registration (pin the read-only table after, or make "
                                         "both writable)");
    u.holds.push_back(base);
  }
  void* dev = nullptr;
  char err[512] = "";
  int rc = b->host_register(p, n, readonly ? 1 : 0, &dev, err, sizeof err);
  if (rc == HAULER_GPU_OK) {
    g_owned[a] = Owned{lo, hi, readonly, 0, b};
    u.holds.push_back(a);
  } else if (rc != HAULER_GPU_ALREADY_REGISTERED) {
    fail(status_of(rc), "registering " + where(p, n) + " for the GPU (" + b->name + "): " + err);
  }
  for (uintptr_t base : u.holds) ++g_owned[base].users;
  g_users.push_back(std::move(u));
  return dev;
}

void host_unregister(void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  // One lock across the backend calls: a register racing with the last unregister of its pages
  // must not find them still registered and take the registration for someone else's.
  std::lock_guard<std::mutex> lk(g_reg_mu);
  auto it = std::find_if(g_users.rbegin(), g_users.rend(), [a](const User& u) { return u.p == a; });
  if (it == g_users.rend()) {
    char s[48];
    std::snprintf(s, sizeof s, "%p", p);
    fail(Status::invalid_argument, std::string("host memory at ") + s + " has no GPU registration of hauler's in "
                                   "force (unregistered twice, or never registered)");
  }
  const std::vector<uintptr_t> holds = std::move(it->holds);
  g_users.erase(std::next(it).base());
  std::string errors;
  for (uintptr_t base : holds) {
    auto oi = g_owned.find(base);
    if (--oi->second.users > 0) continue;
    const Backend* b = oi->second.backend;
    g_owned.erase(oi);
    char err[512] = "";
    if (b->host_unregister(reinterpret_cast<void*>(base), err, sizeof err) != 0)
      errors += std::string(errors.empty() ? "" : "; ") + b->name + ": " + err;
  }
  if (!errors.empty()) fail(Status::internal, "unregistering host memory from the GPU: " + errors);
}

int host_registration_users(const void* p) {
  std::lock_guard<std::mutex> lk(g_reg_mu);
  auto it = g_owned.find(reinterpret_cast<uintptr_t>(p));
  return it == g_owned.end() ? 0 : it->second.users;
}

}  // namespace hauler::gpu
