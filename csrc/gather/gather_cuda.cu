// CUDA zero-copy row gather and the matching C entry points of
// libhauler_cuda.so (loaded by common/gpu.cpp through its function table).
// Every CUDA error becomes a return code and a sentence; nothing here aborts,
// prints or throws across the C boundary.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

#include "gather_index.cuh"

namespace {

template <int W, class I>
__global__ void gather_kernel(HaulerGatherArgs a) {
  const uint64_t tid = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint64_t nthreads = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  hauler::gather::gather_rows<W>(a, static_cast<const I*>(a.index), tid, nthreads);
}

template <int W>
void launch(const HaulerGatherArgs& a, uint32_t grid, uint32_t block, cudaStream_t s) {
  if (a.index_width == 4) gather_kernel<W, int32_t><<<grid, block, 0, s>>>(a);
  else gather_kernel<W, int64_t><<<grid, block, 0, s>>>(a);
}

int fail(char* err, size_t errlen, int rc, const char* what, cudaError_t e) {
  if (err && errlen) snprintf(err, errlen, "%s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
  return rc;
}

#define HAULER_GCUDA_TRY(call, what)                                              \
  do {                                                                            \
    cudaError_t e_ = (call);                                                      \
    if (e_ != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, what, e_); \
  } while (0)

// Kernels fault on plain pageable host memory unless the device can access
// it (HMM / ATS): say so with a sentence instead.
int check_pointer(const void* p, const char* what, int pageable_ok, char* err, size_t errlen) {
  cudaPointerAttributes attr;
  cudaError_t e = cudaPointerGetAttributes(&attr, p);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return fail(err, errlen, HAULER_GPU_EINVAL, "cannot query a gather pointer", e);
  }
  if (attr.type == cudaMemoryTypeUnregistered && !pageable_ok) {
    if (err && errlen)
      snprintf(err, errlen,
               "the %s pointer %p is host memory this GPU cannot access: pin() the table (cudaHostRegister) "
               "or pass device memory", what, p);
    return HAULER_GPU_EINVAL;
  }
  return HAULER_GPU_OK;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int hauler_cuda_gather(const HaulerGatherArgs* args, void* stream, char* err,
                                                              size_t errlen) {
  int rc = hauler::gather::check_gather(args, err, errlen);
  if (rc != HAULER_GPU_OK || args->n == 0) return rc;
  HaulerGatherArgs a = *args;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int dev = 0, sms = 0, pageable = 0, pools = 0;
  HAULER_GCUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
  HAULER_GCUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
                   "cudaDeviceGetAttribute(multiprocessor count)");
  HAULER_GCUDA_TRY(cudaDeviceGetAttribute(&pageable, cudaDevAttrPageableMemoryAccess, dev),
                   "cudaDeviceGetAttribute(pageable memory access)");
  HAULER_GCUDA_TRY(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev),
                   "cudaDeviceGetAttribute(memory pools)");
  rc = check_pointer(a.table, "table", pageable, err, errlen);
  if (rc != HAULER_GPU_OK) return rc;
  rc = check_pointer(a.out, "output", pageable, err, errlen);
  if (rc != HAULER_GPU_OK) return rc;

  // The index (host memory, validated by the core) goes up stream-ordered;
  // from pageable memory cudaMemcpyAsync returns once it is staged, so the
  // caller may reuse the index array as soon as this call returns.
  const size_t ibytes = static_cast<size_t>(a.n) * static_cast<size_t>(a.index_width);
  void* dev_index = nullptr;
  if (pools) HAULER_GCUDA_TRY(cudaMallocAsync(&dev_index, ibytes, s), "cudaMallocAsync(index)");
  else HAULER_GCUDA_TRY(cudaMalloc(&dev_index, ibytes), "cudaMalloc(index)");
  cudaError_t e = cudaMemcpyAsync(dev_index, a.index, ibytes, cudaMemcpyHostToDevice, s);
  if (e != cudaSuccess) {
    if (pools) cudaFreeAsync(dev_index, s);
    else cudaFree(dev_index);
    return fail(err, errlen, HAULER_GPU_EINTERNAL, "cudaMemcpyAsync(index)", e);
  }
  a.index = dev_index;

  uint32_t grid = 0, block = 0;
  hauler::gather::gather_launch_shape(a.n, a.group, sms, a.max_blocks, &grid, &block);
  switch (a.word) {
    case 16: launch<16>(a, grid, block, s); break;
    case 8: launch<8>(a, grid, block, s); break;
    case 4: launch<4>(a, grid, block, s); break;
    case 2: launch<2>(a, grid, block, s); break;
    default: launch<1>(a, grid, block, s); break;
  }
  cudaError_t launch_error = cudaGetLastError();
  if (pools) {
    e = cudaFreeAsync(dev_index, s);
  } else {
    e = cudaStreamSynchronize(s);  // without stream-ordered allocation the kernel must finish first
    cudaError_t f = cudaFree(dev_index);
    if (e == cudaSuccess) e = f;
  }
  if (launch_error != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, "gather kernel launch", launch_error);
  if (e != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, "releasing the uploaded index", e);
  return HAULER_GPU_OK;
}

__attribute__((visibility("default"))) int hauler_cuda_host_register(void* p, size_t n, int readonly, void** device,
                                                                     char* err, size_t errlen) {
  if (!p || !device) {
    if (err && errlen) snprintf(err, errlen, "%s is null", !p ? "host pointer" : "device out-argument");
    return HAULER_GPU_EINVAL;
  }
  unsigned int flags = cudaHostRegisterMapped | cudaHostRegisterPortable;
  if (readonly) flags |= cudaHostRegisterReadOnly;
  cudaError_t r = cudaHostRegister(p, n, flags);
  if (r == cudaErrorHostMemoryAlreadyRegistered) {
    // Small tables can share a page with another registered table: fine when
    // the registration in place covers this whole range.
    cudaGetLastError();
    cudaPointerAttributes first, last;
    if (cudaPointerGetAttributes(&first, p) == cudaSuccess &&
        cudaPointerGetAttributes(&last, static_cast<const uint8_t*>(p) + (n - 1)) == cudaSuccess &&
        first.type == cudaMemoryTypeHost && last.type == cudaMemoryTypeHost) {
      r = cudaSuccess;
    } else {
      cudaGetLastError();
    }
  }
  if (r != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, "cudaHostRegister", r);
  void* d = nullptr;
  cudaError_t e = cudaHostGetDevicePointer(&d, p, 0);
  if (e != cudaSuccess) {
    cudaHostUnregister(p);
    return fail(err, errlen, HAULER_GPU_EINTERNAL, "cudaHostGetDevicePointer", e);
  }
  *device = d;
  return HAULER_GPU_OK;
}

__attribute__((visibility("default"))) int hauler_cuda_host_unregister(void* p, char* err, size_t errlen) {
  cudaError_t e = cudaHostUnregister(p);
  if (e == cudaErrorHostMemoryNotRegistered) {  // covered by another table's registration
    cudaGetLastError();
    return HAULER_GPU_OK;
  }
  if (e != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, "cudaHostUnregister", e);
  return HAULER_GPU_OK;
}

}  // extern "C"
