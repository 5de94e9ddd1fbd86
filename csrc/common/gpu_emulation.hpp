// The host emulation backend: the C entry points of libhauler_cuda.so, run on host memory by
// the kernels' own index code (the `*_index.cuh` headers), one emulated GPU thread after another.
// The loader swaps it in for the library (hauler::gpu::use_emulation), so the device code paths
// of the core and the bindings run without a GPU; tests/interpose/emukernels.cpp exports it under
// the library's names for the MPI shim.
//
// This file and gpu_emulation.cpp hold what belongs to the emulated device (ABI, init, host
// registration, synchronize, its multiprocessor count) and the backend table; each capability
// implements its own kernels' entry points beside their index code (datatype/pack_emulate.cpp,
// gather/gather_emulate.cpp).
#pragma once
#include <cstddef>
#include <cstdint>

#include "gpu_abi.h"

extern "C" {
// The emulated device (gpu_emulation.cpp).
int hauler_emu_abi(void);
int hauler_emu_init(HaulerDeviceInfo* info, char* err, size_t errlen);
int hauler_emu_synchronize(void* stream, char* err, size_t errlen);
int hauler_emu_host_register(void* p, size_t n, int readonly, void** device, char* err, size_t errlen);
int hauler_emu_host_unregister(void* p, char* err, size_t errlen);
// Pack/unpack (datatype/pack_emulate.cpp).
int hauler_emu_pack(const struct HaulerDevLayout* layout, void* origin, void* buf, int64_t pos, int64_t n, int pack,
                    void* stream, char* err, size_t errlen);
// Row gather and scatter (gather/gather_emulate.cpp).
int hauler_emu_gather(const struct HaulerGatherArgs* args, void* stream, char* err, size_t errlen);
int hauler_emu_scatter(const struct HaulerScatterArgs* args, void* stream, char* err, size_t errlen);
// Device memory and CUDA IPC (below). Emulated device allocations are shared memory (a memfd per
// allocation) so that another process can map them: the handle names the exporting process, the
// allocation's descriptor and serial, and the boot (and pid namespace) it is valid in.
int hauler_emu_device_alloc(size_t n, void** p, char* err, size_t errlen);
int hauler_emu_device_free(void* p, char* err, size_t errlen);
int hauler_emu_ipc_get(const void* p, void* handle, uint64_t* base, uint64_t* size, char* err, size_t errlen);
int hauler_emu_ipc_open(const void* handle, int device, void** mapped, uint64_t* size, char* err, size_t errlen);
int hauler_emu_ipc_close(void* mapped, char* err, size_t errlen);
// KV block copy (kv/kv_emulate.cpp).
int hauler_emu_kv_copy(const struct HaulerKVCopyArgs* args, const int64_t* regions, int64_t nregions, void* stream,
                       char* err, size_t errlen);
}

namespace hauler::gpu {

// Multiprocessors of the emulated GPU (default 2: a small grid, so the grid-stride loops iterate
// already for windows of a few KiB). The emulated kernels size their grids with it, as the CUDA
// launchers do with the device's count; tests vary it.
constexpr int kDefaultEmulatedSms = 2;
void set_emulated_sm_count(int sms);
int emulated_sm_count();

// The emulated device keeps host registrations as CUDA does (whole pages, unregistered by the
// address registered, "already registered" for a range inside one), so the core's reference
// counting of shared registrations runs in tests. Whether p's page is registered; how many are.
bool emulated_registered(const void* p);
size_t emulated_registrations();

// Runs body(tid, nthreads) for every thread of a grid of `grid` blocks of `block` threads, one
// after another: the emulation checks the index math and the work split (each output word has
// one writer), not concurrency.
template <class Body>
void emulate_grid(uint32_t grid, uint32_t block, Body body) {
  const uint64_t nthreads = static_cast<uint64_t>(grid) * block;
  for (uint64_t tid = 0; tid < nthreads; ++tid) body(tid, nthreads);
}

}  // namespace hauler::gpu
