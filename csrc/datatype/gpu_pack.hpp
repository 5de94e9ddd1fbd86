// Pack/unpack with device buffers: the core-facing side of the GPU kernels.
// Same window semantics as pack.hpp (`out`/`in` hold the bytes [pos, pos + n)
// of the packed stream); both `origin` and the packed buffer are device (or
// device-accessible) memory. The work is queued on `stream` (a cudaStream_t;
// nullptr = the legacy default stream) and the call returns without waiting;
// hauler::gpu::synchronize(stream) waits.
#pragma once
#include <cstdint>

#include "pack.hpp"
#include "pack_index.cuh"

namespace hauler::dt {

// Throws out_of_range for a bad window, no_device ("<gpu status>: device
// buffers need a GPU") without a backend, and the backend's error otherwise.
void gpu_pack(const Plan& p, const void* origin, void* out, int64_t pos, int64_t n, void* stream = nullptr);
void gpu_unpack(const Plan& p, void* origin, const void* in, int64_t pos, int64_t n, void* stream = nullptr);

// The kernel a call with these arguments runs: form "gpu-contiguous",
// "gpu-strided" or "gpu-runs", and the word size (bytes per access).
KernelChoice gpu_kernel_choice(const Plan& p, const void* origin, const void* buf, int64_t pos, int64_t n);

// The plan as the kernels see it (word left 0; pick_word sets it per call).
// Run arrays point into the Plan, which must outlive the DevLayout.
DevLayout dev_layout(const Plan& p);

}  // namespace hauler::dt
