// The KV block-copy kernel: one launch per plan, its pieces and its boxes
// (tiled transposes of dim-major caches); index math in kv_index.cuh.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

#include "../common/gpu_abi.h"
#include "kv_index.cuh"

namespace {

struct DeviceCopy {
  __device__ void operator()(int64_t dst, int64_t src, int w) const {
    void* d = reinterpret_cast<void*>(dst);
    const void* s = reinterpret_cast<const void*>(src);
    switch (w) {
      case 16: *static_cast<uint4*>(d) = *static_cast<const uint4*>(s); break;
      case 8: *static_cast<uint2*>(d) = *static_cast<const uint2*>(s); break;
      case 4: *static_cast<uint32_t*>(d) = *static_cast<const uint32_t*>(s); break;
      case 2: *static_cast<uint16_t*>(d) = *static_cast<const uint16_t*>(s); break;
      default: *static_cast<uint8_t*>(d) = *static_cast<const uint8_t*>(s); break;
    }
  }
};

__global__ void kv_copy_kernel(const int64_t* segs, int64_t n, const int64_t* boxes, int64_t nboxes) {
  const uint64_t tid = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint64_t nthreads = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  hauler::kv::kv_copy_thread(segs, n, tid, nthreads, DeviceCopy{});
  hauler::kv::kv_box_thread(boxes, nboxes, tid, nthreads, DeviceCopy{});
}

int fail(char* err, size_t errlen, int rc, const char* what, cudaError_t e) {
  if (err && errlen) snprintf(err, errlen, "%s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
  return rc;
}

#define HAULER_KCUDA_TRY(call, what)                                                \
  do {                                                                              \
    cudaError_t e_ = (call);                                                        \
    if (e_ != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, what, e_); \
  } while (0)

// Every region must be device memory, managed memory or mapped pinned host
// memory (or pageable memory on a GPU that reaches it: HMM / ATS).
int check_regions(const int64_t* regions, int64_t nregions, int pageable, char* err, size_t errlen) {
  for (int64_t i = 0; i < nregions; ++i) {
    const void* p = reinterpret_cast<const void*>(regions[2 * i]);
    cudaPointerAttributes attr;
    cudaError_t e = cudaPointerGetAttributes(&attr, p);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return fail(err, errlen, HAULER_GPU_EINVAL, "cannot query a KV layout address", e);
    }
    if (attr.type == cudaMemoryTypeUnregistered && !pageable) {
      if (err && errlen)
        snprintf(err, errlen,
                 "KV memory at %p (%lld bytes) is host memory this GPU cannot access: pin it (torch pin_memory, "
                 "cudaHostRegister) or use device memory", p, static_cast<long long>(regions[2 * i + 1]));
      return HAULER_GPU_EINVAL;
    }
  }
  return HAULER_GPU_OK;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int hauler_cuda_kv_copy(const HaulerKVCopyArgs* args, const int64_t* regions,
                                                               int64_t nregions, void* stream, char* err,
                                                               size_t errlen) {
  if (!args || args->n < 0 || (args->n > 0 && !args->segs) || args->nboxes < 0 || (args->nboxes > 0 && !args->boxes)) {
    if (err && errlen) snprintf(err, errlen, "bad KV copy arguments");
    return HAULER_GPU_EINVAL;
  }
  if (args->n == 0 && args->nboxes == 0) return HAULER_GPU_OK;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int dev = 0, sms = 0, pageable = 0, pools = 0;
  HAULER_KCUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
  HAULER_KCUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute(SMs)");
  HAULER_KCUDA_TRY(cudaDeviceGetAttribute(&pageable, cudaDevAttrPageableMemoryAccess, dev),
                   "cudaDeviceGetAttribute(pageable memory access)");
  HAULER_KCUDA_TRY(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev),
                   "cudaDeviceGetAttribute(memory pools)");
  int rc = check_regions(regions, nregions, pageable, err, errlen);
  if (rc != HAULER_GPU_OK) return rc;

  // The pieces and boxes go up stream-ordered, in one buffer (from pageable
  // memory cudaMemcpyAsync returns once they are staged, so the caller may free them).
  const size_t seg_bytes = static_cast<size_t>(args->n) * 3 * sizeof(int64_t);
  const size_t box_bytes = static_cast<size_t>(args->nboxes) * hauler::kv::kKvBoxFields * sizeof(int64_t);
  void* d = nullptr;
  if (pools) HAULER_KCUDA_TRY(cudaMallocAsync(&d, seg_bytes + box_bytes, s), "cudaMallocAsync(pieces)");
  else HAULER_KCUDA_TRY(cudaMalloc(&d, seg_bytes + box_bytes), "cudaMalloc(pieces)");
  const int64_t* dsegs = static_cast<const int64_t*>(d);
  const int64_t* dboxes = dsegs + 3 * args->n;
  cudaError_t e = seg_bytes ? cudaMemcpyAsync(d, args->segs, seg_bytes, cudaMemcpyHostToDevice, s) : cudaSuccess;
  if (e == cudaSuccess && box_bytes)
    e = cudaMemcpyAsync(static_cast<char*>(d) + seg_bytes, args->boxes, box_bytes, cudaMemcpyHostToDevice, s);
  cudaError_t launch_error = cudaSuccess;
  if (e == cudaSuccess) {
    uint32_t grid = 0, block = 0;
    hauler::kv::kv_launch_shape(args->n + args->nboxes, sms, args->max_blocks, &grid, &block);
    kv_copy_kernel<<<grid, block, 0, s>>>(dsegs, args->n, dboxes, args->nboxes);
    launch_error = cudaGetLastError();
  }
  cudaError_t f;
  if (pools) {
    f = cudaFreeAsync(d, s);
  } else {
    f = cudaStreamSynchronize(s);  // without stream-ordered allocation the kernel must finish first
    cudaError_t g = cudaFree(d);
    if (f == cudaSuccess) f = g;
  }
  if (e != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, "cudaMemcpyAsync(pieces)", e);
  if (launch_error != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, "KV copy kernel launch", launch_error);
  if (f != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, "releasing the uploaded pieces", f);
  return HAULER_GPU_OK;
}

}  // extern "C"
