#include "layout.hpp"

#include <algorithm>
#include <cstdlib>

#include "../common/checked.hpp"
#include "../common/status.hpp"

namespace hauler::kv {

namespace {

struct Dim {
  int64_t count, stride;
};

// The strided dims of one block of one plane (elements of elem_size bytes).
std::vector<Dim> block_dims(const Layout& l, int64_t plane) {
  const PlaneStrides& s = l.strides[plane];
  std::vector<Dim> d{{l.block_size, s.token}, {l.num_heads, s.head}};
  if (s.x) {
    d.push_back({l.head_size / s.x, s.dim_hi});
    d.push_back({s.x, s.dim});
  } else {
    d.push_back({l.head_size, s.dim});
  }
  return d;
}

// True when no two elements of the box share a byte: sorted by |stride|, each
// stride clears everything inside it. (Sufficient; interleavings it refuses
// are not layouts an engine allocates.)
bool box_disjoint(std::vector<Dim> dims, int64_t elem) {
  dims.erase(std::remove_if(dims.begin(), dims.end(), [](const Dim& d) { return d.count <= 1; }), dims.end());
  std::sort(dims.begin(), dims.end(), [](const Dim& a, const Dim& b) { return std::llabs(a.stride) < std::llabs(b.stride); });
  int64_t span = elem;
  for (const Dim& d : dims) {
    int64_t st = std::llabs(d.stride);
    if (st < span) return false;
    span = add64(mul64(st, d.count - 1, "layout span"), span, "layout span");
  }
  return true;
}

// [lo, hi) of one layer/plane.
std::pair<int64_t, int64_t> span_of(const Layout& l, int64_t layer, int64_t plane) {
  int64_t lo = l.base(layer, plane), hi = lo + l.elem_size;
  std::vector<Dim> dims = block_dims(l, plane);
  dims.push_back({l.num_blocks, l.strides[plane].block});
  for (const Dim& d : dims) {
    int64_t ext = mul64(d.stride, d.count - 1, "layout span");
    if (ext < 0) lo += ext; else hi += ext;
  }
  return {lo, hi};
}

std::string s(int64_t v) { return std::to_string(v); }

}  // namespace

void Layout::validate(const char* what) const {
  const std::string w(what);
  const int64_t counts[] = {elem_size, num_layers, num_planes, num_blocks, block_size, num_heads, head_size};
  const char* names[] = {"elem_size", "num_layers", "num_planes", "num_blocks", "block_size", "num_heads", "head_size"};
  for (int i = 0; i < 7; ++i)
    if (counts[i] <= 0) fail(Status::invalid_argument, w + ": " + names[i] + " must be > 0, got " + s(counts[i]));
  if (num_planes > 2) fail(Status::invalid_argument, w + ": num_planes must be 1 (MLA) or 2 (K and V), got " + s(num_planes));
  if (static_cast<int64_t>(bases.size()) != num_layers * num_planes)
    fail(Status::invalid_argument, w + ": " + s(bases.size()) + " base addresses for " + s(num_layers) + " layers x " +
                                        s(num_planes) + " planes");
  if (static_cast<int64_t>(strides.size()) != num_planes)
    fail(Status::invalid_argument, w + ": " + s(strides.size()) + " stride sets for " + s(num_planes) + " planes");
  for (int64_t p = 0; p < num_planes; ++p) {
    const PlaneStrides& st = strides[p];
    if (st.x < 0 || (st.x && head_size % st.x))
      fail(Status::invalid_argument, w + ": x=" + s(st.x) + " does not divide head_size=" + s(head_size));
    std::vector<Dim> dims = block_dims(*this, p);
    dims.push_back({num_blocks, st.block});
    if (!box_disjoint(dims, elem_size))
      fail(Status::invalid_argument, w + ": plane " + s(p) + " strides (block " + s(st.block) + ", token " + s(st.token) +
                                          ", head " + s(st.head) + ", dim " + s(st.dim) + (st.x ? ", dim_hi " + s(st.dim_hi) : "") +
                                          " bytes) place two elements on the same bytes; the tensor is not a view "
                                          "this layout can describe");
  }
  // Planes: disjoint spans (separate tensors), else one regular grid of
  // layers/planes whose combined box is disjoint (cross-layer interleaving).
  std::vector<std::pair<std::pair<int64_t, int64_t>, int64_t>> spans;
  for (int64_t l = 0; l < num_layers; ++l)
    for (int64_t p = 0; p < num_planes; ++p) spans.push_back({span_of(*this, l, p), l * num_planes + p});
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].first.first >= spans[i - 1].first.second) continue;
    bool regular = true;
    for (int64_t p = 1; p < num_planes; ++p) {
      const PlaneStrides &a = strides[0], &b = strides[p];
      regular = regular && a.block == b.block && a.token == b.token && a.head == b.head && a.dim == b.dim &&
                a.x == b.x && a.dim_hi == b.dim_hi;
    }
    int64_t ls = num_layers > 1 ? base(1, 0) - base(0, 0) : 0, ps = num_planes > 1 ? base(0, 1) - base(0, 0) : 0;
    for (int64_t l = 0; l < num_layers && regular; ++l)
      for (int64_t p = 0; p < num_planes; ++p) regular = regular && base(l, p) == base(0, 0) + l * ls + p * ps;
    std::vector<Dim> dims = block_dims(*this, 0);
    dims.push_back({num_blocks, strides[0].block});
    dims.push_back({num_layers, ls});
    dims.push_back({num_planes, ps});
    if (!regular || !box_disjoint(dims, elem_size)) {
      int64_t a = spans[i - 1].second, b = spans[i].second;
      fail(Status::invalid_argument, w + ": layer " + s(a / num_planes) + " plane " + s(a % num_planes) + " [" +
                                          s(spans[i - 1].first.first) + ", " + s(spans[i - 1].first.second) +
                                          ") and layer " + s(b / num_planes) + " plane " + s(b % num_planes) + " [" +
                                          s(spans[i].first.first) + ", " + s(spans[i].first.second) +
                                          ") overlap: planes must not share bytes");
    }
    break;
  }
}

std::vector<std::pair<int64_t, int64_t>> Layout::regions() const {
  std::vector<std::pair<int64_t, int64_t>> spans, out;
  for (int64_t l = 0; l < num_layers; ++l)
    for (int64_t p = 0; p < num_planes; ++p) spans.push_back(span_of(*this, l, p));
  std::sort(spans.begin(), spans.end());
  for (auto& sp : spans) {
    if (!out.empty() && sp.first <= out.back().first + out.back().second)
      out.back().second = std::max(out.back().second, sp.second - out.back().first);
    else
      out.push_back({sp.first, sp.second - sp.first});
  }
  return out;
}

namespace {
// Largest contiguous piece of one block of `plane`: dims folded from the
// smallest stride while each stride equals the bytes folded so far.
int64_t piece_bytes(const Layout& l, int64_t plane) {
  std::vector<Dim> dims = block_dims(l, plane);
  dims.erase(std::remove_if(dims.begin(), dims.end(), [](const Dim& d) { return d.count <= 1; }), dims.end());
  std::sort(dims.begin(), dims.end(), [](const Dim& a, const Dim& b) { return std::llabs(a.stride) < std::llabs(b.stride); });
  int64_t run = l.elem_size;
  for (const Dim& d : dims) {
    if (d.stride != run) break;
    run *= d.count;
  }
  return run;
}
}  // namespace

int64_t Layout::extent_bytes() const {
  int64_t best = 0;
  for (int64_t p = 0; p < num_planes; ++p) best = std::max(best, piece_bytes(*this, p));
  return best;
}

int64_t Layout::extents_per_block() const {
  const int64_t plane_bytes = elem_size * block_size * num_heads * head_size;
  int64_t n = 0;
  for (int64_t p = 0; p < num_planes; ++p) n += plane_bytes / piece_bytes(*this, p);
  return n * num_layers;
}

}  // namespace hauler::kv
