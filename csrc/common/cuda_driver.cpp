#include "cuda_driver.hpp"

#include <dlfcn.h>
#include <link.h>

#include <atomic>
#include <cstring>
#include <mutex>

namespace hauler::cuda {

namespace {

Driver g_table;                              // filled once, under g_mutex, then read-only
std::atomic<const Driver*> g_bound{nullptr};  // &g_table once filled
std::mutex g_mutex;
bool g_load_tried = false;  // driver() tried to load it (under g_mutex)
std::string g_why;          // why that failed
std::atomic<unsigned long long> g_seen_adds{~0ull};

// The one place hauler opens libcuda. load = false: only if the process has loaded it already.
void* open_libcuda(bool load) { return dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | (load ? 0 : RTLD_NOLOAD)); }

template <class F>
void bind(void* lib, const char* name, F* slot) {
  *slot = reinterpret_cast<F>(dlsym(lib, name));
}

// Fills the table from an open handle; called once, with g_mutex held.
const Driver* bind_all(void* lib) {
  Driver& d = g_table;
  bind(lib, "cuInit", &d.init);
  bind(lib, "cuDriverGetVersion", &d.driver_get_version);
  bind(lib, "cuGetErrorName", &d.get_error_name);
  bind(lib, "cuDeviceGetCount", &d.device_get_count);
  bind(lib, "cuDeviceGet", &d.device_get);
  bind(lib, "cuDevicePrimaryCtxRetain", &d.primary_ctx_retain);
  bind(lib, "cuDevicePrimaryCtxRelease_v2", &d.primary_ctx_release);
  bind(lib, "cuCtxPushCurrent_v2", &d.ctx_push_current);
  bind(lib, "cuCtxPopCurrent_v2", &d.ctx_pop_current);
  bind(lib, "cuPointerGetAttribute", &d.pointer_get_attribute);
  bind(lib, "cuMemAlloc_v2", &d.mem_alloc);
  bind(lib, "cuMemFree_v2", &d.mem_free);
  bind(lib, "cuMemcpyHtoD_v2", &d.memcpy_htod);
  bind(lib, "cuMemcpyDtoH_v2", &d.memcpy_dtoh);
  bind(lib, "cuIpcGetMemHandle", &d.ipc_get_mem_handle);
  bind(lib, "cuIpcOpenMemHandle_v2", &d.ipc_open_mem_handle);
  bind(lib, "cuIpcCloseMemHandle", &d.ipc_close_mem_handle);
  g_bound.store(&d, std::memory_order_release);
  return &d;
}

struct LoadScan {
  unsigned long long adds = 0;
  bool first_only = true;
  bool found = false;
};

int load_scan(struct dl_phdr_info* info, size_t, void* data) {
  auto* s = static_cast<LoadScan*>(data);
  s->adds = info->dlpi_adds;
  if (s->first_only) return 1;
  if (info->dlpi_name && std::strstr(info->dlpi_name, "libcuda.so")) {
    s->found = true;
    return 1;
  }
  return 0;
}

}  // namespace

std::string Driver::error(CUresult rc) const {
  std::string s = "driver error " + std::to_string(rc);
  const char* name = nullptr;
  if (get_error_name && get_error_name(rc, &name) == kSuccess && name) s += std::string(" (") + name + ")";
  return s;
}

const Driver* driver(std::string* why) {
  if (const Driver* d = g_bound.load(std::memory_order_acquire)) return d;
  std::lock_guard<std::mutex> lock(g_mutex);
  if (const Driver* d = g_bound.load(std::memory_order_relaxed)) return d;
  if (!g_load_tried) {
    g_load_tried = true;
    if (void* lib = open_libcuda(true)) return bind_all(lib);
    const char* e = dlerror();
    if (e && !std::strstr(e, "No such file"))
      g_why = std::string("no driver (libcuda.so.1 could not be loaded: ") + e + ")";
    else
      g_why = "no driver (libcuda.so.1 not found)";
  }
  if (why) *why = g_why;
  return nullptr;
}

const Driver* driver_if_loaded() {
  if (const Driver* d = g_bound.load(std::memory_order_acquire)) return d;
  LoadScan first;
  dl_iterate_phdr(load_scan, &first);
  if (first.adds == g_seen_adds.load(std::memory_order_relaxed)) return nullptr;
  g_seen_adds.store(first.adds, std::memory_order_relaxed);
  LoadScan all;
  all.first_only = false;
  dl_iterate_phdr(load_scan, &all);
  if (!all.found) return nullptr;
  std::lock_guard<std::mutex> lock(g_mutex);
  if (const Driver* d = g_bound.load(std::memory_order_relaxed)) return d;
  void* lib = open_libcuda(false);
  return lib ? bind_all(lib) : nullptr;
}

}  // namespace hauler::cuda
