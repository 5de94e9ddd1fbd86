// Host emulation of the GPU pack/unpack kernels: runs pack_index.cuh's
// per-thread body for every thread of the grid the CUDA launcher would start
// (same launch_shape, for an emulated multiprocessor count), on host memory.
// It implements the same C entry points as libhauler_cuda.so, so the loader
// can swap it in for the library (hauler::gpu::use_emulation) and the device
// code paths of the core and the bindings run without a GPU.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../common/gpu_abi.h"

extern "C" {
int hauler_emu_abi(void);
int hauler_emu_init(HaulerDeviceInfo* info, char* err, size_t errlen);
int hauler_emu_pack(const HaulerDevLayout* layout, void* origin, void* buf, int64_t pos, int64_t n, int pack,
                    void* stream, char* err, size_t errlen);
int hauler_emu_synchronize(void* stream, char* err, size_t errlen);
}

namespace hauler::dt {

// Multiprocessors of the emulated GPU (default 2: a small grid, so the
// grid-stride loops iterate already for windows of a few KiB). Tests vary it.
constexpr int kDefaultEmulatedSms = 2;
void set_emulated_sm_count(int sms);
int emulated_sm_count();

}  // namespace hauler::dt
