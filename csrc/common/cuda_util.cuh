// What the CUDA entry points of libhauler_cuda.so share (nvcc only): CUDA errors turned into a
// return code and a sentence, the device facts a launch depends on, pointer checks, and the
// stream-ordered upload of the small host arrays a kernel reads (run lists, row indices).
// Nothing here aborts, prints or throws across the C boundary.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>

#include "gpu_abi.h"

// The entry points the loader binds (common/gpu.cpp); everything else stays hidden.
#define HAULER_CUDA_EXPORT __attribute__((visibility("default")))

namespace hauler::cuda {

// Writes "<what>: <error name> (<error text>)" into err; returns rc.
inline int fail(char* err, size_t errlen, int rc, const char* what, cudaError_t e) {
  if (err && errlen) std::snprintf(err, errlen, "%s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
  return rc;
}

// Evaluates a runtime call inside an entry point (with `err` and `errlen` in scope); on failure
// returns HAULER_GPU_EINTERNAL with the call's name, code and text.
#define HAULER_CUDA_TRY(call, what)                                                            \
  do {                                                                                         \
    cudaError_t e_ = (call);                                                                   \
    if (e_ != cudaSuccess) return ::hauler::cuda::fail(err, errlen, HAULER_GPU_EINTERNAL, what, e_); \
  } while (0)

// What a launch needs to know about the calling thread's current device.
struct DeviceFacts {
  int device = 0;
  int sms = 0;       // multiprocessors: the launch shape depends on them
  int pageable = 0;  // kernels may read plain pageable host memory (HMM / ATS)
  int pools = 0;     // stream-ordered allocation (cudaMallocAsync)
};

inline int device_facts(DeviceFacts* f, char* err, size_t errlen) {
  HAULER_CUDA_TRY(cudaGetDevice(&f->device), "cudaGetDevice");
  HAULER_CUDA_TRY(cudaDeviceGetAttribute(&f->sms, cudaDevAttrMultiProcessorCount, f->device),
                  "cudaDeviceGetAttribute(multiprocessor count)");
  HAULER_CUDA_TRY(cudaDeviceGetAttribute(&f->pageable, cudaDevAttrPageableMemoryAccess, f->device),
                  "cudaDeviceGetAttribute(pageable memory access)");
  HAULER_CUDA_TRY(cudaDeviceGetAttribute(&f->pools, cudaDevAttrMemoryPoolsSupported, f->device),
                  "cudaDeviceGetAttribute(memory pools)");
  return HAULER_GPU_OK;
}

// A plain (unregistered) host pointer faults in a kernel unless the device can access pageable
// memory: refuse it with a sentence naming the buffer (`what`) and the remedy.
inline int check_pointer(const void* p, const char* what, const DeviceFacts& f, const char* remedy, char* err,
                         size_t errlen) {
  cudaPointerAttributes a;
  cudaError_t e = cudaPointerGetAttributes(&a, p);
  if (e != cudaSuccess) {
    cudaGetLastError();  // not sticky, but do not leave it for the next caller
    char what_failed[96];
    std::snprintf(what_failed, sizeof what_failed, "cannot query the %s pointer", what);
    return fail(err, errlen, HAULER_GPU_EINVAL, what_failed, e);
  }
  if (a.type == cudaMemoryTypeUnregistered && !f.pageable) {
    if (err && errlen)
      std::snprintf(err, errlen, "the %s pointer %p is host memory this GPU cannot access%s", what, p, remedy);
    return HAULER_GPU_EINVAL;
  }
  return HAULER_GPU_OK;
}

// A host array a kernel reads, uploaded for one launch: `slot` is the address of the pointer the
// kernel argument holds, rewritten to the array's device copy.
struct Upload {
  const void* host;
  size_t bytes;
  void* slot;
};

// Uploads `pieces` (each 16-byte aligned, back to back in one scratch allocation) stream-ordered,
// runs launch(), then releases the scratch: freed stream-ordered where the device has memory
// pools, else after the kernel finished. From pageable memory cudaMemcpyAsync returns once the
// bytes are staged, so the caller may reuse its arrays as soon as this returns. A launch error
// is reported before a release error.
// `uploads` names the arrays in error sentences ("run list", "index").
template <class Launch>
int launch_with_uploads(const DeviceFacts& f, Upload* pieces, int npieces, const char* uploads, cudaStream_t s,
                        Launch launch, const char* kernel_what, char* err, size_t errlen) {
  char what[96];
  size_t total = 0;
  for (int k = 0; k < npieces; ++k) total += (pieces[k].bytes + 15) / 16 * 16;
  void* scratch = nullptr;
  if (total > 0) {
    cudaError_t e = f.pools ? cudaMallocAsync(&scratch, total, s) : cudaMalloc(&scratch, total);
    if (e != cudaSuccess) {
      std::snprintf(what, sizeof what, "%s(%s)", f.pools ? "cudaMallocAsync" : "cudaMalloc", uploads);
      return fail(err, errlen, HAULER_GPU_EINTERNAL, what, e);
    }
  }
  auto release = [&]() -> cudaError_t {
    if (!scratch) return cudaSuccess;
    if (f.pools) return cudaFreeAsync(scratch, s);
    cudaError_t e = cudaStreamSynchronize(s);  // without stream-ordered allocation the kernel must finish first
    cudaError_t g = cudaFree(scratch);
    return e != cudaSuccess ? e : g;
  };
  cudaError_t e = cudaSuccess;
  size_t at = 0;
  for (int k = 0; k < npieces && e == cudaSuccess; ++k) {
    void* d = static_cast<uint8_t*>(scratch) + at;
    e = cudaMemcpyAsync(d, pieces[k].host, pieces[k].bytes, cudaMemcpyHostToDevice, s);
    std::memcpy(pieces[k].slot, &d, sizeof d);
    at += (pieces[k].bytes + 15) / 16 * 16;
  }
  if (e != cudaSuccess) {
    release();
    std::snprintf(what, sizeof what, "cudaMemcpyAsync(%s)", uploads);
    return fail(err, errlen, HAULER_GPU_EINTERNAL, what, e);
  }
  launch();
  cudaError_t launch_error = cudaGetLastError();
  e = release();
  if (launch_error != cudaSuccess) return fail(err, errlen, HAULER_GPU_EINTERNAL, kernel_what, launch_error);
  if (e != cudaSuccess) {
    std::snprintf(what, sizeof what, "releasing the %s", uploads);
    return fail(err, errlen, HAULER_GPU_EINTERNAL, what, e);
  }
  return HAULER_GPU_OK;
}

}  // namespace hauler::cuda
