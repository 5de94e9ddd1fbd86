// CUDA zero-copy row gather and scatter, and the matching C entry points of
// libhauler_cuda.so (loaded by common/gpu.cpp through its function table; the
// host registration of tables is in common/cuda_device.cu).
// Every CUDA error becomes a return code and a sentence; nothing here aborts,
// prints or throws across the C boundary.
#include "../common/cuda_util.cuh"
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

void launch_gather(const HaulerGatherArgs& a, uint32_t grid, uint32_t block, cudaStream_t s) {
  switch (a.word) {
    case 16: launch<16>(a, grid, block, s); break;
    case 8: launch<8>(a, grid, block, s); break;
    case 4: launch<4>(a, grid, block, s); break;
    case 2: launch<2>(a, grid, block, s); break;
    default: launch<1>(a, grid, block, s); break;
  }
}

template <int W, class Move, class I>
__global__ void scatter_kernel(HaulerScatterArgs a) {
  const uint64_t tid = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint64_t nthreads = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  hauler::gather::scatter_rows<W, Move>(a, static_cast<const I*>(a.index), tid, nthreads);
}

template <int W, class Move>
void launch_scatter_as(const HaulerScatterArgs& a, uint32_t grid, uint32_t block, cudaStream_t s) {
  if (a.index_width == 4) scatter_kernel<W, Move, int32_t><<<grid, block, 0, s>>>(a);
  else scatter_kernel<W, Move, int64_t><<<grid, block, 0, s>>>(a);
}

void launch_scatter(const HaulerScatterArgs& a, uint32_t grid, uint32_t block, cudaStream_t s) {
  using hauler::gather::AddWord;
  using hauler::gather::CopyWord;
  switch (a.op) {
    case HAULER_GPU_SCATTER_ADD_F32: launch_scatter_as<4, AddWord<float>>(a, grid, block, s); return;
    case HAULER_GPU_SCATTER_ADD_F64: launch_scatter_as<8, AddWord<double>>(a, grid, block, s); return;
    case HAULER_GPU_SCATTER_ADD_U32: launch_scatter_as<4, AddWord<uint32_t>>(a, grid, block, s); return;
    case HAULER_GPU_SCATTER_ADD_U64: launch_scatter_as<8, AddWord<uint64_t>>(a, grid, block, s); return;
    default: break;
  }
  switch (a.word) {
    case 16: launch_scatter_as<16, CopyWord<16>>(a, grid, block, s); break;
    case 8: launch_scatter_as<8, CopyWord<8>>(a, grid, block, s); break;
    case 4: launch_scatter_as<4, CopyWord<4>>(a, grid, block, s); break;
    case 2: launch_scatter_as<2, CopyWord<2>>(a, grid, block, s); break;
    default: launch_scatter_as<1, CopyWord<1>>(a, grid, block, s); break;
  }
}

// The launch both entry points share: check the table and row-buffer
// pointers, switch to the device that owns them, upload the host index
// arrays, start the kernel, and give the caller's device back.
template <class Args, class Launch>
int run_rows(Args& a, const void* table, const void* rows_buf, const char* rows_what, hauler::cuda::Upload* pieces,
             int npieces, void* stream, Launch launch, const char* kernel_what, char* err, size_t errlen) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  hauler::cuda::Pointer qs[2] = {{table, "table", {}}, {rows_buf, rows_what, {}}};
  hauler::cuda::DeviceScope scope;
  hauler::cuda::DeviceFacts f;
  int rc = hauler::cuda::enter_call(qs, 2, ": pin() the table (cudaHostRegister) or pass device memory", &scope, &f,
                                    err, errlen);
  if (rc != HAULER_GPU_OK) return rc;
  uint32_t grid = 0, block = 0;
  hauler::gather::gather_launch_shape(a.n, a.group, f.sms, a.max_blocks, &grid, &block);
  return hauler::cuda::launch_with_uploads(f, pieces, npieces, "index", s, [&] { launch(a, grid, block, s); },
                                           kernel_what, err, errlen);
}

}  // namespace

extern "C" {

HAULER_CUDA_EXPORT int hauler_cuda_gather(const HaulerGatherArgs* args, void* stream, char* err, size_t errlen) {
  int rc = hauler::gather::check_gather(args, err, errlen);
  if (rc != HAULER_GPU_OK || args->n == 0) return rc;
  HaulerGatherArgs a = *args;
  static_assert(sizeof a.index == sizeof(void*), "the upload writes a pointer");
  hauler::cuda::Upload up[1] = {{a.index, static_cast<size_t>(a.n) * static_cast<size_t>(a.index_width), &a.index}};
  return run_rows(a, a.table, a.out, "output", up, 1, stream, launch_gather, "gather kernel launch", err, errlen);
}

HAULER_CUDA_EXPORT int hauler_cuda_scatter(const HaulerScatterArgs* args, void* stream, char* err, size_t errlen) {
  int rc = hauler::gather::check_scatter(args, err, errlen);
  if (rc != HAULER_GPU_OK || args->n == 0) return rc;
  HaulerScatterArgs a = *args;
  hauler::cuda::Upload up[2] = {{a.index, static_cast<size_t>(a.n) * static_cast<size_t>(a.index_width), &a.index},
                                {a.src_row, static_cast<size_t>(a.n) * sizeof(int64_t), &a.src_row}};
  return run_rows(a, a.table, a.src, "source", up, a.src_row ? 2 : 1, stream, launch_scatter,
                  "scatter kernel launch", err, errlen);
}

}  // extern "C"
