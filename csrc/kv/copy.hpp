// The host copy engine of hauler.kv: moves a plan's pieces and boxes, split
// across the thread pool by bytes (a range may start or end inside a piece).
#pragma once
#include <cstdint>

#include "plan.hpp"

namespace hauler::kv {

// Moves below this many bytes run on the caller unless the caller names a
// thread count: waking the pool costs more than it saves on small moves.
constexpr int64_t kParallelMin = int64_t(64) << 20;

// Moves the pieces and the boxes (destinations must not overlap). threads <= 0:
// one thread below kParallelMin bytes, else HAULER_THREADS; threads > 1 splits
// moves of at least HAULER_PACK_PARALLEL_MIN bytes. Outputs of at least
// HAULER_PACK_STREAM_MIN bytes are written with non-temporal stores.
void copy_moves(const Segment* segs, int64_t n, const Box* boxes, int64_t nboxes, int threads);
inline void copy_segments(const Segment* segs, int64_t n, int threads) { copy_moves(segs, n, nullptr, 0, threads); }

// Throws InvalidArgument when a piece's destination overlaps any piece's
// source or another destination (a copy inside one cache reading a block it
// also writes, whose result would depend on the order of the pieces).
void check_disjoint(const Segment* segs, int64_t n);

// Total bytes of n pieces.
int64_t segments_bytes(const Segment* segs, int64_t n);

// Copies box b's pieces: a tiled transpose when the two sides are contiguous
// along different axes, else plain loops.
void copy_box(const Box& b);

}  // namespace hauler::kv
