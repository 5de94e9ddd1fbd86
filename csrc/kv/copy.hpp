// The host copy engine of hauler.kv: moves a plan's pieces, split across the
// thread pool by bytes (a range may start or end inside a piece).
#pragma once
#include <cstdint>

#include "plan.hpp"

namespace hauler::kv {

// threads <= 0: HAULER_THREADS. Moves below HAULER_PACK_PARALLEL_MIN bytes
// run on the caller. Pieces must not overlap each other's destinations.
void copy_segments(const Segment* segs, int64_t n, int threads);

// Throws InvalidArgument when a piece's destination overlaps any piece's
// source or another destination (a copy inside one cache reading a block it
// also writes, whose result would depend on the order of the pieces).
void check_disjoint(const Segment* segs, int64_t n);

// Total bytes of n pieces.
int64_t segments_bytes(const Segment* segs, int64_t n);

}  // namespace hauler::kv
