#include "gather_emulate.hpp"

#include "../datatype/pack_emulate.hpp"
#include "gather_index.cuh"

namespace {

// Runs `body` for every thread of the grid the CUDA launcher would start for
// args (same gather_launch_shape, for the emulated multiprocessor count), one
// thread after another: the emulation checks the index math and the work
// split (each output word has one writer), not concurrency.
template <class Args, class Body>
int emulate_grid(const Args* args, int rc, Body body) {
  if (rc != HAULER_GPU_OK || args->n == 0) return rc;
  uint32_t grid = 0, block = 0;
  hauler::gather::gather_launch_shape(args->n, args->group, hauler::dt::emulated_sm_count(), args->max_blocks, &grid,
                                      &block);
  const uint64_t nthreads = static_cast<uint64_t>(grid) * block;
  for (uint64_t tid = 0; tid < nthreads; ++tid) body(*args, tid, nthreads);
  return HAULER_GPU_OK;
}

}  // namespace

extern "C" {

int hauler_emu_gather(const HaulerGatherArgs* args, void* /*stream: the emulation is synchronous*/, char* err,
                      size_t errlen) {
  return emulate_grid(args, hauler::gather::check_gather(args, err, errlen), hauler::gather::gather_thread);
}

int hauler_emu_scatter(const HaulerScatterArgs* args, void* /*stream*/, char* err, size_t errlen) {
  return emulate_grid(args, hauler::gather::check_scatter(args, err, errlen), hauler::gather::scatter_thread);
}

int hauler_emu_host_register(void* p, size_t, int, void** device, char* err, size_t errlen) {
  if (!device) {
    if (err && errlen) std::snprintf(err, errlen, "device pointer out-argument is null");
    return HAULER_GPU_EINVAL;
  }
  *device = p;  // host memory is "device-accessible" to the emulated kernels as it is
  return HAULER_GPU_OK;
}

int hauler_emu_host_unregister(void*, char*, size_t) { return HAULER_GPU_OK; }

}  // extern "C"
