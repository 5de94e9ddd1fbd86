// Device memory shared between processes of one node (CUDA IPC): the exporter hands out a handle
// of the allocation holding a device pointer; a peer maps it into its own address space, runs
// kernels on it, and unmaps it. The driver calls go through the one libcuda loader
// (cuda_driver.hpp); under the host emulation the same calls map shared memory of the exporting
// process (gpu_emulation.cpp), so two real processes exercise this path without a GPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace hauler::gpu {

constexpr size_t kIpcHandleBytes = 64;  // CU_IPC_HANDLE_SIZE

struct IpcExport {
  uint8_t handle[kIpcHandleBytes];
  uint64_t base;  // the allocation's first address in the exporter (a peer maps the whole allocation)
  uint64_t size;  // its bytes
};

// The handle of the device allocation holding p. invalid_argument when p is not device memory
// the driver can export (host memory, stream-ordered pool memory); no_device without a GPU.
IpcExport ipc_export(const void* p);
// Maps a peer's allocation on `device` (an ordinal of this process); returns its address here.
// *size receives its bytes. invalid_argument for a handle of another node or boot or not a
// handle at all; no_device when the exporting process or its allocation is gone.
void* ipc_open(const uint8_t* handle, int device, uint64_t* size);
// Unmaps what ipc_open returned; invalid_argument for anything else (or twice).
void ipc_close(void* mapped);

// Device memory of the host emulation (shared memory a peer can map through ipc_open): for tests.
void* emulated_device_alloc(size_t n);
void emulated_device_free(void* p);

}  // namespace hauler::gpu
