#include "gpu_pack.hpp"

#include <cstddef>
#include <string>

#include "../common/gpu.hpp"
#include "../common/status.hpp"

namespace hauler::dt {

static_assert(kMaxDims == HAULER_DEV_MAX_DIMS, "device layout holds every canonical dimension");
static_assert(sizeof(Run) == sizeof(HaulerRun) && offsetof(Run, offset) == offsetof(HaulerRun, offset) &&
                  offsetof(Run, length) == offsetof(HaulerRun, length),
              "Run and HaulerRun share a layout: run arrays cross the ABI without a copy");

DevLayout dev_layout(const Plan& p) {
  const Layout& l = p.layout;
  DevLayout d{};
  d.ndims = static_cast<int32_t>(l.dims.size());
  int align = 16;
  for (size_t k = 0; k < l.dims.size(); ++k) {
    d.count[k] = l.dims[k].count;
    d.stride[k] = l.dims[k].stride;
    align = min_word(align, word_align(static_cast<uint64_t>(l.dims[k].stride)));
  }
  d.nruns = static_cast<int64_t>(l.runs.size());
  d.block = p.run_bytes;
  d.total = p.total;
  d.span_lo = p.span_lo;
  d.span_hi = p.span_hi;
  if (!l.runs.empty()) d.base = l.runs[0].offset;
  if (l.runs.size() > 1) {
    d.runs = reinterpret_cast<const HaulerRun*>(l.runs.data());
    d.prefix = p.prefix.data();
  }
  // O(runs), like the host pack of a full pass; stops early once it reaches 1.
  for (size_t i = 0; i < l.runs.size() && align > 1; ++i) {
    align = min_word(align, word_align(static_cast<uint64_t>(l.runs[i].offset)));
    align = min_word(align, word_align(static_cast<uint64_t>(l.runs[i].length)));
  }
  d.align = align;
  return d;
}

KernelChoice gpu_kernel_choice(const Plan& p, const void* origin, const void* buf, int64_t pos, int64_t n) {
  DevLayout d = dev_layout(p);
  const char* form = p.layout.runs.size() > 1 ? "gpu-runs" : p.layout.dims.empty() ? "gpu-contiguous" : "gpu-strided";
  return {form, pick_word(d.align, origin, buf, pos, n)};
}

namespace {

void run(const Plan& p, void* origin, void* buf, int64_t pos, int64_t n, bool pack, void* stream) {
  check_window(p, pos, n);
  const gpu::Backend* b = gpu::backend();
  if (!b) fail(Status::no_device, gpu::status_message() + ": device buffers need a GPU");
  if (n == 0) return;
  DevLayout d = dev_layout(p);
  d.word = pick_word(d.align, origin, buf, pos, n);
  char err[512] = "";
  int rc = b->pack(&d, origin, buf, pos, n, pack ? 1 : 0, stream, err, sizeof err);
  if (rc != 0)
    fail(gpu::status_of(rc), std::string(pack ? "GPU pack" : "GPU unpack") + " (" + b->name + "): " + err);
}

}  // namespace

void gpu_pack(const Plan& p, const void* origin, void* out, int64_t pos, int64_t n, void* stream) {
  run(p, const_cast<void*>(origin), out, pos, n, true, stream);
}

void gpu_unpack(const Plan& p, void* origin, const void* in, int64_t pos, int64_t n, void* stream) {
  run(p, origin, const_cast<void*>(in), pos, n, false, stream);
}

}  // namespace hauler::dt
