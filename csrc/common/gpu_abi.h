/* The C ABI between the host core and a GPU backend (libhauler_cuda.so, or
 * the host emulation of it). Only C types cross it, because the two sides are
 * built by different compilers and the library is loaded with dlopen.
 * Bump HAULER_GPU_ABI whenever a struct or entry point below changes: the
 * loader refuses a library built against another version instead of
 * misreading its arguments. */
#ifndef HAULER_GPU_ABI_H
#define HAULER_GPU_ABI_H

#include <stddef.h>
#include <stdint.h>

#define HAULER_GPU_ABI 5 /* 2: row gather entry points (csrc/gather); 3: row scatter; 4: shared registrations;
                           5: KV block copy (csrc/kv) bound by the loader */

/* Return codes: 0 or a hauler::Status value (status.hpp; gpu.cpp asserts they agree). */
#define HAULER_GPU_OK 0
#define HAULER_GPU_EINVAL 1
#define HAULER_GPU_ERANGE 4
#define HAULER_GPU_ENODEV 6
#define HAULER_GPU_EINTERNAL 8
/* Not an error (host_register only): the range lies inside a registration made before, by hauler
 * or by anyone else; *device is set, and the caller must not unregister the range for it. */
#define HAULER_GPU_ALREADY_REGISTERED 100

#ifdef __cplusplus
extern "C" {
#endif

struct HaulerDevLayout; /* csrc/datatype/pack_index.cuh */
struct HaulerGatherArgs; /* csrc/gather/gather_index.cuh */
struct HaulerScatterArgs; /* csrc/gather/gather_index.cuh */
struct HaulerKVCopyArgs; /* csrc/kv/kv_index.cuh */

/* Scatter ops (HaulerScatterArgs.op). Adds are atomic per element; integers
 * add as unsigned words (two's complement: the same bits as signed adds). */
#define HAULER_GPU_SCATTER_ASSIGN 0
#define HAULER_GPU_SCATTER_ADD_F32 1
#define HAULER_GPU_SCATTER_ADD_F64 2
#define HAULER_GPU_SCATTER_ADD_U32 3
#define HAULER_GPU_SCATTER_ADD_U64 4

typedef struct HaulerDeviceInfo {
  int32_t device_count;
  int32_t device;          /* the current device of the calling thread */
  int32_t sm_count;        /* its multiprocessors: the launch shape depends on it */
  int32_t runtime_version; /* e.g. 13000 */
  int32_t driver_version;  /* e.g. 12040 */
  char name[256];
} HaulerDeviceInfo;

/* Entry points. `err` receives a sentence (NUL-terminated, truncated to errlen)
 * whenever the return code is not 0. */
typedef int (*hauler_gpu_abi_fn)(void);
typedef int (*hauler_gpu_init_fn)(HaulerDeviceInfo* info, char* err, size_t errlen);
/* Moves the window [pos, pos + n) of the packed stream of `layout`:
 * pack != 0: origin-relative memory -> buf[0, n); pack == 0: buf -> memory.
 * Asynchronous on `stream` (a cudaStream_t; NULL is the legacy default stream). */
typedef int (*hauler_gpu_pack_fn)(const struct HaulerDevLayout* layout, void* origin, void* buf, int64_t pos,
                                  int64_t n, int pack, void* stream, char* err, size_t errlen);
typedef int (*hauler_gpu_sync_fn)(void* stream, char* err, size_t errlen);
/* Row gather: out[i] = table[index[i]] for the n rows of `args`. The table and
 * out are device-accessible (device memory or registered host memory); the
 * index is HOST memory the core has validated, which the backend uploads
 * stream-ordered. Asynchronous on `stream`. */
typedef int (*hauler_gpu_gather_fn)(const struct HaulerGatherArgs* args, void* stream, char* err, size_t errlen);
/* Row scatter: table[index[i]] = src[src_row[i]] (assign; the core passes each
 * destination row once) or += src[i] (add, atomic per element). The table and
 * src are device-accessible; index and src_row are HOST memory the core has
 * validated, uploaded stream-ordered. Asynchronous on `stream`. */
typedef int (*hauler_gpu_scatter_fn)(const struct HaulerScatterArgs* args, void* stream, char* err, size_t errlen);
/* Registers (pins in place and maps) [p, p + n) for GPU access: *device receives
 * the address kernels use. readonly != 0 for read-only mappings. Returns
 * HAULER_GPU_ALREADY_REGISTERED, not OK, when an earlier registration covers
 * the range (pages are registered whole, so small tables can share one): the
 * core counts references to hauler's own registrations (gpu::host_register). */
typedef int (*hauler_gpu_host_register_fn)(void* p, size_t n, int readonly, void** device, char* err,
                                           size_t errlen);
/* Unregisters the registration made at exactly p (an error when there is none). */
typedef int (*hauler_gpu_host_unregister_fn)(void* p, char* err, size_t errlen);
/* KV block copy: the pieces and boxes of one plan (HOST arrays the core built) in one launch.
 * regions: nregions (address, nbytes) pairs the kernel touches, each checked device-accessible
 * first; the launch runs on the device owning them. Asynchronous on `stream`. */
typedef int (*hauler_gpu_kv_copy_fn)(const struct HaulerKVCopyArgs* args, const int64_t* regions, int64_t nregions,
                                     void* stream, char* err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* HAULER_GPU_ABI_H */
