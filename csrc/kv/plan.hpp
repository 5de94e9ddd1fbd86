// A block move between two KV layouts as coalesced (src, dst, nbytes) pieces:
// pure address arithmetic, the memory itself is never touched (so either side
// may be another process's layout).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "layout.hpp"

namespace hauler::kv {

struct Segment {
  int64_t src, dst, n;
};

// A grid of small pieces: n[0] x n[1] x n[2] pieces of `unit` bytes, piece
// (i, j, k) at src + i*ss[0] + j*ss[1] + k*ss[2] (dst likewise with ds). A
// plan describes a move this way where one side keeps the dims of a head
// apart (vLLM's legacy caches are dim-major), so movers transpose tiles
// instead of copying millions of one-element pieces.
struct Box {
  int64_t src, dst, unit;
  int64_t n[3], ss[3], ds[3];
};

// Bytes a box moves.
inline int64_t box_bytes(const Box& b) { return b.unit * b.n[0] * b.n[1] * b.n[2]; }

// Block ids as the caller passed them: `width` 4 (int32) or 8 (int64).
struct BlockList {
  const void* ids = nullptr;
  int64_t n = 0;
  int width = 8;
  int64_t at(int64_t i) const {
    return width == 4 ? static_cast<const int32_t*>(ids)[i] : static_cast<const int64_t*>(ids)[i];
  }
};

struct PlanRequest {
  BlockList src_blocks, dst_blocks;
  std::vector<int64_t> layers;  // empty = all
  int64_t h0 = 0, h1 = -1;      // source heads [h0, h1); h1 < 0 = all
  int64_t dst_h0 = -1;          // first destination head; < 0 = the contract's default
  int64_t num_tokens = -1;      // < 0 = every source token
};

struct PlanInfo {
  int64_t num_tokens = 0, h0 = 0, h1 = 0, dst_h0 = 0;
  std::vector<int64_t> layers;
};

// Validates (block ids in range, no destination block twice, element size,
// planes, layers, head size, head slice, token counts: each error names both
// sides' values) before planning, then returns the pieces in the order
// (layer, plane, token, head, dim), merged where contiguous on both sides.
// Inside one block pair the pieces follow the (token, head) order both sides
// share when that makes them larger (HND <-> HND moves whole blocks).
// With `boxes`, a plane whose head dims are pieces of at most kBoxUnitMax
// bytes, evenly spaced on both sides, goes there as one Box per token run
// instead of pieces (the returned pieces are then the rest of the move).
std::vector<Segment> make_plan(const Layout& src, const Layout& dst, const PlanRequest& req, PlanInfo* info,
                               std::vector<Box>* boxes = nullptr);

constexpr int64_t kBoxUnitMax = 64;

}  // namespace hauler::kv
