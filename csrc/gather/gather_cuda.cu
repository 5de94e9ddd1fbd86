// CUDA zero-copy row gather and scatter, and the matching C entry points of
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

// The launch both entry points share: check the table and row-buffer
// pointers, upload the host index arrays (`pieces`, back to back) stream-
// ordered, start the kernel, release the upload. From pageable memory
// cudaMemcpyAsync returns once the bytes are staged, so the caller may reuse
// the index arrays as soon as this returns.
struct Upload {
  const void* host;
  size_t bytes;
  void* slot;  // the address of the pointer that receives the device address
};

template <class Args, class Launch>
int run_rows(Args& a, const void* table, const void* rows_buf, const char* rows_what, Upload* pieces, int npieces,
             void* stream, Launch launch, const char* kernel_what, char* err, size_t errlen) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int dev = 0, sms = 0, pageable = 0, pools = 0;
  HAULER_GCUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
  HAULER_GCUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
                   "cudaDeviceGetAttribute(multiprocessor count)");
  HAULER_GCUDA_TRY(cudaDeviceGetAttribute(&pageable, cudaDevAttrPageableMemoryAccess, dev),
                   "cudaDeviceGetAttribute(pageable memory access)");
  HAULER_GCUDA_TRY(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev),
                   "cudaDeviceGetAttribute(memory pools)");
  int rc = check_pointer(table, "table", pageable, err, errlen);
  if (rc != HAULER_GPU_OK) return rc;
  rc = check_pointer(rows_buf, rows_what, pageable, err, errlen);
  if (rc != HAULER_GPU_OK) return rc;

  size_t total = 0;
  for (int k = 0; k < npieces; ++k) total += (pieces[k].bytes + 15) / 16 * 16;  // each piece 16-byte aligned
  void* dev_index = nullptr;
  if (pools) HAULER_GCUDA_TRY(cudaMallocAsync(&dev_index, total, s), "cudaMallocAsync(index)");
  else HAULER_GCUDA_TRY(cudaMalloc(&dev_index, total), "cudaMalloc(index)");
  cudaError_t e = cudaSuccess;
  size_t at = 0;
  for (int k = 0; k < npieces && e == cudaSuccess; ++k) {
    void* d = static_cast<uint8_t*>(dev_index) + at;
    e = cudaMemcpyAsync(d, pieces[k].host, pieces[k].bytes, cudaMemcpyHostToDevice, s);
    std::memcpy(pieces[k].slot, &d, sizeof d);
    at += (pieces[k].bytes + 15) / 16 * 16;
  }
  if (e != cudaSuccess) {
    if (pools) cudaFreeAsync(dev_index, s);
    else cudaFree(dev_index);
    return fail(err, errlen, HAULER_GPU_EINTERNAL, "cudaMemcpyAsync(index)", e);
  }

  uint32_t grid = 0, block = 0;
  hauler::gather::gather_launch_shape(a.n, a.group, sms, a.max_blocks, &grid, &block);
  launch(a, grid, block, s);
  cudaError_t launch_error = cudaGetLastError();
  if (pools) {
    e = cudaFreeAsync(dev_index, s);
  } else {
    e = cudaStreamSynchronize(s);  // without stream-ordered allocation the kernel must finish first
    cudaError_t f = cudaFree(dev_index);
    if (e == cudaSuccess) e = f;
  }
  if (launch_error != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, kernel_what, launch_error);
  if (e != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, "releasing the uploaded index", e);
  return HAULER_GPU_OK;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int hauler_cuda_gather(const HaulerGatherArgs* args, void* stream, char* err,
                                                              size_t errlen) {
  int rc = hauler::gather::check_gather(args, err, errlen);
  if (rc != HAULER_GPU_OK || args->n == 0) return rc;
  HaulerGatherArgs a = *args;
  static_assert(sizeof a.index == sizeof(void*), "the upload writes a pointer");
  Upload up[1] = {{a.index, static_cast<size_t>(a.n) * static_cast<size_t>(a.index_width), &a.index}};
  return run_rows(a, a.table, a.out, "output", up, 1, stream, launch_gather, "gather kernel launch", err, errlen);
}

__attribute__((visibility("default"))) int hauler_cuda_scatter(const HaulerScatterArgs* args, void* stream, char* err,
                                                               size_t errlen) {
  int rc = hauler::gather::check_scatter(args, err, errlen);
  if (rc != HAULER_GPU_OK || args->n == 0) return rc;
  HaulerScatterArgs a = *args;
  Upload up[2] = {{a.index, static_cast<size_t>(a.n) * static_cast<size_t>(a.index_width), &a.index},
                  {a.src_row, static_cast<size_t>(a.n) * sizeof(int64_t), &a.src_row}};
  return run_rows(a, a.table, a.src, "source", up, a.src_row ? 2 : 1, stream, launch_scatter,
                  "scatter kernel launch", err, errlen);
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
