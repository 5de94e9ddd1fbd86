// CUDA pack/unpack kernels and the C entry points of libhauler_cuda.so.
// The host core never links this: common/gpu.cpp dlopens the library only
// after the driver reported a device, and calls these entry points through a
// table of function pointers. Every CUDA error becomes a return code and a
// sentence; nothing here aborts, prints or throws across the C boundary.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

#include "pack_index.cuh"

namespace {

using hauler::dt::DevLayout;

template <int W, bool kPack, bool kRuns>
__global__ void pack_kernel(DevLayout l, uint8_t* origin, uint8_t* buf, int64_t pos, int64_t n) {
  const uint64_t tid = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint64_t nthreads = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  hauler::dt::pack_words<W, kPack, kRuns>(l, origin, buf, pos, n, tid, nthreads);
}

template <int W>
void launch(const DevLayout& l, uint8_t* origin, uint8_t* buf, int64_t pos, int64_t n, bool pack, uint32_t grid,
            uint32_t block, cudaStream_t s) {
  const bool runs = l.nruns > 1;
  if (pack) {
    if (runs) pack_kernel<W, true, true><<<grid, block, 0, s>>>(l, origin, buf, pos, n);
    else pack_kernel<W, true, false><<<grid, block, 0, s>>>(l, origin, buf, pos, n);
  } else {
    if (runs) pack_kernel<W, false, true><<<grid, block, 0, s>>>(l, origin, buf, pos, n);
    else pack_kernel<W, false, false><<<grid, block, 0, s>>>(l, origin, buf, pos, n);
  }
}

int fail(char* err, size_t errlen, int rc, const char* fmt, const char* what, cudaError_t e) {
  if (err && errlen) snprintf(err, errlen, fmt, what, cudaGetErrorName(e), cudaGetErrorString(e));
  return rc;
}

// Evaluates a runtime call; on failure returns its name, code and text.
#define HAULER_CUDA_TRY(call, what)                                                     \
  do {                                                                                  \
    cudaError_t e_ = (call);                                                            \
    if (e_ != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, "%s: %s (%s)", what, e_); \
  } while (0)

// A plain (unregistered) host pointer faults in a kernel unless the device can
// access pageable memory (HMM / ATS); catch that here with a sentence.
int check_pointer(const void* p, const char* what, int pageable_ok, char* err, size_t errlen) {
  cudaPointerAttributes a;
  cudaError_t e = cudaPointerGetAttributes(&a, p);
  if (e != cudaSuccess) {
    cudaGetLastError();  // not sticky, but do not leave it for the next caller
    return fail(err, errlen, HAULER_GPU_EINVAL, "cannot query the %s pointer: %s (%s)", what, e);
  }
  if (a.type == cudaMemoryTypeUnregistered && !pageable_ok) {
    if (err && errlen)
      snprintf(err, errlen,
               "the %s pointer %p is host memory this GPU cannot access (pass device, managed or "
               "cudaHostRegister'ed memory)",
               what, p);
    return HAULER_GPU_EINVAL;
  }
  return HAULER_GPU_OK;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int hauler_cuda_abi(void) { return HAULER_GPU_ABI; }

__attribute__((visibility("default"))) int hauler_cuda_init(HaulerDeviceInfo* info, char* err, size_t errlen) {
  if (!info) {
    if (err && errlen) snprintf(err, errlen, "device info pointer is null");
    return HAULER_GPU_EINVAL;
  }
  std::memset(info, 0, sizeof *info);
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return fail(err, errlen, e == cudaErrorNoDevice ? HAULER_GPU_ENODEV : HAULER_GPU_EINTERNAL, "%s: %s (%s)",
                "cudaGetDeviceCount", e);
  }
  if (count == 0) {
    if (err && errlen) snprintf(err, errlen, "cudaGetDeviceCount returned 0 devices");
    return HAULER_GPU_ENODEV;
  }
  info->device_count = count;
  HAULER_CUDA_TRY(cudaGetDevice(&info->device), "cudaGetDevice");
  HAULER_CUDA_TRY(cudaDeviceGetAttribute(&info->sm_count, cudaDevAttrMultiProcessorCount, info->device),
                  "cudaDeviceGetAttribute(multiprocessor count)");
  HAULER_CUDA_TRY(cudaRuntimeGetVersion(&info->runtime_version), "cudaRuntimeGetVersion");
  HAULER_CUDA_TRY(cudaDriverGetVersion(&info->driver_version), "cudaDriverGetVersion");
  cudaDeviceProp prop;
  HAULER_CUDA_TRY(cudaGetDeviceProperties(&prop, info->device), "cudaGetDeviceProperties");
  snprintf(info->name, sizeof info->name, "%s", prop.name);
  return HAULER_GPU_OK;
}

__attribute__((visibility("default"))) int hauler_cuda_pack(const HaulerDevLayout* layout, void* origin, void* buf,
                                                            int64_t pos, int64_t n, int pack, void* stream,
                                                            char* err, size_t errlen) {
  int rc = hauler::dt::check_call(layout, origin, buf, pos, n, err, errlen);
  if (rc != HAULER_GPU_OK || n == 0) return rc;
  DevLayout l = *layout;
  cudaStream_t s = static_cast<cudaStream_t>(stream);

  int dev = 0, sms = 0, pageable = 0, pools = 0;
  HAULER_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
  HAULER_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
                  "cudaDeviceGetAttribute(multiprocessor count)");
  HAULER_CUDA_TRY(cudaDeviceGetAttribute(&pageable, cudaDevAttrPageableMemoryAccess, dev),
                  "cudaDeviceGetAttribute(pageable memory access)");
  HAULER_CUDA_TRY(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev),
                  "cudaDeviceGetAttribute(memory pools)");
  // The first byte of the type's span lies in the caller's buffer even when
  // the origin itself does not (negative lower bounds).
  rc = check_pointer(static_cast<uint8_t*>(origin) + l.span_lo, "memory", pageable, err, errlen);
  if (rc != HAULER_GPU_OK) return rc;
  rc = check_pointer(buf, "packed buffer", pageable, err, errlen);
  if (rc != HAULER_GPU_OK) return rc;

  // Run lists live in host memory in the Plan; upload them for this call,
  // stream-ordered so the call stays asynchronous. (A per-plan device cache
  // would need plan identity and lifetime the C ABI does not carry; the copy
  // is small next to the data it describes: 24 bytes per run.)
  void* dev_runs = nullptr;
  if (l.nruns > 1) {
    const size_t run_bytes = static_cast<size_t>(l.nruns) * sizeof(HaulerRun);
    const size_t prefix_bytes = static_cast<size_t>(l.nruns + 1) * sizeof(int64_t);
    if (pools) HAULER_CUDA_TRY(cudaMallocAsync(&dev_runs, run_bytes + prefix_bytes, s), "cudaMallocAsync(run list)");
    else HAULER_CUDA_TRY(cudaMalloc(&dev_runs, run_bytes + prefix_bytes), "cudaMalloc(run list)");
    uint8_t* d = static_cast<uint8_t*>(dev_runs);
    // From pageable memory these return once the source has been staged, so
    // the Plan may go away after this call returns.
    cudaError_t e = cudaMemcpyAsync(d, l.runs, run_bytes, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaMemcpyAsync(d + run_bytes, l.prefix, prefix_bytes, cudaMemcpyHostToDevice, s);
    if (e != cudaSuccess) {
      if (pools) cudaFreeAsync(dev_runs, s);
      else cudaFree(dev_runs);
      return fail(err, errlen, HAULER_GPU_EINTERNAL, "%s: %s (%s)", "cudaMemcpyAsync(run list)", e);
    }
    l.runs = reinterpret_cast<const HaulerRun*>(d);
    l.prefix = reinterpret_cast<const int64_t*>(d + run_bytes);
  }

  uint32_t grid = 0, block = 0;
  hauler::dt::launch_shape(n / l.word, sms, &grid, &block);
  uint8_t* o = static_cast<uint8_t*>(origin);
  uint8_t* b = static_cast<uint8_t*>(buf);
  switch (l.word) {
    case 16: launch<16>(l, o, b, pos, n, pack != 0, grid, block, s); break;
    case 8: launch<8>(l, o, b, pos, n, pack != 0, grid, block, s); break;
    case 4: launch<4>(l, o, b, pos, n, pack != 0, grid, block, s); break;
    case 2: launch<2>(l, o, b, pos, n, pack != 0, grid, block, s); break;
    default: launch<1>(l, o, b, pos, n, pack != 0, grid, block, s); break;
  }
  cudaError_t launch_error = cudaGetLastError();

  if (dev_runs) {
    cudaError_t e = cudaSuccess;
    if (pools) {
      e = cudaFreeAsync(dev_runs, s);
    } else {
      // Without stream-ordered allocation the kernel must finish before the free.
      e = cudaStreamSynchronize(s);
      cudaError_t f = cudaFree(dev_runs);
      if (e == cudaSuccess) e = f;
    }
    if (launch_error == cudaSuccess && e != cudaSuccess)
      return fail(err, errlen, HAULER_GPU_EINTERNAL, "%s: %s (%s)", "releasing the run list", e);
  }
  if (launch_error != cudaSuccess)
    return fail(err, errlen, HAULER_GPU_EINTERNAL, "%s: %s (%s)", pack ? "pack kernel launch" : "unpack kernel launch",
                launch_error);
  return HAULER_GPU_OK;
}

__attribute__((visibility("default"))) int hauler_cuda_synchronize(void* stream, char* err, size_t errlen) {
  HAULER_CUDA_TRY(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
  return HAULER_GPU_OK;
}

}  // extern "C"
