#include "gpu_emulation.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

#include "gpu.hpp"

namespace hauler::gpu {

namespace {
std::atomic<int> g_sms{kDefaultEmulatedSms};

// The emulated device's host registrations, as CUDA keeps them: whole pages, keyed by the address
// registered (the one cudaHostUnregister takes); value: the end of its last page.
std::mutex g_reg_mu;
std::map<uintptr_t, std::pair<uintptr_t, uintptr_t>> g_regs;  // base -> [first page, end of last page)

uintptr_t page() { return static_cast<uintptr_t>(sysconf(_SC_PAGESIZE)); }

// True when every page of [lo, hi) lies in some registration; *any: some page does.
bool covered(uintptr_t lo, uintptr_t hi, bool* any) {
  *any = false;
  bool all = true;
  for (uintptr_t pg = lo; pg < hi; pg += page()) {
    bool in = false;
    for (const auto& r : g_regs) in = in || (r.second.first <= pg && pg < r.second.second);
    *any = *any || in;
    all = all && in;
  }
  return all;
}
}  // namespace

bool emulated_registered(const void* p) {
  std::lock_guard<std::mutex> lk(g_reg_mu);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (const auto& r : g_regs)
    if (r.second.first <= a && a < r.second.second) return true;
  return false;
}

size_t emulated_registrations() {
  std::lock_guard<std::mutex> lk(g_reg_mu);
  return g_regs.size();
}

void set_emulated_sm_count(int sms) { g_sms.store(sms > 0 ? sms : 1, std::memory_order_relaxed); }
int emulated_sm_count() { return g_sms.load(std::memory_order_relaxed); }

const Backend& emulation_backend() {
  static const Backend b{"emulation",           hauler_emu_abi,           hauler_emu_init,
                         hauler_emu_pack,       hauler_emu_synchronize,   hauler_emu_gather,
                         hauler_emu_host_register, hauler_emu_host_unregister, hauler_emu_scatter,
                         hauler_emu_kv_copy};
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

int hauler_emu_host_register(void* p, size_t n, int, void** device, char* err, size_t errlen) {
  if (!p || !device || n == 0) {
    if (err && errlen)
      std::snprintf(err, errlen, "%s", !p ? "host pointer is null" : !device ? "device pointer out-argument is null"
                                                                              : "cannot register 0 bytes");
    return HAULER_GPU_EINVAL;
  }
  using hauler::gpu::g_regs;
  std::lock_guard<std::mutex> lk(hauler::gpu::g_reg_mu);
  const uintptr_t pg = hauler::gpu::page(), a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t lo = a / pg * pg, hi = (a + n + pg - 1) / pg * pg;
  bool any = false;
  const bool all = hauler::gpu::covered(lo, hi, &any);
  *device = p;  // host memory is "device-accessible" to the emulated kernels as it is
  if (all) return HAULER_GPU_ALREADY_REGISTERED;
  if (any) {
    if (err && errlen)
      std::snprintf(err, errlen, "cudaHostRegister: cudaErrorHostMemoryAlreadyRegistered (emulated: [%p, +%zu) "
                    "overlaps a registration without lying inside it)", p, n);
    return HAULER_GPU_EINTERNAL;
  }
  g_regs[a] = {lo, hi};
  return HAULER_GPU_OK;
}

int hauler_emu_host_unregister(void* p, char* err, size_t errlen) {
  std::lock_guard<std::mutex> lk(hauler::gpu::g_reg_mu);
  if (hauler::gpu::g_regs.erase(reinterpret_cast<uintptr_t>(p)) == 0) {
    if (err && errlen)
      std::snprintf(err, errlen, "cudaHostUnregister: cudaErrorHostMemoryNotRegistered (emulated: no registration "
                    "starts at %p)", p);
    return HAULER_GPU_EINVAL;
  }
  return HAULER_GPU_OK;
}

}  // extern "C"
