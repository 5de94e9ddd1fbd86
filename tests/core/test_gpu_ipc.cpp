// CUDA IPC through the host emulation (common/gpu_ipc.hpp, gpu_emulation.cpp): an emulated device
// allocation exported, mapped a second time from its handle (as a peer process would: through
// /proc/<pid>/fd), bytes written through one mapping read through the other; and every refusal:
// memory that is not device memory, a handle of another boot, bytes that are no handle, an
// allocation freed before it was mapped, a mapping closed twice.
#include <cstdio>
#include <cstring>
#include <string>

#include "check.hpp"
#include "common/gpu.hpp"
#include "common/gpu_ipc.hpp"
#include "common/status.hpp"

using namespace hauler;

namespace {

// Runs f, which must throw hauler::Error with status s and a message containing `what`.
template <class F>
bool refuses(F f, Status s, const char* what) {
  try {
    f();
  } catch (const Error& e) {
    CHECK(e.status() == s && std::strstr(e.what(), what), "expected %s with \"%s\", got %s: %s", status_name(s), what,
          status_name(e.status()), e.what());
    return true;
  }
  CHECK(false, "expected %s with \"%s\", nothing was thrown", status_name(s), what);
  return false;
}

bool test_map_and_share() {
  const size_t n = 3 * 4096 + 100;
  auto* dev = static_cast<uint8_t*>(gpu::emulated_device_alloc(n));
  for (size_t i = 0; i < n; ++i) dev[i] = static_cast<uint8_t>(i * 7);
  gpu::IpcExport e = gpu::ipc_export(dev + 5000);  // any address inside: the whole allocation
  CHECK(e.base == reinterpret_cast<uintptr_t>(dev) && e.size == n, "export names the allocation");
  uint64_t size = 0;
  auto* peer = static_cast<uint8_t*>(gpu::ipc_open(e.handle, 0, &size));
  CHECK(peer && peer != dev && size == n, "a second mapping of %zu bytes", n);
  CHECK(std::memcmp(peer, dev, n) == 0, "the mapping holds the allocation's bytes");
  peer[n - 1] = 0x5A;
  dev[0] = 0xA5;
  CHECK(dev[n - 1] == 0x5A && peer[0] == 0xA5, "writes are seen through both mappings");
  gpu::ipc_close(peer);
  CHECK(refuses([&] { gpu::ipc_close(peer); }, Status::invalid_argument, "closed twice"), "double close");
  gpu::emulated_device_free(dev);
  CHECK(refuses([&] { gpu::ipc_open(e.handle, 0, &size); }, Status::no_device, "freed the allocation"),
        "a freed allocation cannot be mapped");
  CHECK(refuses([&] { gpu::emulated_device_free(dev); }, Status::invalid_argument, "no emulated device allocation"),
        "double free");
  ++g_pass;
  return true;
}

bool test_refusals() {
  char host[64];
  CHECK(refuses([&] { gpu::ipc_export(host); }, Status::invalid_argument, "not in an emulated device allocation"),
        "host memory is not exportable");
  void* dev = gpu::emulated_device_alloc(4096);
  gpu::IpcExport e = gpu::ipc_export(dev);
  uint8_t other[gpu::kIpcHandleBytes];
  std::memcpy(other, e.handle, sizeof other);
  other[8] ^= 1;  // the node field
  uint64_t size = 0;
  CHECK(refuses([&] { gpu::ipc_open(other, 0, &size); }, Status::invalid_argument, "another node, boot"),
        "a handle of another boot");
  std::memset(other, 0, sizeof other);
  CHECK(refuses([&] { gpu::ipc_open(other, 0, &size); }, Status::invalid_argument, "not an emulated IPC handle"),
        "zero bytes are no handle");
  gpu::emulated_device_free(dev);
  ++g_pass;
  return true;
}

}  // namespace

int main() {
  gpu::use_emulation(true);
  for (auto t : {test_map_and_share, test_refusals}) {
    try {
      t();
    } catch (const Error& e) {
      std::printf("FAIL: unexpected error: %s\n", e.what());
      ++g_fail;
    }
  }
  std::printf("test_gpu_ipc: %d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
