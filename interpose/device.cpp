// Device buffers: whether a message's buffer is device memory (asked of the CUDA driver the
// program loaded), the GPU backend that packs it, and the device-side staging pools.
//
// A device pointer must never reach the host pack kernels. Device memory can only exist once the
// process has loaded the CUDA driver, so the shim asks the driver about a buffer only when
// libcuda is already loaded (hauler::cuda::driver_if_loaded: the shim never loads the driver).
// Device and managed buffers are packed by the GPU kernels or, without a GPU backend, go to the
// (CUDA-aware) library unchanged.
#include <cstdlib>
#include <map>

#include "common/cuda_driver.hpp"
#include "common/gpu.hpp"
#include "datatype/gpu_pack.hpp"
#include "shim.hpp"

namespace shim {

std::atomic<int64_t> g_device_buffers_to_library{0};
std::atomic<int64_t> g_cuda_pointer_queries{0};

namespace {

namespace cuda = hauler::cuda;

// The program's driver once it has loaded one that answers pointer queries (else nullptr), kept
// here so that a message pays one atomic load for it.
std::atomic<const cuda::Driver*> g_program_driver{nullptr};

const cuda::Driver* program_driver() {
  const cuda::Driver* d = g_program_driver.load(std::memory_order_acquire);
  if (d != nullptr) return d;
  d = cuda::driver_if_loaded();
  if (d == nullptr || d->pointer_get_attribute == nullptr) return nullptr;
  if (g_program_driver.exchange(d, std::memory_order_acq_rel) == nullptr)
    logf(kInfo, "CUDA driver loaded by the program: device buffers are detected and passed through");
  return d;
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

// The GPU backend (libhauler_cuda.so in the Python package, or HAULER_CUDA_LIB: the loader's
// search) and the driver's allocator, looked up the first time a message on a device buffer is
// to be packed: never on a machine without a driver, since device_buffer() is false there.
struct Gpu {
  const hauler::gpu::Backend* backend = nullptr;
  const cuda::Driver* driver = nullptr;  // with mem_alloc and mem_free
};
std::atomic<bool> g_gpu_staging_used{false};

const Gpu& gpu() {
  static const Gpu once = [] {
    Gpu x;
    x.backend = hauler::gpu::backend();
    if (x.backend == nullptr)
      logf(kWarning, "device buffers go to the library unchanged (no GPU packing): %s",
           hauler::gpu::status_message().c_str());
    else
      logf(kInfo, "device buffers are packed by the GPU kernels: %s", hauler::gpu::status_message().c_str());
    const cuda::Driver* d = cuda::driver_if_loaded();
    if (d != nullptr && d->mem_alloc != nullptr && d->mem_free != nullptr) x.driver = d;
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
    if (gpu().driver) gpu().driver->mem_free(reinterpret_cast<cuda::CUdeviceptr>(b.mpi));
    return;
  }
  char err[256] = "";
  gpu().backend->host_unregister(b.mpi, err, sizeof err);
  std::free(b.mpi);
}

}  // namespace

bool cuda_driver_seen() { return g_program_driver.load() != nullptr; }

bool gpu_packing_available() { return gpu().backend != nullptr; }

bool device_buffer(const void* p, size_t len) {
  const cuda::Driver* d = program_driver();
  if (d == nullptr) return false;
  auto a = reinterpret_cast<uintptr_t>(p);
  for (int i = 0; i < kDeviceRanges; ++i)
    if (a >= tl_device_range_lo[i] && a + len <= tl_device_range_hi[i]) return true;
  unsigned int mem_type = 0, managed = 0;
  g_cuda_pointer_queries.fetch_add(1, std::memory_order_relaxed);
  // an error: host memory the driver does not know
  if (d->pointer_get_attribute(&mem_type, cuda::kAttrMemoryType, a) != 0) return false;
  d->pointer_get_attribute(&managed, cuda::kAttrIsManaged, a);
  if (mem_type != cuda::kMemoryTypeDevice && mem_type != cuda::kMemoryTypeUnified && managed == 0) return false;
  unsigned long long start = 0, size = 0;  // CUdeviceptr and size_t: 8 bytes on every 64-bit ABI
  if (d->pointer_get_attribute(&start, cuda::kAttrRangeStart, a) == 0 &&
      d->pointer_get_attribute(&size, cuda::kAttrRangeSize, a) == 0 && start <= a && a - start < size) {
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
    cuda::CUdeviceptr d = 0;
    if (G.driver == nullptr || G.driver->mem_alloc(&d, c) != 0 || d == 0) return false;
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
