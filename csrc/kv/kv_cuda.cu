// The KV block-copy kernel: one launch per plan, its pieces and its boxes
// (tiled transposes of dim-major caches); index math in kv_index.cuh.
#include <vector>

#include "../common/cuda_util.cuh"
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

}  // namespace

extern "C" {

HAULER_CUDA_EXPORT int hauler_cuda_kv_copy(const HaulerKVCopyArgs* args, const int64_t* regions, int64_t nregions,
                                           void* stream, char* err, size_t errlen) {
  if (!args || args->n < 0 || (args->n > 0 && !args->segs) || args->nboxes < 0 || (args->nboxes > 0 && !args->boxes) ||
      nregions < 0 || (nregions > 0 && !regions)) {
    if (err && errlen) std::snprintf(err, errlen, "bad KV copy arguments");
    return HAULER_GPU_EINVAL;
  }
  if (args->n == 0 && args->nboxes == 0) return HAULER_GPU_OK;
  // Every region must be device memory, managed memory or mapped pinned host memory (or pageable
  // memory on a GPU that reaches it: HMM / ATS); the launch runs on the device that owns them.
  std::vector<hauler::cuda::Pointer> qs(static_cast<size_t>(nregions));
  for (int64_t i = 0; i < nregions; ++i) qs[i] = {reinterpret_cast<const void*>(regions[2 * i]), "KV layout", {}};
  hauler::cuda::DeviceScope scope;
  hauler::cuda::DeviceFacts f;
  int rc = hauler::cuda::enter_call(qs.data(), static_cast<int>(nregions),
                                    ": pin it (torch pin_memory, cudaHostRegister) or use device memory", &scope, &f,
                                    err, errlen);
  if (rc != HAULER_GPU_OK) return rc;
  HaulerKVCopyArgs a = *args;
  static_assert(sizeof a.segs == sizeof(void*), "the upload writes a pointer");
  // The pieces and boxes go up stream-ordered (the core's arrays may be reused once this returns).
  hauler::cuda::Upload up[2] = {{a.segs, static_cast<size_t>(a.n) * 3 * sizeof(int64_t), &a.segs},
                                {a.boxes, static_cast<size_t>(a.nboxes) * hauler::kv::kKvBoxFields * sizeof(int64_t),
                                 &a.boxes}};
  uint32_t grid = 0, block = 0;
  hauler::kv::kv_launch_shape(a.n + a.nboxes, f.sms, a.max_blocks, &grid, &block);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return hauler::cuda::launch_with_uploads(
      f, up, a.nboxes > 0 ? 2 : 1, "KV pieces", s,
      [&] { kv_copy_kernel<<<grid, block, 0, s>>>(a.segs, a.n, a.boxes, a.nboxes); }, "KV copy kernel launch", err,
      errlen);
}

}  // extern "C"
