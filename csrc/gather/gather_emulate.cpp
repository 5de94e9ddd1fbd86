// Host emulation of the GPU gather and scatter kernels: runs gather_index.cuh's per-thread body
// for every thread of the grid the CUDA launcher would start (same gather_launch_shape, for the
// emulated multiprocessor count). Part of the emulation backend (common/gpu_emulation.hpp).
#include "../common/gpu_emulation.hpp"
#include "gather_index.cuh"

namespace {

template <class Args, class Body>
int run_grid(const Args* args, int rc, Body body) {
  if (rc != HAULER_GPU_OK || args->n == 0) return rc;
  uint32_t grid = 0, block = 0;
  hauler::gather::gather_launch_shape(args->n, args->group, hauler::gpu::emulated_sm_count(), args->max_blocks, &grid,
                                      &block);
  hauler::gpu::emulate_grid(grid, block, [&](uint64_t tid, uint64_t nthreads) { body(*args, tid, nthreads); });
  return HAULER_GPU_OK;
}

}  // namespace

extern "C" {

int hauler_emu_gather(const HaulerGatherArgs* args, void* /*stream: the emulation is synchronous*/, char* err,
                      size_t errlen) {
  return run_grid(args, hauler::gather::check_gather(args, err, errlen), hauler::gather::gather_thread);
}

int hauler_emu_scatter(const HaulerScatterArgs* args, void* /*stream*/, char* err, size_t errlen) {
  return run_grid(args, hauler::gather::check_scatter(args, err, errlen), hauler::gather::scatter_thread);
}

}  // extern "C"
