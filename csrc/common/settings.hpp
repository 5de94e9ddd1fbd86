// Run-time settings the C++ core reads itself. runtime/config.py holds the
// table with defaults and descriptions; these read the same HAULER_* names,
// and set_override() lets the Python layer change them at run time.
#pragma once
#include <cstdint>
#include <string>

namespace hauler::settings {

// HAULER_THREADS: threads for large copies; 0 or unset = core count.
int threads();
// HAULER_PACK_PARALLEL_MIN: windows below this many bytes run single-threaded.
int64_t pack_parallel_min();
// HAULER_PACK_STREAM_MIN: pack/unpack windows of at least this many bytes
// may write with non-temporal (cache-bypassing) stores.
int64_t pack_stream_min();

// HAULER_GATHER_THREADS: threads for host gather/scatter; 0 = threads().
int gather_threads();
// HAULER_GATHER_PARALLEL_MIN: gathers/scatters moving fewer bytes run on the caller.
int64_t gather_parallel_min();
// HAULER_GATHER_STREAM_MIN: gathers writing at least this many bytes use
// non-temporal stores (rows of a multiple of 16 bytes, 16-byte aligned output).
int64_t gather_stream_min();
// HAULER_GATHER_PREFETCH: bytes of rows the host gather prefetches ahead
// (turned into 2..64 rows; 0 = none).
int64_t gather_prefetch();
// HAULER_GATHER_GPU_BLOCKS: cap on thread blocks of the GPU gather kernel
// (0 = 2 per multiprocessor); a small cap leaves the GPU to training kernels.
int64_t gather_gpu_blocks();

// Run-time override of an integer setting by its HAULER_* name; a negative
// value removes the override. Unknown names throw invalid_argument.
void set_override(const std::string& name, int64_t value);

}  // namespace hauler::settings
