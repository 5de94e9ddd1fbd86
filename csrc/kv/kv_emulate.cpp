// The host emulation of the KV copy kernel: every thread of the grid the CUDA
// launcher would start, one after another, running kv_index.cuh.
#include <cstring>

#include "../common/gpu_emulation.hpp"
#include "kv_index.cuh"

// Host memory is "device-accessible" to the emulated kernel as it is: the
// regions need no check.
extern "C" int hauler_emu_kv_copy(const HaulerKVCopyArgs* a, const int64_t* /*regions*/, int64_t /*nregions*/,
                                  void* /*stream: synchronous*/, char* /*err*/, size_t /*errlen*/) {
  if (a->n == 0 && a->nboxes == 0) return 0;
  uint32_t grid = 0, block = 0;
  hauler::kv::kv_launch_shape(a->n + a->nboxes, hauler::gpu::emulated_sm_count(), a->max_blocks, &grid, &block);
  const uint64_t nthreads = static_cast<uint64_t>(grid) * block;
  auto copy = [](int64_t dst, int64_t src, int w) {
    std::memcpy(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), static_cast<size_t>(w));
  };
  for (uint64_t tid = 0; tid < nthreads; ++tid) {
    hauler::kv::kv_copy_thread(a->segs, a->n, tid, nthreads, copy);
    hauler::kv::kv_box_thread(a->boxes, a->nboxes, tid, nthreads, copy);
  }
  return 0;
}
