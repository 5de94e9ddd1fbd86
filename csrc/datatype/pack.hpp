// Host pack/unpack engine over a canonical Layout.
//
// The packed stream of a layout is its bytes in type-map order. Every call
// moves an arbitrary window [pos, pos + n) of that stream, so a message can
// be pipelined in chunks exactly as MPI_Pack's `position` allows; the
// parallel form splits the window across the thread pool.
#pragma once
#include <cstdint>
#include <vector>

#include "layout.hpp"

namespace hauler::dt {

// A layout ready to execute: run prefix sums for seeking into run lists.
struct Plan {
  Layout layout;
  std::vector<int64_t> prefix;  // prefix[i] = bytes of runs[0..i); size runs+1
  int64_t run_bytes = 0;        // bytes of one pass over the runs
  int64_t total = 0;            // bytes of the whole packed stream
  int64_t span_lo = 0, span_hi = 0;  // byte offsets touched, relative to the origin
};

Plan make_plan(Layout l);

// Kernel shape picked for a call, for benchmarks and describe().
struct KernelChoice {
  const char* form;  // "contiguous", "strided-1d", "strided-2d", "strided-3d", "strided-nd", "runs"
  int word;          // bytes per load/store in the inner copy (1, 2, 4, 8, 16), or 0 for memcpy
};
KernelChoice kernel_choice(const Plan& p);

// Serial window copies. `origin` is the address of the type's origin (the
// address displacement 0 refers to). Callers have validated the window and
// the buffers; these functions do no checking.
void pack_window(const Plan& p, const uint8_t* origin, uint8_t* out, int64_t pos, int64_t n);
void unpack_window(const Plan& p, uint8_t* origin, const uint8_t* in, int64_t pos, int64_t n);

// Validating, possibly multi-threaded entry points. `threads` <= 0 means the
// configured default (HAULER_THREADS, else the core count); windows smaller
// than the parallel threshold (HAULER_PACK_PARALLEL_MIN) run on the caller.
// Checks: 0 <= pos <= total, n >= 0, pos + n <= total; throws hauler::Error.
void pack(const Plan& p, const void* origin, void* out, int64_t pos, int64_t n, int threads = 0);
void unpack(const Plan& p, void* origin, const void* in, int64_t pos, int64_t n, int threads = 0);

// Throws out_of_range unless [pos, pos + n) lies within the packed stream.
void check_window(const Plan& p, int64_t pos, int64_t n);

}  // namespace hauler::dt
