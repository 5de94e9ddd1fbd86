#include "kv_gpu.hpp"

#include <string>

#include "../common/gpu.hpp"
#include "../common/status.hpp"
#include "kv_index.cuh"

namespace hauler::kv {

void copy_segments_device(const Segment* segs, int64_t n, const Box* boxes, int64_t nboxes, const int64_t* regions,
                          int64_t nregions, void* stream, bool sync, int max_blocks) {
  const gpu::Backend* b = gpu::backend();
  if (!b) fail(Status::no_device, gpu::status_message() + ": a KV block copy on device memory needs a GPU");
  static_assert(sizeof(Segment) == 3 * sizeof(int64_t), "pieces are (src, dst, nbytes) triples");
  static_assert(sizeof(Box) == kKvBoxFields * sizeof(int64_t), "boxes are kKvBoxFields int64 rows");
  HaulerKVCopyArgs a{reinterpret_cast<const int64_t*>(segs), n, max_blocks, reinterpret_cast<const int64_t*>(boxes),
                     nboxes};
  char err[512] = {0};
  int rc = b->kv_copy(&a, regions, nregions, stream, err, sizeof err);
  if (rc != 0) fail(gpu::status_of(rc), std::string("GPU KV copy (") + b->name + "): " + err);
  if (sync && n + nboxes > 0) gpu::synchronize(stream);
}

}  // namespace hauler::kv
