// The one CUDA driver loader (the KvikIO pattern): libcuda.so.1 is dlopened here and nowhere
// else, its entry points are bound once into a table whose typed signatures are declared once,
// below, and every user (the GPU backend loader, the cuFile bounce path, the MPI shim's device
// detection and staging) asks this table. No CUDA header is needed: the few driver types are
// plain integers and pointers with the sizes cuda.h gives them.
//
// "No driver" is a state, not an error: driver() answers nullptr and says why.
#pragma once
#include <cstddef>
#include <string>

namespace hauler::cuda {

using CUresult = int;                // CUDA_SUCCESS = 0
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using CUcontext = void*;

constexpr CUresult kSuccess = 0;
constexpr CUresult kErrorNoDevice = 100;  // CUDA_ERROR_NO_DEVICE

// CUpointer_attribute values used here, and the CUmemorytype values they report.
enum PointerAttribute : int {
  kAttrContext = 1,
  kAttrMemoryType = 2,
  kAttrIsManaged = 8,
  kAttrRangeStart = 11,
  kAttrRangeSize = 12,
};
constexpr unsigned kMemoryTypeDevice = 2;
constexpr unsigned kIpcLazyEnablePeerAccess = 1;  // CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS

struct IpcMemHandle {  // CUipcMemHandle: passed by value
  char reserved[64];
};
constexpr unsigned kMemoryTypeUnified = 4;

// The entry points hauler uses. A driver may lack some (a stand-in built for tests answers only
// a few), so each may be nullptr: callers check the ones they call.
struct Driver {
  CUresult (*init)(unsigned int flags) = nullptr;                                    // cuInit
  CUresult (*driver_get_version)(int* version) = nullptr;                            // cuDriverGetVersion
  CUresult (*get_error_name)(CUresult rc, const char** name) = nullptr;              // cuGetErrorName
  CUresult (*device_get_count)(int* count) = nullptr;                                // cuDeviceGetCount
  CUresult (*device_get)(CUdevice* dev, int ordinal) = nullptr;                      // cuDeviceGet
  CUresult (*primary_ctx_retain)(CUcontext* ctx, CUdevice dev) = nullptr;            // cuDevicePrimaryCtxRetain
  CUresult (*primary_ctx_release)(CUdevice dev) = nullptr;                           // cuDevicePrimaryCtxRelease_v2
  CUresult (*ctx_push_current)(CUcontext ctx) = nullptr;                             // cuCtxPushCurrent_v2
  CUresult (*ctx_pop_current)(CUcontext* ctx) = nullptr;                             // cuCtxPopCurrent_v2
  CUresult (*pointer_get_attribute)(void* data, int attribute, CUdeviceptr p) = nullptr;  // cuPointerGetAttribute
  CUresult (*mem_alloc)(CUdeviceptr* p, size_t bytes) = nullptr;                     // cuMemAlloc_v2
  CUresult (*mem_free)(CUdeviceptr p) = nullptr;                                     // cuMemFree_v2
  CUresult (*memcpy_htod)(CUdeviceptr dst, const void* src, size_t bytes) = nullptr;  // cuMemcpyHtoD_v2
  CUresult (*memcpy_dtoh)(void* dst, CUdeviceptr src, size_t bytes) = nullptr;       // cuMemcpyDtoH_v2
  CUresult (*ipc_get_mem_handle)(IpcMemHandle* h, CUdeviceptr p) = nullptr;          // cuIpcGetMemHandle
  CUresult (*ipc_open_mem_handle)(CUdeviceptr* p, IpcMemHandle h, unsigned flags) = nullptr;  // cuIpcOpenMemHandle_v2
  CUresult (*ipc_close_mem_handle)(CUdeviceptr p) = nullptr;                         // cuIpcCloseMemHandle

  // "driver error <rc> (<CUDA_ERROR_NAME>)": the name when the driver can give it.
  std::string error(CUresult rc) const;
};

// The driver, loaded on the first call (once, thread-safe; the handle stays open for the life of
// the process). nullptr when libcuda.so.1 cannot be loaded; *why then receives
// "no driver (...)". The driver is not initialized here (cuInit is the caller's business).
const Driver* driver(std::string* why = nullptr);

// The driver only if the program has loaded libcuda itself: never loads it (the MPI shim must not
// start CUDA in a program that does not use it). Cheap when nothing was loaded since the last
// call: it compares the dynamic linker's load counter instead of searching the disk.
const Driver* driver_if_loaded();

}  // namespace hauler::cuda
