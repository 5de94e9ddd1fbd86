// The device-level C entry points of libhauler_cuda.so (ABI version, device info, stream
// synchronization, host memory registration); each capability's kernels bring their own
// (datatype/pack_cuda.cu, gather/gather_cuda.cu). Their host emulation is
// common/gpu_emulation.cpp.
#include "cuda_util.cuh"

using hauler::cuda::fail;

extern "C" {

HAULER_CUDA_EXPORT int hauler_cuda_abi(void) { return HAULER_GPU_ABI; }

HAULER_CUDA_EXPORT int hauler_cuda_init(HaulerDeviceInfo* info, char* err, size_t errlen) {
  if (!info) {
    if (err && errlen) std::snprintf(err, errlen, "device info pointer is null");
    return HAULER_GPU_EINVAL;
  }
  std::memset(info, 0, sizeof *info);
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return fail(err, errlen, e == cudaErrorNoDevice ? HAULER_GPU_ENODEV : HAULER_GPU_EINTERNAL,
                "cudaGetDeviceCount", e);
  }
  if (count == 0) {
    if (err && errlen) std::snprintf(err, errlen, "cudaGetDeviceCount returned 0 devices");
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
  std::snprintf(info->name, sizeof info->name, "%s", prop.name);
  return HAULER_GPU_OK;
}

HAULER_CUDA_EXPORT int hauler_cuda_synchronize(void* stream, char* err, size_t errlen) {
  HAULER_CUDA_TRY(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
  return HAULER_GPU_OK;
}

HAULER_CUDA_EXPORT int hauler_cuda_host_register(void* p, size_t n, int readonly, void** device, char* err,
                                                 size_t errlen) {
  if (!p || !device) {
    if (err && errlen) std::snprintf(err, errlen, "%s is null", !p ? "host pointer" : "device out-argument");
    return HAULER_GPU_EINVAL;
  }
  unsigned int flags = cudaHostRegisterMapped | cudaHostRegisterPortable;
  if (readonly) flags |= cudaHostRegisterReadOnly;
  cudaError_t r = cudaHostRegister(p, n, flags);
  bool shared = false;
  if (r == cudaErrorHostMemoryAlreadyRegistered) {
    // Small tables can share a page with another registered range: fine when
    // the registration in place covers this whole range. It is not ours to
    // unregister: the return code says so.
    cudaGetLastError();
    cudaPointerAttributes first, last;
    if (cudaPointerGetAttributes(&first, p) == cudaSuccess &&
        cudaPointerGetAttributes(&last, static_cast<const uint8_t*>(p) + (n - 1)) == cudaSuccess &&
        first.type == cudaMemoryTypeHost && last.type == cudaMemoryTypeHost) {
      r = cudaSuccess;
      shared = true;
    } else {
      cudaGetLastError();
    }
  }
  if (r != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, "cudaHostRegister", r);
  void* d = nullptr;
  cudaError_t e = cudaHostGetDevicePointer(&d, p, 0);
  if (e != cudaSuccess) {
    if (!shared) cudaHostUnregister(p);
    return fail(err, errlen, HAULER_GPU_EINTERNAL, "cudaHostGetDevicePointer", e);
  }
  *device = d;
  return shared ? HAULER_GPU_ALREADY_REGISTERED : HAULER_GPU_OK;
}

HAULER_CUDA_EXPORT int hauler_cuda_host_unregister(void* p, char* err, size_t errlen) {
  cudaError_t e = cudaHostUnregister(p);
  if (e == cudaErrorHostMemoryNotRegistered) {
    cudaGetLastError();
    return fail(err, errlen, HAULER_GPU_EINVAL, "cudaHostUnregister (no registration starts at this address)", e);
  }
  if (e != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, "cudaHostUnregister", e);
  return HAULER_GPU_OK;
}

}  // extern "C"
