// What the CUDA entry points of libhauler_cuda.so share (nvcc only): CUDA errors turned into a
// return code and a sentence, the device facts a launch depends on, pointer checks, and the
// stream-ordered upload of the small host arrays a kernel reads (run lists, row indices).
// Nothing here aborts, prints or throws across the C boundary.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>

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

// What a launch needs to know about the device it runs on.
struct DeviceFacts {
  int device = 0;
  int sms = 0;       // multiprocessors: the launch shape depends on them
  int pageable = 0;  // kernels may read plain pageable host memory (HMM / ATS)
  int pools = 0;     // stream-ordered allocation (cudaMallocAsync)
};

inline int query_device_facts(int device, DeviceFacts* f, char* err, size_t errlen) {
  f->device = device;
  HAULER_CUDA_TRY(cudaDeviceGetAttribute(&f->sms, cudaDevAttrMultiProcessorCount, device),
                  "cudaDeviceGetAttribute(multiprocessor count)");
  HAULER_CUDA_TRY(cudaDeviceGetAttribute(&f->pageable, cudaDevAttrPageableMemoryAccess, device),
                  "cudaDeviceGetAttribute(pageable memory access)");
  HAULER_CUDA_TRY(cudaDeviceGetAttribute(&f->pools, cudaDevAttrMemoryPoolsSupported, device),
                  "cudaDeviceGetAttribute(memory pools)");
  return HAULER_GPU_OK;
}

// A device's facts do not change while the process runs: queried on its first call only, so a
// pack or gather call costs no attribute queries (one table for the whole library).
inline int device_facts(int device, DeviceFacts* f, char* err, size_t errlen) {
  constexpr int kCached = 64;  // devices beyond it are queried every call
  static std::atomic<bool> ready[kCached];
  static DeviceFacts cache[kCached];
  static std::mutex mu;
  const bool cached = device >= 0 && device < kCached;
  if (cached && ready[device].load(std::memory_order_acquire)) {
    *f = cache[device];
    return HAULER_GPU_OK;
  }
  DeviceFacts q;
  int rc = query_device_facts(device, &q, err, errlen);
  if (rc != HAULER_GPU_OK) return rc;
  if (cached) {
    std::lock_guard<std::mutex> lk(mu);
    if (!ready[device].load(std::memory_order_relaxed)) {
      cache[device] = q;
      ready[device].store(true, std::memory_order_release);
    }
  }
  *f = q;
  return HAULER_GPU_OK;
}

// A pointer an entry point was handed, with its attributes; `what` names it in error sentences.
struct Pointer {
  const void* p;
  const char* what;
  cudaPointerAttributes a;
};

inline int query_pointer(Pointer* q, char* err, size_t errlen) {
  cudaError_t e = cudaPointerGetAttributes(&q->a, q->p);
  if (e != cudaSuccess) {
    cudaGetLastError();  // not sticky, but do not leave it for the next caller
    char what_failed[96];
    std::snprintf(what_failed, sizeof what_failed, "cannot query the %s pointer", q->what);
    return fail(err, errlen, HAULER_GPU_EINVAL, what_failed, e);
  }
  return HAULER_GPU_OK;
}

// The device a call on these pointers must run on: the one that owns the device memory among
// them (a kernel on another GPU would fault or read through peer access), else the caller's
// current device (registered host and managed memory are reachable from every device).
inline int owning_device(const Pointer* qs, int n, int* device, char* err, size_t errlen) {
  const Pointer* owner = nullptr;
  for (int k = 0; k < n; ++k) {
    if (qs[k].a.type != cudaMemoryTypeDevice) continue;
    if (!owner) {
      owner = &qs[k];
    } else if (qs[k].a.device != owner->a.device) {
      if (err && errlen)
        std::snprintf(err, errlen,
                      "the %s pointer %p is on device %d and the %s pointer %p on device %d: one call runs on one "
                      "GPU (copy one buffer to the other's device first)",
                      owner->what, owner->p, owner->a.device, qs[k].what, qs[k].p, qs[k].a.device);
      return HAULER_GPU_EINVAL;
    }
  }
  if (owner) {
    *device = owner->a.device;
    return HAULER_GPU_OK;
  }
  HAULER_CUDA_TRY(cudaGetDevice(device), "cudaGetDevice");
  return HAULER_GPU_OK;
}

// Makes `device` current for the life of the scope and gives the caller's device back after.
class DeviceScope {
 public:
  DeviceScope() = default;
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  ~DeviceScope() {
    if (switched_ && cudaSetDevice(previous_) != cudaSuccess) cudaGetLastError();
  }
  int enter(int device, char* err, size_t errlen) {
    HAULER_CUDA_TRY(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ == device) return HAULER_GPU_OK;
    HAULER_CUDA_TRY(cudaSetDevice(device), "cudaSetDevice");
    switched_ = true;
    return HAULER_GPU_OK;
  }

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// What every kernel entry point does before its launch: query the n pointers, switch to the
// device that owns them (restored when `scope` ends), fill `f` with its facts, and refuse a plain
// (unregistered) host pointer the device cannot reach, naming the buffer and the remedy.
inline int enter_call(Pointer* qs, int n, const char* remedy, DeviceScope* scope, DeviceFacts* f, char* err,
                      size_t errlen) {
  for (int k = 0; k < n; ++k) {
    int rc = query_pointer(&qs[k], err, errlen);
    if (rc != HAULER_GPU_OK) return rc;
  }
  int device = 0;
  int rc = owning_device(qs, n, &device, err, errlen);
  if (rc == HAULER_GPU_OK) rc = scope->enter(device, err, errlen);
  if (rc == HAULER_GPU_OK) rc = device_facts(device, f, err, errlen);
  if (rc != HAULER_GPU_OK) return rc;
  for (int k = 0; k < n; ++k) {
    if (qs[k].a.type == cudaMemoryTypeUnregistered && !f->pageable) {
      if (err && errlen)
        std::snprintf(err, errlen, "the %s pointer %p is host memory device %d cannot access%s", qs[k].what,
                      qs[k].p, device, remedy);
      return HAULER_GPU_EINVAL;
    }
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
