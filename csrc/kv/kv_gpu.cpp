#include "kv_gpu.hpp"

#include <dlfcn.h>

#include <mutex>
#include <string>

#include "../common/gpu.hpp"
#include "../common/status.hpp"
#include "kv_index.cuh"

namespace hauler::kv {

namespace {

// The KV entry point of the library the GPU loader already opened (dlopen of
// a loaded library returns it; RTLD_NOLOAD never loads a second copy).
hauler_kv_copy_fn cuda_entry() {
  static std::once_flag once;
  static hauler_kv_copy_fn fn = nullptr;
  std::call_once(once, [] {
    void* h = dlopen(gpu::library_path().c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (h) fn = reinterpret_cast<hauler_kv_copy_fn>(dlsym(h, "hauler_cuda_kv_copy"));
  });
  return fn;
}

}  // namespace

void copy_segments_device(const Segment* segs, int64_t n, const Box* boxes, int64_t nboxes, const int64_t* regions,
                          int64_t nregions, void* stream, bool sync, int max_blocks) {
  hauler_kv_copy_fn fn = nullptr;
  const char* name = "emulation";
  if (gpu::emulation()) {
    fn = hauler_emu_kv_copy;
  } else {
    if (!gpu::backend()) fail(Status::no_device, gpu::status_message() + ": a KV block copy on device memory needs a GPU");
    fn = cuda_entry();
    name = "cuda";
    if (!fn)
      fail(Status::no_device, gpu::library_path() + " has no KV copy kernel (hauler_cuda_kv_copy): it was built "
                              "before hauler.kv; rebuild hauler");
  }
  static_assert(sizeof(Segment) == 3 * sizeof(int64_t), "pieces are (src, dst, nbytes) triples");
  static_assert(sizeof(Box) == kKvBoxFields * sizeof(int64_t), "boxes are kKvBoxFields int64 rows");
  HaulerKVCopyArgs a{reinterpret_cast<const int64_t*>(segs), n, max_blocks, reinterpret_cast<const int64_t*>(boxes),
                     nboxes};
  char err[512] = {0};
  int rc = fn(&a, regions, nregions, stream, err, sizeof err);
  if (rc != 0) fail(gpu::status_of(rc), std::string("GPU KV copy (") + name + "): " + err);
  if (sync && n + nboxes > 0) gpu::synchronize(stream);
}

}  // namespace hauler::kv
