#include "gpu_ipc.hpp"

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

#include "cuda_driver.hpp"
#include "gpu.hpp"
#include "gpu_emulation.hpp"
#include "status.hpp"

namespace hauler::gpu {

namespace {

std::string addr(const void* p) {
  char s[32];
  std::snprintf(s, sizeof s, "%p", p);
  return s;
}

// The driver entry points the CUDA path needs; no_device (with the loader's words) without them.
const cuda::Driver& ipc_driver(const char* what) {
  if (!backend()) fail(Status::no_device, status_message() + ": " + what + " needs a GPU");
  const cuda::Driver* d = cuda::driver();
  if (!d || !d->pointer_get_attribute || !d->ipc_get_mem_handle || !d->ipc_open_mem_handle ||
      !d->ipc_close_mem_handle || !d->device_get || !d->primary_ctx_retain || !d->primary_ctx_release ||
      !d->ctx_push_current || !d->ctx_pop_current)
    fail(Status::no_device, std::string(what) + ": the CUDA driver lacks the IPC or context entry points");
  return *d;
}

// Runs f with ctx current on this thread, restoring the caller's after.
template <class F>
cuda::CUresult in_context(const cuda::Driver& d, cuda::CUcontext ctx, F f) {
  cuda::CUresult rc = d.ctx_push_current(ctx);
  if (rc != cuda::kSuccess) return rc;
  rc = f();
  cuda::CUcontext popped = nullptr;
  d.ctx_pop_current(&popped);
  return rc;
}

struct Opened {
  cuda::CUdevice device;
  cuda::CUcontext ctx;
  int refs;  // the driver maps a handle once per context and counts the opens: so do we
};
std::mutex g_mu;
std::map<uintptr_t, Opened> g_opened;  // peers' allocations this process mapped through the driver

void check_rc(int rc, const char* err) {
  if (rc != HAULER_GPU_OK) fail(status_of(rc), err);
}

}  // namespace

IpcExport ipc_export(const void* p) {
  IpcExport out{};
  if (emulation()) {
    char err[512] = "";
    check_rc(hauler_emu_ipc_get(p, out.handle, &out.base, &out.size, err, sizeof err), err);
    return out;
  }
  const cuda::Driver& d = ipc_driver("exporting device memory to another process (CUDA IPC)");
  const auto dp = static_cast<cuda::CUdeviceptr>(reinterpret_cast<uintptr_t>(p));
  unsigned type = 0;
  cuda::CUresult rc = d.pointer_get_attribute(&type, cuda::kAttrMemoryType, dp);
  if (rc != cuda::kSuccess || type != cuda::kMemoryTypeDevice)
    fail(Status::invalid_argument, addr(p) + " is not device memory (" +
                                       (rc != cuda::kSuccess ? d.error(rc) : "memory type " + std::to_string(type)) +
                                       "): CUDA IPC exports device allocations only");
  cuda::CUcontext ctx = nullptr;
  cuda::CUdeviceptr base = 0;
  size_t size = 0;
  rc = d.pointer_get_attribute(&ctx, cuda::kAttrContext, dp);
  if (rc == cuda::kSuccess) rc = d.pointer_get_attribute(&base, cuda::kAttrRangeStart, dp);
  if (rc == cuda::kSuccess) rc = d.pointer_get_attribute(&size, cuda::kAttrRangeSize, dp);
  if (rc != cuda::kSuccess) fail(Status::internal, "querying the allocation of " + addr(p) + ": " + d.error(rc));
  cuda::IpcMemHandle h{};
  rc = in_context(d, ctx, [&] { return d.ipc_get_mem_handle(&h, base); });
  if (rc != cuda::kSuccess)
    fail(Status::invalid_argument, "cuIpcGetMemHandle of the allocation holding " + addr(p) + ": " + d.error(rc) +
                                       " (memory from stream-ordered pools, cudaMallocAsync, or from cuMemCreate "
                                       "cannot be exported this way)");
  static_assert(sizeof h == kIpcHandleBytes, "CUipcMemHandle is 64 bytes");
  std::memcpy(out.handle, &h, sizeof h);
  out.base = base;
  out.size = size;
  return out;
}

void* ipc_open(const uint8_t* handle, int device, uint64_t* size) {
  if (!handle || !size) fail(Status::invalid_argument, "ipc_open: null handle or size");
  if (emulation()) {
    void* m = nullptr;
    char err[512] = "";
    check_rc(hauler_emu_ipc_open(handle, device, &m, size, err, sizeof err), err);
    return m;
  }
  const cuda::Driver& d = ipc_driver("mapping a peer's device memory (CUDA IPC)");
  cuda::CUdevice dev = 0;
  cuda::CUcontext ctx = nullptr;
  cuda::CUresult rc = d.device_get(&dev, device);
  if (rc != cuda::kSuccess)
    fail(Status::invalid_argument, "device " + std::to_string(device) + " to map a peer's memory on: " + d.error(rc));
  rc = d.primary_ctx_retain(&ctx, dev);
  if (rc != cuda::kSuccess) fail(Status::internal, "retaining the primary context of device " + std::to_string(device) +
                                                       ": " + d.error(rc));
  cuda::IpcMemHandle h;
  std::memcpy(&h, handle, sizeof h);
  cuda::CUdeviceptr p = 0;
  size_t bytes = 0;
  rc = in_context(d, ctx, [&] {
    cuda::CUresult r = d.ipc_open_mem_handle(&p, h, cuda::kIpcLazyEnablePeerAccess);
    if (r == cuda::kSuccess && d.pointer_get_attribute(&bytes, cuda::kAttrRangeSize, p) != cuda::kSuccess) bytes = 0;
    return r;
  });
  if (rc != cuda::kSuccess) {
    d.primary_ctx_release(dev);
    // A handle whose exporter exited (or freed the allocation) fails to map; so does one of another
    // boot. The agent checks the node before it gets here, so the likely cause is named first.
    fail(Status::no_device, "cuIpcOpenMemHandle: " + d.error(rc) + ": the peer's device memory is gone (its "
                            "process exited or freed it), or the handle is not from this node and boot");
  }
  std::lock_guard<std::mutex> lk(g_mu);
  ++g_opened.try_emplace(static_cast<uintptr_t>(p), Opened{dev, ctx, 0}).first->second.refs;
  *size = bytes;
  return reinterpret_cast<void*>(static_cast<uintptr_t>(p));
}

void ipc_close(void* mapped) {
  if (emulation()) {
    char err[512] = "";
    check_rc(hauler_emu_ipc_close(mapped, err, sizeof err), err);
    return;
  }
  Opened o{};
  {
    std::lock_guard<std::mutex> lk(g_mu);
    auto it = g_opened.find(reinterpret_cast<uintptr_t>(mapped));
    if (it == g_opened.end())
      fail(Status::invalid_argument, "nothing mapped from a peer starts at " + addr(mapped) + " (closed twice?)");
    o = it->second;
    if (--it->second.refs == 0) g_opened.erase(it);
  }
  const cuda::Driver& d = ipc_driver("unmapping a peer's device memory (CUDA IPC)");
  cuda::CUresult rc = in_context(d, o.ctx, [&] {
    return d.ipc_close_mem_handle(static_cast<cuda::CUdeviceptr>(reinterpret_cast<uintptr_t>(mapped)));
  });
  d.primary_ctx_release(o.device);
  if (rc != cuda::kSuccess) fail(Status::internal, "cuIpcCloseMemHandle of " + addr(mapped) + ": " + d.error(rc));
}

void* emulated_device_alloc(size_t n) {
  void* p = nullptr;
  char err[256] = "";
  check_rc(hauler_emu_device_alloc(n, &p, err, sizeof err), err);
  return p;
}

void emulated_device_free(void* p) {
  char err[256] = "";
  check_rc(hauler_emu_device_free(p, err, sizeof err), err);
}

}  // namespace hauler::gpu
