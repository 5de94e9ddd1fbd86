#include "gpu_gather.hpp"

#include <algorithm>
#include <string>

#include "../common/checked.hpp"
#include "../common/gpu.hpp"
#include "../common/settings.hpp"
#include "../common/status.hpp"

namespace hauler::gather {

namespace {
const gpu::Backend& need_backend(const char* what) {
  const gpu::Backend* b = gpu::backend();
  if (!b) fail(Status::no_device, gpu::status_message() + ": " + what + " needs a GPU");
  return *b;
}
}  // namespace

GpuChoice gpu_choice(const Table& t, const void* out) {
  const int w = gather_word(t.data, t.row_stride, t.row_bytes, out);
  return {w, gather_group(t.row_bytes, w)};
}

void gpu_gather(const Table& t, const Index& idx, void* out, void* stream, int max_blocks) {
  check_table(t);
  check_index(idx, t.rows, nullptr);
  const gpu::Backend& b = need_backend("the GPU gather");
  if (idx.n == 0) return;
  if (out == nullptr) fail(Status::invalid_argument, "output pointer is null");
  mul64(idx.n, t.row_bytes, "gathered bytes");
  HaulerGatherArgs a{};
  a.table = t.data;
  a.rows = t.rows;
  a.row_bytes = t.row_bytes;
  a.row_stride = t.row_stride;
  a.index = idx.data;
  a.n = idx.n;
  a.out = out;
  a.index_width = idx.width;
  const GpuChoice c = gpu_choice(t, out);
  a.word = c.word;
  a.group = c.group;
  const int64_t cap = max_blocks >= 0 ? max_blocks : settings::gather_gpu_blocks();
  a.max_blocks = static_cast<int32_t>(std::min<int64_t>(cap, 1 << 30));
  char err[512] = "";
  int rc = b.gather(&a, stream, err, sizeof err);
  if (rc != 0) fail(gpu::status_of(rc), std::string("GPU gather (") + b.name + "): " + err);
}

void* host_register(void* p, size_t n, bool readonly) {
  const gpu::Backend& b = need_backend("pinning a table");
  void* dev = nullptr;
  char err[512] = "";
  int rc = b.host_register(p, n, readonly ? 1 : 0, &dev, err, sizeof err);
  if (rc != 0) fail(gpu::status_of(rc), std::string("pinning ") + std::to_string(n) + " bytes at a table (" +
                                            b.name + "): " + err);
  return dev;
}

void host_unregister(void* p) {
  const gpu::Backend& b = need_backend("unpinning a table");
  char err[512] = "";
  int rc = b.host_unregister(p, err, sizeof err);
  if (rc != 0) fail(gpu::status_of(rc), std::string("unpinning a table (") + b.name + "): " + err);
}

}  // namespace hauler::gather
