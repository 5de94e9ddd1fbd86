// Row gather into device memory: the core-facing side of the GPU kernel.
// The table is device-accessible memory (a registered host table: its
// device address from host_register, or device memory); the index is host
// memory, validated here (position and value of the first bad index) before
// anything is queued. Work goes on `stream` (a cudaStream_t; nullptr = the
// legacy default stream); gpu::synchronize(stream) waits.
#pragma once
#include <cstddef>
#include <cstdint>

#include "gather.hpp"
#include "gather_index.cuh"

namespace hauler::gather {

// Throws no_device ("<gpu status>: ...") without a backend.
void gpu_gather(const Table& t, const Index& idx, void* out, void* stream = nullptr, int max_blocks = -1);

// Scatter from device-accessible src rows into the (registered) table:
// assign writes each destination row once, from the LAST position naming it
// (duplicates resolved here on the host, so the result equals the host
// scatter); add is an atomicAdd per element (float32/64, (u)int32/64: no
// atomic exists for narrower integers, invalid_argument says so), duplicates
// in an unspecified order. Checks everything before anything is queued.
void gpu_scatter(const Table& t, const Index& idx, const void* src, Reduce r, Elem e, void* stream = nullptr,
                 int max_blocks = -1);

// The kernel shape a call would use: access width and threads per row.
struct GpuChoice {
  int word;
  int group;
};
GpuChoice gpu_choice(const Table& t, const void* out);

// Registers [p, p + n) for GPU access (pinned in place, mapped); returns the
// device address of p. Shared registrations are reference counted
// (gpu::host_register). Throws no_device without a backend.
void* host_register(void* p, size_t n, bool readonly);
void host_unregister(void* p);

}  // namespace hauler::gather
