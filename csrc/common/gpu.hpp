// The GPU backend loader (Yaksa/UCX pattern). The core never links CUDA: on
// first use it loads the driver (cuda_driver.hpp), asks it for a device, and only then dlopens
// libhauler_cuda.so and fills a table of function pointers from it. "No
// driver" and "no device" are states, not errors: status() says which, in
// words, and callers that need a GPU turn it into a Status::no_device error.
//
// Tests swap in the host emulation of the kernels (use_emulation), the way
// mpi4py tests device-array paths over host memory without a GPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "gpu_abi.h"
#include "status.hpp"

namespace hauler::gpu {

// A backend: libhauler_cuda.so or the host emulation.
struct Backend {
  const char* name;  // "cuda" or "emulation"
  hauler_gpu_abi_fn abi;
  hauler_gpu_init_fn init;
  hauler_gpu_pack_fn pack;
  hauler_gpu_sync_fn synchronize;
  hauler_gpu_gather_fn gather;                  // ABI 2
  hauler_gpu_host_register_fn host_register;    // ABI 2
  hauler_gpu_host_unregister_fn host_unregister;  // ABI 2
  hauler_gpu_scatter_fn scatter;                // ABI 3
  hauler_gpu_kv_copy_fn kv_copy;                // ABI 5
};

struct GpuStatus {
  bool available = false;
  bool emulated = false;  // the host emulation stands in for the GPU
  std::string message;    // "CUDA available: <device>, driver 12.4", "no driver (...)", ...
  std::string library;    // path of libhauler_cuda.so looked for ("" if the driver check failed first)
  HaulerDeviceInfo device{};  // filled when a real GPU is available
};

// The backend in use, or nullptr when no GPU (and no emulation). The first
// call probes the driver and loads the library (once, thread-safe).
const Backend* backend();
bool available();
GpuStatus status();
// What the loader found, whether or not the emulation stands in for it.
GpuStatus loader_status();
std::string status_message();

// Replaces the GPU library by the host emulation (on = true) or goes back to
// whatever the loader found. Process-wide; meant for tests.
void use_emulation(bool on);
bool emulation();

// Waits for the work queued on `stream` (a cudaStream_t, nullptr: the legacy
// default stream). Throws hauler::Error(no_device) without a backend.
void synchronize(void* stream = nullptr);

// The Status a backend return code stands for (anything unknown: internal).
Status status_of(int rc);

// Where the loader looks for the GPU library: $HAULER_CUDA_LIB (a file, or a
// directory holding libhauler_cuda.so), else beside the module that contains
// the core (the Python extension _core, or a test executable), else two
// folders up from it when the library is there (the MPI shim's place in the
// package: <package>/interpose/<flavour>/).
std::string library_path();
// The search without $HAULER_CUDA_LIB, for a core inside the module file `module`.
std::string library_near(const std::string& module);

// Registers [p, p + n) for GPU access (pinned in place, mapped) and returns the device address
// of p. Pages are registered whole, so ranges may share a registration (small tables on one page,
// one table pinned twice): hauler counts the users of each registration it made and unregisters
// it when the last one leaves; a range inside a registration made by someone else (torch's
// pinned memory, the application's cudaHostRegister) is used as it is and never unregistered by
// hauler. A writable range inside a read-only registration of hauler's is refused
// (invalid_argument). Throws no_device without a backend.
void* host_register(void* p, size_t n, bool readonly);
// Ends the latest host_register(p, ...) still in force; invalid_argument when there is none.
void host_unregister(void* p);
// The users of the registration hauler made at exactly p (0: none). For tests.
int host_registration_users(const void* p);

// The emulation backend (gpu_emulation.hpp).
const Backend& emulation_backend();

}  // namespace hauler::gpu
