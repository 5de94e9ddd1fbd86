// A stand-in for libhauler_cuda.so on machines without a GPU: the host emulation of the
// kernels (csrc/common/gpu_emulation.cpp and the capabilities' *_emulate.cpp) under the names the
// GPU loader binds. With the fake driver (fakecuda.c built with -DFAKE_DRIVER), "device"
// memory is host memory, so the interposer's GPU path can be compared byte for byte with the
// MPI library alone.
#include "common/gpu_emulation.hpp"

#define HAULER_CUDA_EXPORT extern "C" __attribute__((visibility("default")))

HAULER_CUDA_EXPORT int hauler_cuda_abi(void) { return hauler_emu_abi(); }
HAULER_CUDA_EXPORT int hauler_cuda_init(HaulerDeviceInfo* info, char* err, size_t errlen) {
  return hauler_emu_init(info, err, errlen);
}
HAULER_CUDA_EXPORT int hauler_cuda_pack(const HaulerDevLayout* layout, void* origin, void* buf, int64_t pos, int64_t n,
                                        int pack, void* stream, char* err, size_t errlen) {
  return hauler_emu_pack(layout, origin, buf, pos, n, pack, stream, err, errlen);
}
HAULER_CUDA_EXPORT int hauler_cuda_synchronize(void* stream, char* err, size_t errlen) {
  return hauler_emu_synchronize(stream, err, errlen);
}
HAULER_CUDA_EXPORT int hauler_cuda_gather(const HaulerGatherArgs* args, void* stream, char* err, size_t errlen) {
  return hauler_emu_gather(args, stream, err, errlen);
}
HAULER_CUDA_EXPORT int hauler_cuda_scatter(const HaulerScatterArgs* args, void* stream, char* err, size_t errlen) {
  return hauler_emu_scatter(args, stream, err, errlen);
}
HAULER_CUDA_EXPORT int hauler_cuda_host_register(void* p, size_t n, int readonly, void** device, char* err,
                                                 size_t errlen) {
  return hauler_emu_host_register(p, n, readonly, device, err, errlen);
}
HAULER_CUDA_EXPORT int hauler_cuda_host_unregister(void* p, char* err, size_t errlen) {
  return hauler_emu_host_unregister(p, err, errlen);
}
HAULER_CUDA_EXPORT int hauler_cuda_kv_copy(const HaulerKVCopyArgs* args, const int64_t* regions, int64_t nregions,
                                           void* stream, char* err, size_t errlen) {
  return hauler_emu_kv_copy(args, regions, nregions, stream, err, errlen);
}
