#include "gpu_emulation.hpp"

#include <atomic>
#include <cstdio>
#include <cstring>

#include "gpu.hpp"

namespace hauler::gpu {

namespace {
std::atomic<int> g_sms{kDefaultEmulatedSms};
}

void set_emulated_sm_count(int sms) { g_sms.store(sms > 0 ? sms : 1, std::memory_order_relaxed); }
int emulated_sm_count() { return g_sms.load(std::memory_order_relaxed); }

const Backend& emulation_backend() {
  static const Backend b{"emulation",           hauler_emu_abi,           hauler_emu_init,
                         hauler_emu_pack,       hauler_emu_synchronize,   hauler_emu_gather,
                         hauler_emu_host_register, hauler_emu_host_unregister, hauler_emu_scatter};
  return b;
}

}  // namespace hauler::gpu

extern "C" {

int hauler_emu_abi(void) { return HAULER_GPU_ABI; }

int hauler_emu_init(HaulerDeviceInfo* info, char* err, size_t errlen) {
  if (!info) {
    if (err && errlen) std::snprintf(err, errlen, "device info pointer is null");
    return HAULER_GPU_EINVAL;
  }
  std::memset(info, 0, sizeof *info);
  info->device_count = 1;
  info->sm_count = hauler::gpu::emulated_sm_count();
  std::snprintf(info->name, sizeof info->name, "host emulation (%d multiprocessors)", info->sm_count);
  return HAULER_GPU_OK;
}

int hauler_emu_synchronize(void*, char*, size_t) { return HAULER_GPU_OK; }  // the emulation is synchronous

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
