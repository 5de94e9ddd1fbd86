// The KV copy on the GPU: one kernel launch per plan (kv_cuda.cu), found in
// libhauler_cuda.so beside the other kernels, or its host emulation in tests.
#pragma once
#include <cstddef>
#include <cstdint>

#include "plan.hpp"

struct HaulerKVCopyArgs;

extern "C" {
// Entry points (C ABI): hauler_cuda_kv_copy in libhauler_cuda.so, hauler_emu_kv_copy in the core.
// regions/nregions: (address, nbytes) pairs the kernel touches, checked device-accessible first.
typedef int (*hauler_kv_copy_fn)(const HaulerKVCopyArgs* args, const int64_t* regions, int64_t nregions,
                                 void* stream, char* err, size_t errlen);
int hauler_emu_kv_copy(const HaulerKVCopyArgs* args, const int64_t* regions, int64_t nregions, void* stream,
                       char* err, size_t errlen);
}

namespace hauler::kv {

// Moves the pieces and boxes with one launch on `stream` (a cudaStream_t; 0 = the legacy
// default stream) and waits for it when sync. Memory outside device memory
// must be pinned and mapped (torch pin_memory, cudaHostRegister): each of the
// `regions` is checked before the launch. Throws no_device without a GPU.
void copy_segments_device(const Segment* segs, int64_t n, const Box* boxes, int64_t nboxes, const int64_t* regions,
                          int64_t nregions, void* stream, bool sync, int max_blocks);

}  // namespace hauler::kv
