#include "gpu_emulation.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <string>

#include "gpu.hpp"
#include "gpu_ipc.hpp"

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

// ---- emulated device memory and CUDA IPC ----

namespace hauler::gpu {
namespace {

// The emulated handle: what a peer needs to map the allocation (the exporter's descriptor, seen
// through /proc/<pid>/fd), and what tells a stale or foreign handle apart.
struct EmuIpcHandle {
  char magic[8];    // "HEMUIPC"
  uint64_t node;    // boot id and pid namespace of the exporter (hash)
  int32_t pid;      // the exporting process
  int32_t fd;       // its descriptor of the allocation's memfd
  uint64_t size;    // the allocation's bytes
  uint64_t serial;  // the allocation's serial (in its memfd name: a reused descriptor is told apart)
  uint8_t pad[kIpcHandleBytes - 40];
};
static_assert(sizeof(EmuIpcHandle) == kIpcHandleBytes, "an emulated handle is a CUDA IPC handle's size");

struct EmuAlloc {
  size_t size;
  int fd;
  uint64_t serial;
};

std::mutex g_dev_mu;
std::map<uintptr_t, EmuAlloc> g_dev;        // emulated device allocations, by base
std::map<uintptr_t, size_t> g_mapped;       // peers' allocations mapped here, by address
std::atomic<uint64_t> g_serial{1};

int emu_fail(char* err, size_t errlen, int rc, const std::string& what) {
  if (err && errlen) std::snprintf(err, errlen, "%s", what.c_str());
  return rc;
}

// An address the table does not know: EINVAL, "<before><p><after>".
int unknown(char* err, size_t errlen, const char* before, const void* p, const char* after = "") {
  char s[48];
  std::snprintf(s, sizeof s, "%p", p);
  return emu_fail(err, errlen, HAULER_GPU_EINVAL, std::string(before) + s + after);
}

// A hash of this kernel boot and pid namespace: /proc/<pid> of the handle means the same process
// only where both agree.
uint64_t node_id() {
  std::string id;
  if (FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "r")) {
    char buf[64] = "";
    if (std::fgets(buf, sizeof buf, f)) id = buf;
    std::fclose(f);
  }
  struct stat st {};
  if (stat("/proc/self/ns/pid", &st) == 0) id += "/" + std::to_string(static_cast<unsigned long long>(st.st_ino));
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : id) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string memfd_name(uint64_t serial) { return "hauler-emu-device-" + std::to_string(serial); }

}  // namespace

}  // namespace hauler::gpu

extern "C" {

int hauler_emu_device_alloc(size_t n, void** p, char* err, size_t errlen) {
  using namespace hauler::gpu;
  if (!p || n == 0) return emu_fail(err, errlen, HAULER_GPU_EINVAL, !p ? "out-argument is null" : "cannot allocate 0 bytes");
  const uint64_t serial = g_serial.fetch_add(1);
  int fd = static_cast<int>(syscall(SYS_memfd_create, memfd_name(serial).c_str(), 0));
  if (fd < 0) return emu_fail(err, errlen, HAULER_GPU_EINTERNAL, std::string("memfd_create: ") + std::strerror(errno));
  if (ftruncate(fd, static_cast<off_t>(n)) != 0) {
    const int e = errno;
    close(fd);
    return emu_fail(err, errlen, HAULER_GPU_EINTERNAL, "emulated device allocation of " + std::to_string(n) +
                                                           " bytes: ftruncate: " + std::strerror(e));
  }
  void* m = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    const int e = errno;
    close(fd);
    return emu_fail(err, errlen, HAULER_GPU_EINTERNAL, "emulated device allocation of " + std::to_string(n) +
                                                           " bytes: mmap: " + std::strerror(e));
  }
  std::lock_guard<std::mutex> lk(g_dev_mu);
  g_dev[reinterpret_cast<uintptr_t>(m)] = EmuAlloc{n, fd, serial};
  *p = m;
  return HAULER_GPU_OK;
}

int hauler_emu_device_free(void* p, char* err, size_t errlen) {
  using namespace hauler::gpu;
  std::lock_guard<std::mutex> lk(g_dev_mu);
  auto it = g_dev.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_dev.end()) return unknown(err, errlen, "no emulated device allocation starts at ", p);
  munmap(p, it->second.size);
  close(it->second.fd);
  g_dev.erase(it);
  return HAULER_GPU_OK;
}

int hauler_emu_ipc_get(const void* p, void* handle, uint64_t* base, uint64_t* size, char* err, size_t errlen) {
  using namespace hauler::gpu;
  if (!handle || !base || !size) return emu_fail(err, errlen, HAULER_GPU_EINVAL, "out-argument is null");
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lk(g_dev_mu);
  auto it = g_dev.upper_bound(a);
  if (it == g_dev.begin() || a >= std::prev(it)->first + std::prev(it)->second.size)
    return unknown(err, errlen, "cuIpcGetMemHandle (emulated): ", p, " is not in an emulated device allocation "
                   "(CUDA IPC exports device memory from cudaMalloc only)");
  --it;
  EmuIpcHandle h{};
  std::memcpy(h.magic, "HEMUIPC", 8);
  h.node = node_id();
  h.pid = static_cast<int32_t>(getpid());
  h.fd = it->second.fd;
  h.size = it->second.size;
  h.serial = it->second.serial;
  std::memcpy(handle, &h, sizeof h);
  *base = it->first;
  *size = it->second.size;
  return HAULER_GPU_OK;
}

int hauler_emu_ipc_open(const void* handle, int /*device: one emulated device*/, void** mapped, uint64_t* size,
                        char* err, size_t errlen) {
  using namespace hauler::gpu;
  if (!handle || !mapped || !size) return emu_fail(err, errlen, HAULER_GPU_EINVAL, "null argument");
  EmuIpcHandle h;
  std::memcpy(&h, handle, sizeof h);
  if (std::memcmp(h.magic, "HEMUIPC", 8) != 0)
    return emu_fail(err, errlen, HAULER_GPU_EINVAL, "cuIpcOpenMemHandle (emulated): not an emulated IPC handle "
                                                    "(a real CUDA handle, or corrupt bytes)");
  if (h.node != node_id())
    return emu_fail(err, errlen, HAULER_GPU_EINVAL, "cuIpcOpenMemHandle (emulated): the handle comes from another "
                                                    "node, boot or pid namespace; IPC handles are valid on one node "
                                                    "while it runs");
  const std::string path = "/proc/" + std::to_string(h.pid) + "/fd/" + std::to_string(h.fd);
  char target[256] = "";
  const ssize_t len = readlink(path.c_str(), target, sizeof target - 1);
  const std::string want = "/memfd:" + memfd_name(h.serial) + " (deleted)";
  if (len < 0 || std::string(target, static_cast<size_t>(len)) != want) {
    const bool alive = access(("/proc/" + std::to_string(h.pid)).c_str(), F_OK) == 0;
    return emu_fail(err, errlen, HAULER_GPU_ENODEV,
                    "cuIpcOpenMemHandle (emulated): the peer's device memory is gone (process " +
                        std::to_string(h.pid) + (alive ? " freed the allocation" : " exited") + ")");
  }
  const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return emu_fail(err, errlen, errno == ENOENT ? HAULER_GPU_ENODEV : HAULER_GPU_EINTERNAL,
                    "cuIpcOpenMemHandle (emulated): opening " + path + ": " + std::strerror(errno));
  void* m = mmap(nullptr, h.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int e = errno;
  close(fd);
  if (m == MAP_FAILED)
    return emu_fail(err, errlen, HAULER_GPU_EINTERNAL, std::string("cuIpcOpenMemHandle (emulated): mmap: ") +
                                                           std::strerror(e));
  std::lock_guard<std::mutex> lk(g_dev_mu);
  g_mapped[reinterpret_cast<uintptr_t>(m)] = h.size;
  *mapped = m;
  *size = h.size;
  return HAULER_GPU_OK;
}

int hauler_emu_ipc_close(void* mapped, char* err, size_t errlen) {
  using namespace hauler::gpu;
  std::lock_guard<std::mutex> lk(g_dev_mu);
  auto it = g_mapped.find(reinterpret_cast<uintptr_t>(mapped));
  if (it == g_mapped.end())
    return unknown(err, errlen, "cuIpcCloseMemHandle (emulated): nothing mapped from a peer starts at ", mapped,
                   " (closed twice?)");
  munmap(mapped, it->second);
  g_mapped.erase(it);
  return HAULER_GPU_OK;
}

}  // extern "C"
