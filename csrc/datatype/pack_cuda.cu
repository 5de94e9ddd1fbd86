// CUDA pack/unpack kernels and their C entry point in libhauler_cuda.so.
// The host core never links this: common/gpu.cpp dlopens the library only
// after the driver reported a device, and calls the entry points through a
// table of function pointers (the device-level ones are in
// common/cuda_device.cu). Every CUDA error becomes a return code and a
// sentence; nothing here aborts, prints or throws across the C boundary.
#include "../common/cuda_util.cuh"
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

}  // namespace

extern "C" {

HAULER_CUDA_EXPORT int hauler_cuda_pack(const HaulerDevLayout* layout, void* origin, void* buf, int64_t pos,
                                        int64_t n, int pack, void* stream, char* err, size_t errlen) {
  int rc = hauler::dt::check_call(layout, origin, buf, pos, n, err, errlen);
  if (rc != HAULER_GPU_OK || n == 0) return rc;
  DevLayout l = *layout;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  // The first byte of the type's span lies in the caller's buffer even when
  // the origin itself does not (negative lower bounds).
  hauler::cuda::Pointer qs[2] = {{static_cast<uint8_t*>(origin) + l.span_lo, "memory", {}},
                                 {buf, "packed buffer", {}}};
  hauler::cuda::DeviceScope scope;
  hauler::cuda::DeviceFacts f;
  rc = hauler::cuda::enter_call(qs, 2, " (pass device, managed or cudaHostRegister'ed memory)", &scope, &f, err,
                                errlen);
  if (rc != HAULER_GPU_OK) return rc;

  // Run lists live in host memory in the Plan; they are uploaded for this
  // call. (A per-plan device cache would need plan identity and lifetime the
  // C ABI does not carry; the copy is small next to the data it describes:
  // 24 bytes per run.)
  hauler::cuda::Upload up[2] = {{l.runs, static_cast<size_t>(l.nruns) * sizeof(HaulerRun), &l.runs},
                                {l.prefix, static_cast<size_t>(l.nruns + 1) * sizeof(int64_t), &l.prefix}};
  uint32_t grid = 0, block = 0;
  hauler::dt::launch_shape(n / l.word, f.sms, &grid, &block);
  uint8_t* o = static_cast<uint8_t*>(origin);
  uint8_t* b = static_cast<uint8_t*>(buf);
  auto run = [&] {
    switch (l.word) {
      case 16: launch<16>(l, o, b, pos, n, pack != 0, grid, block, s); break;
      case 8: launch<8>(l, o, b, pos, n, pack != 0, grid, block, s); break;
      case 4: launch<4>(l, o, b, pos, n, pack != 0, grid, block, s); break;
      case 2: launch<2>(l, o, b, pos, n, pack != 0, grid, block, s); break;
      default: launch<1>(l, o, b, pos, n, pack != 0, grid, block, s); break;
    }
  };
  return hauler::cuda::launch_with_uploads(f, up, l.nruns > 1 ? 2 : 0, "run list", s, run,
                                           pack ? "pack kernel launch" : "unpack kernel launch", err, errlen);
}

}  // extern "C"
