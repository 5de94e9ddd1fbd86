#include "pack_emulate.hpp"

#include <atomic>
#include <cstdio>
#include <cstring>

#include "../common/gpu.hpp"
#include "../gather/gather_emulate.hpp"
#include "pack_index.cuh"

namespace hauler::dt {

namespace {
std::atomic<int> g_sms{kDefaultEmulatedSms};
}

void set_emulated_sm_count(int sms) { g_sms.store(sms > 0 ? sms : 1, std::memory_order_relaxed); }
int emulated_sm_count() { return g_sms.load(std::memory_order_relaxed); }

}  // namespace hauler::dt

extern "C" {

int hauler_emu_abi(void) { return HAULER_GPU_ABI; }

int hauler_emu_init(HaulerDeviceInfo* info, char* err, size_t errlen) {
  if (!info) {
    if (err && errlen) std::snprintf(err, errlen, "device info pointer is null");
    return HAULER_GPU_EINVAL;
  }
  std::memset(info, 0, sizeof *info);
  info->device_count = 1;
  info->sm_count = hauler::dt::emulated_sm_count();
  std::snprintf(info->name, sizeof info->name, "host emulation (%d multiprocessors)", info->sm_count);
  return HAULER_GPU_OK;
}

int hauler_emu_pack(const HaulerDevLayout* layout, void* origin, void* buf, int64_t pos, int64_t n, int pack,
                    void* /*stream: the emulation is synchronous*/, char* err, size_t errlen) {
  int rc = hauler::dt::check_call(layout, origin, buf, pos, n, err, errlen);
  if (rc != HAULER_GPU_OK || n == 0) return rc;
  uint32_t grid = 0, block = 0;
  hauler::dt::launch_shape(n / layout->word, hauler::dt::emulated_sm_count(), &grid, &block);
  const uint64_t nthreads = static_cast<uint64_t>(grid) * block;
  // Threads run one after another: the emulation checks the index math and
  // the work split, not concurrency (each word has exactly one writer).
  for (uint64_t tid = 0; tid < nthreads; ++tid)
    hauler::dt::pack_thread(*layout, static_cast<uint8_t*>(origin), static_cast<uint8_t*>(buf), pos, n, tid,
                            nthreads, pack != 0);
  return HAULER_GPU_OK;
}

int hauler_emu_synchronize(void*, char*, size_t) { return HAULER_GPU_OK; }

}  // extern "C"

namespace hauler::gpu {

const Backend& emulation_backend() {
  static const Backend b{"emulation",           hauler_emu_abi,           hauler_emu_init,
                         hauler_emu_pack,       hauler_emu_synchronize,   hauler_emu_gather,
                         hauler_emu_host_register, hauler_emu_host_unregister, hauler_emu_scatter};
  return b;
}

}  // namespace hauler::gpu
