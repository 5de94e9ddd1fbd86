#include "gpu_gather.hpp"

#include <algorithm>
#include <string>
#include <vector>

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

int32_t block_cap(int max_blocks) {
  const int64_t cap = max_blocks >= 0 ? max_blocks : settings::gather_gpu_blocks();
  return static_cast<int32_t>(std::min<int64_t>(cap, 1 << 30));
}

// The table, index and row buffer checks every GPU row call makes first.
const gpu::Backend& check_call(const Table& t, const Index& idx, const void* rows_buf, const char* what,
                               const char* call) {
  check_table(t);
  check_index(idx, t.rows, nullptr);
  const gpu::Backend& b = need_backend(call);
  if (idx.n > 0 && rows_buf == nullptr) fail(Status::invalid_argument, std::string(what) + " pointer is null");
  mul64(idx.n, t.row_bytes, "moved bytes");
  return b;
}

void gpu_gather(const Table& t, const Index& idx, void* out, void* stream, int max_blocks) {
  const gpu::Backend& b = check_call(t, idx, out, "output", "the GPU gather");
  if (idx.n == 0) return;
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
  a.max_blocks = block_cap(max_blocks);
  char err[512] = "";
  int rc = b.gather(&a, stream, err, sizeof err);
  if (rc != 0) fail(gpu::status_of(rc), std::string("GPU gather (") + b.name + "): " + err);
}

void gpu_scatter(const Table& t, const Index& idx, const void* src, Reduce r, Elem e, void* stream, int max_blocks) {
  const gpu::Backend& b = check_call(t, idx, src, "source", "the GPU scatter");
  HaulerScatterArgs a{};
  a.op = HAULER_GPU_SCATTER_ASSIGN;
  if (r == Reduce::add) {
    switch (e) {
      case Elem::f32: a.op = HAULER_GPU_SCATTER_ADD_F32; break;
      case Elem::f64: a.op = HAULER_GPU_SCATTER_ADD_F64; break;
      case Elem::i32: case Elem::u32: a.op = HAULER_GPU_SCATTER_ADD_U32; break;
      case Elem::i64: case Elem::u64: a.op = HAULER_GPU_SCATTER_ADD_U64; break;
      default:
        fail(Status::invalid_argument, "scatter(reduce='add') from device memory is not implemented for 8- and "
                                       "16-bit integer elements (CUDA has no atomic add for them); use float32/64 or "
                                       "(u)int32/64 rows, or scatter from host memory");
    }
  }
  const int esize = scatter_elem_bytes(a.op);
  const int w = gather_word(t.data, t.row_stride, t.row_bytes, src);
  if (esize > 0 && w % esize != 0)
    fail(Status::invalid_argument, "scatter(reduce='add') on the GPU needs the table address, row stride, row size " +
                                       std::to_string(t.row_bytes) + " and source address aligned to its " +
                                       std::to_string(esize) + "-byte elements");
  if (idx.n == 0) return;
  // assign: only the last position naming a row writes it (a GPU has no order
  // among threads, so duplicates are resolved here, as the host scatter does)
  std::vector<int64_t> dst, from;
  if (r == Reduce::assign) {
    bool dup = false;
    std::vector<uint8_t> win = last_writers(idx, t.rows, &dup);
    if (dup) {
      for (int64_t i = 0; i < idx.n; ++i)
        if (win[static_cast<size_t>(i)]) {
          dst.push_back(idx.at(i));
          from.push_back(i);
        }
    }
  }
  a.table = t.data;
  a.rows = t.rows;
  a.row_bytes = t.row_bytes;
  a.row_stride = t.row_stride;
  a.index = dst.empty() ? idx.data : dst.data();
  a.index_width = dst.empty() ? idx.width : 8;
  a.src_row = from.empty() ? nullptr : from.data();
  a.n = dst.empty() ? idx.n : static_cast<int64_t>(dst.size());
  a.src = src;
  a.word = esize > 0 ? esize : w;
  a.group = gather_group(t.row_bytes, a.word);
  a.max_blocks = block_cap(max_blocks);
  char err[512] = "";
  int rc = b.scatter(&a, stream, err, sizeof err);
  if (rc != 0) fail(gpu::status_of(rc), std::string("GPU scatter (") + b.name + "): " + err);
}

void* host_register(void* p, size_t n, bool readonly) { return gpu::host_register(p, n, readonly); }

void host_unregister(void* p) { gpu::host_unregister(p); }

}  // namespace hauler::gather
