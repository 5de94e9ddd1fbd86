// Canonical form of a type map: the bytes an element (or `count` elements)
// occupies, in type-map order, as
//
//   for i_0 < dims[0].count: ... for i_{n-1} < dims[n-1].count:   (outermost first)
//     for run in runs:
//       bytes [run.offset + sum_k i_k * dims[k].stride, + run.length)
//
// A "strided block" (TEMPI's form, here up to kMaxDims dimensions) is the
// case of exactly one run; anything else is the run-list form. Both keep the
// MPI type-map order, which is the order MPI_Pack writes bytes in: dimensions
// are never reordered by stride, because that would change the packed bytes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "type.hpp"

namespace hauler::dt {

constexpr int kMaxDims = 8;
// A type whose canonical run list would exceed this is refused with a precise
// error instead of exhausting memory (2^26 runs = 1 GiB of run descriptors).
constexpr int64_t kMaxRuns = int64_t(1) << 26;

struct Run {
  int64_t offset;
  int64_t length;
  bool operator==(const Run& o) const { return offset == o.offset && length == o.length; }
};

struct Dim {
  int64_t count;
  int64_t stride;
  bool operator==(const Dim& o) const { return count == o.count && stride == o.stride; }
};

struct Layout {
  std::vector<Run> runs;  // type-map order, no empty runs, adjacent runs merged
  std::vector<Dim> dims;  // outermost first, all counts >= 2

  bool empty() const { return runs.empty(); }
  bool strided() const { return runs.size() == 1; }
  int64_t run_bytes() const;    // bytes of one pass over `runs`
  int64_t total_bytes() const;  // bytes of the whole map
  int64_t repeats() const;      // product of dim counts
  bool operator==(const Layout& o) const { return runs == o.runs && dims == o.dims; }
};

// Canonical form of one element of `t`, with offsets relative to its origin.
Layout canonical(const TypeRef& t);

// Canonical form of `count` consecutive elements (extent apart) of a type
// whose one-element form is `one`.
Layout repeat(const Layout& one, int64_t count, int64_t extent);

// Readable one-line form, e.g. "strided block: 8 B at +0, dims [(1024, 16)]".
std::string describe_layout(const Layout& l);

// Lowest and one-past-highest byte offsets the layout touches (0, 0 if empty).
void layout_span(const Layout& l, int64_t* lo, int64_t* hi);

}  // namespace hauler::dt
