#include "layout.hpp"

#include <algorithm>
#include <sstream>

#include "../common/checked.hpp"

namespace hauler::dt {

int64_t Layout::run_bytes() const {
  int64_t s = 0;
  for (const Run& r : runs) s = add64(s, r.length, "packed size");
  return s;
}

int64_t Layout::repeats() const {
  int64_t n = 1;
  for (const Dim& d : dims) n = mul64(n, d.count, "element count");
  return n;
}

int64_t Layout::total_bytes() const { return mul64(run_bytes(), repeats(), "packed size"); }

namespace {

void shift(Layout& l, int64_t by) {
  for (Run& r : l.runs) r.offset = add64(r.offset, by, "displacement");
}

// Drops empty runs and merges runs that touch end-to-start; true if changed.
bool merge_runs(Layout& l) {
  bool changed = false;
  std::vector<Run> runs;
  runs.reserve(l.runs.size());
  for (const Run& r : l.runs) {
    if (r.length == 0) { changed = true; continue; }
    if (!runs.empty() && runs.back().offset + runs.back().length == r.offset) {
      runs.back().length += r.length;
      changed = true;
    } else {
      runs.push_back(r);
    }
  }
  l.runs.swap(runs);
  return changed;
}

// One rewriting pass; returns true if anything changed.
bool simplify_once(Layout& l) {
  bool changed = merge_runs(l);
  if (l.runs.empty()) {
    changed = changed || !l.dims.empty();
    l.dims.clear();
    return changed;
  }
  // Drop count-1 dimensions; an empty dimension empties the map.
  std::vector<Dim> dims;
  for (const Dim& d : l.dims) {
    if (d.count == 0) { l.runs.clear(); l.dims.clear(); return true; }
    if (d.count == 1) { changed = true; continue; }
    dims.push_back(d);
  }
  l.dims.swap(dims);
  // Equal-length runs at a constant step become a dimension.
  if (l.runs.size() >= 2 && static_cast<int>(l.dims.size()) < kMaxDims) {
    int64_t step = l.runs[1].offset - l.runs[0].offset;
    bool regular = true;
    for (size_t i = 1; i < l.runs.size() && regular; ++i)
      regular = l.runs[i].length == l.runs[0].length && l.runs[i].offset - l.runs[i - 1].offset == step;
    if (regular) {
      l.dims.push_back(Dim{static_cast<int64_t>(l.runs.size()), step});
      l.runs.resize(1);
      changed = true;
    }
  }
  // A single run repeated at a stride equal to its length is one longer run.
  while (l.runs.size() == 1 && !l.dims.empty() && l.dims.back().stride == l.runs[0].length) {
    l.runs[0].length = mul64(l.runs[0].length, l.dims.back().count, "block length");
    l.dims.pop_back();
    changed = true;
  }
  // An outer dimension whose stride spans the whole inner dimension merges with it.
  for (size_t k = 0; k + 1 < l.dims.size();) {
    Dim& outer = l.dims[k];
    const Dim& inner = l.dims[k + 1];
    int64_t span_bytes;
    if (!__builtin_mul_overflow(inner.count, inner.stride, &span_bytes) && outer.stride == span_bytes) {
      outer = Dim{mul64(outer.count, inner.count, "element count"), inner.stride};
      l.dims.erase(l.dims.begin() + static_cast<long>(k) + 1);
      changed = true;
    } else {
      ++k;
    }
  }
  return changed;
}

void simplify(Layout& l) {
  while (simplify_once(l)) {
  }
}

// Expands the innermost dimension into the run list.
void expand_innermost(Layout& l) {
  Dim d = l.dims.back();
  l.dims.pop_back();
  int64_t n = mul64(d.count, static_cast<int64_t>(l.runs.size()), "run count");
  if (n > kMaxRuns)
    fail(Status::invalid_argument, "datatype too irregular: its canonical form needs " + std::to_string(n) +
                                       " runs, more than the limit of " + std::to_string(kMaxRuns));
  std::vector<Run> runs;
  runs.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < d.count; ++i)
    for (const Run& r : l.runs) runs.push_back(Run{add64(r.offset, i * d.stride, "displacement"), r.length});
  l.runs.swap(runs);
}

// Expands every dimension into runs (the result has no dims).
void expand_all(Layout& l) {
  simplify(l);
  while (!l.dims.empty()) expand_innermost(l);
  merge_runs(l);
}

// Adds an outer dimension of `count` copies `stride` bytes apart.
void add_outer(Layout& l, int64_t count, int64_t stride) {
  if (l.empty()) return;
  if (count == 0) { l.runs.clear(); l.dims.clear(); return; }
  if (count == 1) return;
  mul64(count - 1, stride, "displacement of the last copy");
  l.dims.insert(l.dims.begin(), Dim{count, stride});
  simplify(l);
  while (static_cast<int>(l.dims.size()) > kMaxDims) {
    expand_innermost(l);
    simplify(l);
  }
}

bool same_shape(const Layout& a, const Layout& b, int64_t* delta) {
  if (a.dims != b.dims || a.runs.size() != b.runs.size()) return false;
  *delta = b.runs[0].offset - a.runs[0].offset;
  for (size_t i = 0; i < a.runs.size(); ++i)
    if (a.runs[i].length != b.runs[i].length || b.runs[i].offset - a.runs[i].offset != *delta) return false;
  return true;
}

// Concatenates member layouts in type-map order. Members that are the same
// shape at a constant step (hindexed with regular displacements, struct of
// equal members) become one more dimension; anything else is expanded to runs.
Layout concat(std::vector<Layout>& parts) {
  std::vector<Layout> nonempty;
  for (auto& p : parts)
    if (!p.empty()) nonempty.push_back(std::move(p));
  if (nonempty.empty()) return Layout{};
  if (nonempty.size() == 1) return std::move(nonempty[0]);
  int64_t step = 0;
  bool regular = same_shape(nonempty[0], nonempty[1], &step);
  for (size_t i = 2; i < nonempty.size() && regular; ++i) {
    int64_t d;
    regular = same_shape(nonempty[i - 1], nonempty[i], &d) && d == step;
  }
  if (regular) {
    Layout out = std::move(nonempty[0]);
    add_outer(out, static_cast<int64_t>(nonempty.size()), step);
    return out;
  }
  Layout out;
  for (auto& p : nonempty) {
    expand_all(p);
    if (static_cast<int64_t>(out.runs.size() + p.runs.size()) > kMaxRuns)
      fail(Status::invalid_argument, "datatype too irregular: its canonical form needs more than " +
                                         std::to_string(kMaxRuns) + " runs");
    out.runs.insert(out.runs.end(), p.runs.begin(), p.runs.end());
  }
  simplify(out);
  return out;
}

}  // namespace

Layout canonical(const TypeRef& t) {
  if (t->primitive_size > 0) return Layout{{Run{0, t->primitive_size}}, {}};
  std::vector<Layout> parts;
  parts.reserve(t->members.size());
  const Type* last_child = nullptr;  // indexed types repeat one child: canonicalize it once
  Layout child;
  for (const Member& m : t->members) {
    if (m.type.get() != last_child) { child = canonical(m.type); last_child = m.type.get(); }
    Layout l = child;
    add_outer(l, m.blocklen, m.type->b.extent());
    shift(l, m.disp);
    parts.push_back(std::move(l));
  }
  Layout out = concat(parts);
  add_outer(out, t->rep_count, t->rep_stride);
  return out;
}

Layout repeat(const Layout& one, int64_t count, int64_t extent) {
  Layout l = one;
  add_outer(l, count, extent);
  return l;
}

void layout_span(const Layout& l, int64_t* lo, int64_t* hi) {
  if (l.empty()) { *lo = *hi = 0; return; }
  int64_t a = l.runs[0].offset, b = a + l.runs[0].length;
  for (const Run& r : l.runs) {
    a = std::min(a, r.offset);
    b = std::max(b, add64(r.offset, r.length, "upper bound"));
  }
  for (const Dim& d : l.dims) {
    int64_t last = mul64(d.count - 1, d.stride, "displacement");
    if (last < 0) a = add64(a, last, "lower bound");
    else b = add64(b, last, "upper bound");
  }
  *lo = a;
  *hi = b;
}

std::string describe_layout(const Layout& l) {
  std::ostringstream os;
  if (l.empty()) return "empty (0 bytes)";
  if (l.strided()) {
    os << "strided block: " << l.runs[0].length << " B at +" << l.runs[0].offset;
  } else {
    os << "run list: " << l.runs.size() << " runs, " << l.run_bytes() << " B [";
    for (size_t i = 0; i < l.runs.size() && i < 8; ++i)
      os << (i ? ", " : "") << "(+" << l.runs[i].offset << ", " << l.runs[i].length << ")";
    if (l.runs.size() > 8) os << ", ...";
    os << "]";
  }
  os << ", dims [";
  for (size_t i = 0; i < l.dims.size(); ++i)
    os << (i ? ", " : "") << "(" << l.dims[i].count << ", " << l.dims[i].stride << ")";
  os << "], " << l.total_bytes() << " B total";
  return os.str();
}

}  // namespace hauler::dt
