// Device buffers: whether a message's buffer is device memory (asked of the CUDA driver the
// program loaded), the GPU backend that packs it, and the device-side staging pools.
//
// A device pointer must never reach the host pack kernels. Device memory can only exist once the
// process has loaded the CUDA driver, so the shim asks the driver about a buffer only when
// libcuda is already loaded (dlopen RTLD_NOLOAD: the shim never loads the driver itself).
// Device and managed buffers are packed by the GPU kernels or, without a GPU backend, go to the
// (CUDA-aware) library unchanged.
#include <dlfcn.h>
#include <link.h>

#include <cstdlib>
#include <cstring>
#include <map>

#include "common/gpu.hpp"
#include "datatype/gpu_pack.hpp"
#include "shim.hpp"

namespace shim {

std::atomic<int64_t> g_device_buffers_to_library{0};
std::atomic<int64_t> g_cuda_pointer_queries{0};

namespace {

using CuPointerGetAttribute = int (*)(void*, int, unsigned long long);
std::atomic<CuPointerGetAttribute> g_cu_pointer_get_attribute{nullptr};
std::atomic<int64_t> g_cuda_driver_probes{0};                 // scans of the loaded objects for libcuda
std::atomic<unsigned long long> g_loaded_objects_seen{~0ull};  // dl_iterate_phdr's load counter at the last scan

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

// The driver's cuPointerGetAttribute once the program has loaded libcuda, else nullptr. Cheap
// when nothing was loaded since the last look (dl_iterate_phdr's load counter; no file access:
// dlopen(RTLD_NOLOAD) of a library that is not loaded searches the disk, ~20 us).
CuPointerGetAttribute cuda_driver() {
  CuPointerGetAttribute f = g_cu_pointer_get_attribute.load(std::memory_order_acquire);
  if (f != nullptr) return f;
  LoadScan first;
  dl_iterate_phdr(load_scan, &first);
  if (first.adds == g_loaded_objects_seen.load(std::memory_order_relaxed)) return nullptr;
  g_loaded_objects_seen.store(first.adds, std::memory_order_relaxed);
  g_cuda_driver_probes.fetch_add(1, std::memory_order_relaxed);
  LoadScan all;
  all.first_only = false;
  dl_iterate_phdr(load_scan, &all);
  if (!all.found) return nullptr;
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (h == nullptr) return nullptr;
  f = reinterpret_cast<CuPointerGetAttribute>(dlsym(h, "cuPointerGetAttribute"));
  if (f == nullptr) return nullptr;
  g_cu_pointer_get_attribute.store(f, std::memory_order_release);
  logf(kInfo, "CUDA driver loaded by the program: device buffers are detected and passed through");
  return f;
}

// Device and managed allocations this thread has seen, as the driver reported their address
// ranges: a buffer inside one is known without asking the driver again, so messages on the same
// device arrays cost no driver call after the first. Only device verdicts are kept. An
// allocation's range stays device memory while the program's context lives (the driver keeps the
// address space reserved), whereas a host verdict could go stale: freed host memory can be
// mapped again by the driver.
constexpr int kDeviceRanges = 16;
HAULER_TLS uintptr_t tl_device_range_lo[kDeviceRanges];
HAULER_TLS uintptr_t tl_device_range_hi[kDeviceRanges];
HAULER_TLS unsigned tl_device_range_next;

// The GPU backend (libhauler_cuda.so next to the Python package, or HAULER_CUDA_LIB) and the
// driver's allocator, looked up the first time a message on a device buffer is to be packed:
// never on a machine without a driver, since device_buffer() is false there.
using CuMemAlloc = int (*)(unsigned long long*, size_t);
using CuMemFree = int (*)(unsigned long long);
struct Gpu {
  const hauler::gpu::Backend* backend = nullptr;
  CuMemAlloc mem_alloc = nullptr;
  CuMemFree mem_free = nullptr;
};
std::atomic<bool> g_gpu_staging_used{false};

std::string kernels_path() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&kernels_path), &info) == 0 || info.dli_fname == nullptr) return "";
  std::string self = info.dli_fname;  // <package>/interpose/<flavour>/libhauler_interpose.so
  for (int up = 0; up < 3; ++up) {
    size_t slash = self.rfind('/');
    if (slash == std::string::npos) return "";
    self.resize(slash);
  }
  return self + "/libhauler_cuda.so";
}

const Gpu& gpu() {
  static const Gpu once = [] {
    Gpu x;
    hauler::gpu::set_default_library_path(kernels_path());
    x.backend = hauler::gpu::backend();
    if (x.backend == nullptr)
      logf(kWarning, "device buffers go to the library unchanged (no GPU packing): %s",
           hauler::gpu::status_message().c_str());
    else
      logf(kInfo, "device buffers are packed by the GPU kernels: %s", hauler::gpu::status_message().c_str());
    if (void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD)) {
      x.mem_alloc = reinterpret_cast<CuMemAlloc>(dlsym(h, "cuMemAlloc_v2"));
      x.mem_free = reinterpret_cast<CuMemFree>(dlsym(h, "cuMemFree_v2"));
    }
    g_gpu_staging_used = true;
    return x;
  }();
  return once;
}

// A message on a device buffer is packed by the GPU kernels into staging the library is handed
// (`mpi`): device memory for Where::device, or pinned host memory mapped into the device for
// Where::oneshot, which the kernels reach at `dev`. Both are pooled by size class like the host
// staging, since allocating or registering them costs far more than a message.
std::multimap<size_t, GpuBuf> g_gpu_staging_pool[2];  // [0] device, [1] oneshot; under g_staging_pool_mu
size_t g_gpu_staging_pool_bytes = 0;

std::multimap<size_t, GpuBuf>& gpu_pool(Where w) { return g_gpu_staging_pool[w == Where::device ? 0 : 1]; }

void gpu_release(Where w, GpuBuf b) {
  if (w == Where::device) {
    if (gpu().mem_free) gpu().mem_free(reinterpret_cast<unsigned long long>(b.mpi));
    return;
  }
  char err[256] = "";
  gpu().backend->host_unregister(b.mpi, err, sizeof err);
  std::free(b.mpi);
}

}  // namespace

bool cuda_driver_seen() { return g_cu_pointer_get_attribute.load() != nullptr; }

bool gpu_packing_available() { return gpu().backend != nullptr; }

bool device_buffer(const void* p, size_t len) {
  CuPointerGetAttribute f = cuda_driver();
  if (f == nullptr) return false;
  auto a = reinterpret_cast<uintptr_t>(p);
  for (int i = 0; i < kDeviceRanges; ++i)
    if (a >= tl_device_range_lo[i] && a + len <= tl_device_range_hi[i]) return true;
  const int kMemoryType = 2, kIsManaged = 8, kRangeStart = 11, kRangeSize = 12, kDevice = 2, kUnified = 4;
  unsigned int mem_type = 0, managed = 0;
  g_cuda_pointer_queries.fetch_add(1, std::memory_order_relaxed);
  if (f(&mem_type, kMemoryType, a) != 0) return false;  // host memory the driver does not know
  f(&managed, kIsManaged, a);
  if (mem_type != kDevice && mem_type != kUnified && managed == 0) return false;
  unsigned long long start = 0, size = 0;  // CUdeviceptr and size_t: 8 bytes on every 64-bit ABI
  if (f(&start, kRangeStart, a) == 0 && f(&size, kRangeSize, a) == 0 && start <= a && a - start < size) {
    unsigned i = tl_device_range_next++ % kDeviceRanges;
    tl_device_range_lo[i] = start;
    tl_device_range_hi[i] = start + size;
  }
  return true;
}

bool gpu_get(Where w, size_t n, GpuBuf* out) {
  size_t c = size_class(n);
  {
    std::lock_guard<std::mutex> lk(g_staging_pool_mu);
    auto& pool = gpu_pool(w);
    auto it = pool.find(c);
    if (it != pool.end()) {
      *out = it->second;
      pool.erase(it);
      g_gpu_staging_pool_bytes -= c;
      return true;
    }
  }
  const Gpu& G = gpu();
  if (w == Where::device) {
    // The program's current context (a CUDA-aware program has one on the thread that calls MPI).
    unsigned long long d = 0;
    if (G.mem_alloc == nullptr || G.mem_alloc(&d, c) != 0 || d == 0) return false;
    out->mpi = out->dev = reinterpret_cast<void*>(d);
    return true;
  }
  void* p = nullptr;
  if (posix_memalign(&p, 4096, c) != 0) return false;
  char err[256] = "";
  if (G.backend->host_register(p, c, 0, &out->dev, err, sizeof err) != 0) {
    logf(kWarning, "mapped staging of %zu bytes refused: %s", c, err);
    std::free(p);
    return false;
  }
  out->mpi = p;
  return true;
}

void gpu_put(Where w, size_t n, GpuBuf b) {
  size_t c = size_class(n);
  {
    std::lock_guard<std::mutex> lk(g_staging_pool_mu);
    if (g_gpu_staging_pool_bytes + c <= kStagingPoolMax) {
      gpu_pool(w).emplace(c, b);
      g_gpu_staging_pool_bytes += c;
      return;
    }
  }
  gpu_release(w, b);
}

void gpu_drain() {
  if (!g_gpu_staging_used) return;
  std::lock_guard<std::mutex> lk(g_staging_pool_mu);
  for (Where w : {Where::device, Where::oneshot}) {
    for (auto& e : gpu_pool(w)) gpu_release(w, e.second);
    gpu_pool(w).clear();
  }
  g_gpu_staging_pool_bytes = 0;
}

// The library must not send bytes not yet written, nor the application read a buffer not yet
// unpacked: the kernels are waited for.
bool gpu_run(bool pack, const dt::Plan& plan, const void* origin, const Pending& p, int64_t n) {
  try {
    if (pack) dt::gpu_pack(plan, origin, p.dev, 0, n);
    else dt::gpu_unpack(plan, const_cast<void*>(origin), p.dev, 0, n);
    hauler::gpu::synchronize(nullptr);
    return true;
  } catch (const std::exception& e) {
    logf(kError, "GPU %s failed: %s", pack ? "pack" : "unpack", e.what());
    return false;
  }
}

}  // namespace shim
