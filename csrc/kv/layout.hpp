// A paged KV cache described as address arithmetic: element (layer, plane,
// block, token, head, dim) lives at
//   bases[layer * planes + plane] + block*s.block + token*s.token + head*s.head
//     + (x ? (dim / x) * s.dim_hi + (dim % x) * s.dim : dim * s.dim)
// with s = strides[plane] (K and V may order their elements differently: vLLM's
// legacy key cache packs x dims innermost, its value cache does not). Every
// engine layout (vLLM flash NHD/HND, MLA, cross-layer, SGLang token pools,
// LMCache chunks) reduces to this; the Python layer reads real tensor strides.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hauler::kv {

struct PlaneStrides {
  int64_t block = 0, token = 0, head = 0, dim = 0, dim_hi = 0;  // bytes
  int64_t x = 0;  // dims packed per innermost group; 0 = no packing (dim_hi unused)
};

struct Layout {
  int64_t elem_size = 0, num_layers = 0, num_planes = 0, num_blocks = 0, block_size = 0, num_heads = 0,
          head_size = 0;
  std::vector<int64_t> bases;          // num_layers * num_planes absolute addresses
  std::vector<PlaneStrides> strides;   // num_planes

  int64_t base(int64_t layer, int64_t plane) const { return bases[layer * num_planes + plane]; }
  // Byte offset of dim d inside a (token, head) row of `plane`.
  int64_t dim_offset(int64_t plane, int64_t d) const {
    const PlaneStrides& s = strides[plane];
    return s.x ? (d / s.x) * s.dim_hi + (d % s.x) * s.dim : d * s.dim;
  }
  // Throws InvalidArgument when counts are not positive, x does not divide the
  // head size, or two elements share a byte (a stride of 0, overlapping planes).
  void validate(const char* what) const;
  // Coalesced (address, nbytes) of the memory the layout spans, sorted.
  std::vector<std::pair<int64_t, int64_t>> regions() const;
  // Largest piece of one block in one layer/plane that is contiguous, and how
  // many such pieces one block is over all layers and planes.
  int64_t extent_bytes() const;
  int64_t extents_per_block() const;
};

}  // namespace hauler::kv
