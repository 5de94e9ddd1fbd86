// Host emulation of the GPU gather kernel: runs gather_index.cuh's
// per-thread body for every thread of the grid the CUDA launcher would start
// (same gather_launch_shape, for the emulated multiprocessor count). It is
// part of the emulation backend (datatype/pack_emulate.cpp assembles it).
#pragma once
#include <cstddef>
#include <cstdint>

#include "../common/gpu_abi.h"

extern "C" {
int hauler_emu_gather(const struct HaulerGatherArgs* args, void* stream, char* err, size_t errlen);
int hauler_emu_scatter(const struct HaulerScatterArgs* args, void* stream, char* err, size_t errlen);
int hauler_emu_host_register(void* p, size_t n, int readonly, void** device, char* err, size_t errlen);
int hauler_emu_host_unregister(void* p, char* err, size_t errlen);
}
