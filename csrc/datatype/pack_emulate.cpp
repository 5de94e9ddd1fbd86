// Host emulation of the GPU pack/unpack kernels: runs pack_index.cuh's per-thread body for every
// thread of the grid the CUDA launcher would start (same launch_shape, for the emulated
// multiprocessor count), on host memory. Part of the emulation backend (common/gpu_emulation.hpp).
#include "../common/gpu_emulation.hpp"
#include "pack_index.cuh"

extern "C" int hauler_emu_pack(const HaulerDevLayout* layout, void* origin, void* buf, int64_t pos, int64_t n,
                               int pack, void* /*stream: the emulation is synchronous*/, char* err, size_t errlen) {
  int rc = hauler::dt::check_call(layout, origin, buf, pos, n, err, errlen);
  if (rc != HAULER_GPU_OK || n == 0) return rc;
  uint32_t grid = 0, block = 0;
  hauler::dt::launch_shape(n / layout->word, hauler::gpu::emulated_sm_count(), &grid, &block);
  hauler::gpu::emulate_grid(grid, block, [&](uint64_t tid, uint64_t nthreads) {
    hauler::dt::pack_thread(*layout, static_cast<uint8_t*>(origin), static_cast<uint8_t*>(buf), pos, n, tid,
                            nthreads, pack != 0);
  });
  return HAULER_GPU_OK;
}
