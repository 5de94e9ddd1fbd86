// The KV copy on the GPU: one kernel launch per plan (kv_cuda.cu), an entry of the GPU backend
// table (hauler_cuda_kv_copy in libhauler_cuda.so, hauler_emu_kv_copy in the host emulation).
#pragma once
#include <cstddef>
#include <cstdint>

#include "plan.hpp"

namespace hauler::kv {

// Moves the pieces and boxes with one launch on `stream` (a cudaStream_t; 0 = the legacy
// default stream) and waits for it when sync. Memory outside device memory
// must be pinned and mapped (torch pin_memory, cudaHostRegister): each of the
// `regions` is checked before the launch. Throws no_device without a GPU.
void copy_segments_device(const Segment* segs, int64_t n, const Box* boxes, int64_t nboxes, const int64_t* regions,
                          int64_t nregions, void* stream, bool sync, int max_blocks);

}  // namespace hauler::kv
