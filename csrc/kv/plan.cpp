#include "plan.hpp"

#include <algorithm>

#include "../common/checked.hpp"
#include "../common/status.hpp"

namespace hauler::kv {

namespace {

std::string s(int64_t v) { return std::to_string(v); }

struct Axis {
  int64_t n, ss, ds;  // count, source and destination strides in bytes
};

// Pieces appended in order; each merges into the previous one when it
// continues it on both sides.
class Out {
 public:
  explicit Out(std::vector<Segment>& v) : v_(v) {}
  void push(int64_t src, int64_t dst, int64_t n) {
    if (!v_.empty()) {
      Segment& b = v_.back();
      if (b.src + b.n == src && b.dst + b.n == dst) {
        b.n += n;
        return;
      }
    }
    v_.push_back({src, dst, n});
  }

 private:
  std::vector<Segment>& v_;
};

bool folds(const Axis& a, int64_t unit) { return a.n == 1 || (a.ss == unit && a.ds == unit); }

// Folds `inner`, then `outer`, into the piece while both sides continue it
// contiguously (a folded axis becomes a count of 1); returns the piece size.
int64_t fold(Axis& outer, Axis& inner, int64_t unit) {
  if (!folds(inner, unit)) return unit;
  unit *= inner.n;
  inner = {1, 0, 0};
  if (!folds(outer, unit)) return unit;
  unit *= outer.n;
  outer = {1, 0, 0};
  return unit;
}

// One (token run x heads) box: rows of `runs` (the dims of one head, as pieces
// contiguous on both sides). A row that is one piece folds the axes into larger
// pieces, in the nesting (tokens outer or heads outer) that folds more.
void emit_box(Out& out, int64_t bs, int64_t bd, Axis outer, Axis inner, const std::vector<Segment>& runs,
              int64_t row_bytes) {
  if (runs.size() == 1 && runs[0].n == row_bytes) {
    Axis o2 = inner, i2 = outer;  // the other nesting: heads outer, tokens inner
    int64_t unit = fold(outer, inner, row_bytes);
    const int64_t unit2 = fold(o2, i2, row_bytes);
    if (unit2 > unit) {
      outer = o2;
      inner = i2;
      unit = unit2;
    }
    const int64_t so = runs[0].src, dof = runs[0].dst;
    for (int64_t o = 0; o < outer.n; ++o)
      for (int64_t i = 0; i < inner.n; ++i)
        out.push(bs + o * outer.ss + i * inner.ss + so, bd + o * outer.ds + i * inner.ds + dof, unit);
    return;
  }
  for (int64_t o = 0; o < outer.n; ++o)
    for (int64_t i = 0; i < inner.n; ++i) {
      const int64_t rs = bs + o * outer.ss + i * inner.ss, rd = bd + o * outer.ds + i * inner.ds;
      for (const Segment& r : runs) out.push(rs + r.src, rd + r.dst, r.n);
    }
}

void check_blocks(const BlockList& b, int64_t num_blocks, const char* side) {
  if (b.width != 4 && b.width != 8)
    fail(Status::invalid_argument, std::string(side) + "_blocks must be int32 or int64, got " + s(b.width) + "-byte ids");
  for (int64_t i = 0; i < b.n; ++i) {
    int64_t v = b.at(i);
    if (v < 0 || v >= num_blocks)
      fail(Status::out_of_range, std::string(side) + "_blocks[" + s(i) + "]=" + s(v) + " is outside the " + side +
                                     " layout's " + s(num_blocks) + " blocks [0, " + s(num_blocks) + ")");
  }
}

}  // namespace

namespace {

// The dims of one head as `runs`: when they are at least two pieces of one
// size up to kBoxUnitMax, evenly spaced on both sides, returns true with the
// box's innermost axis (count, source and destination steps) and piece size.
bool box_runs(const std::vector<Segment>& runs, Axis* axis, int64_t* unit) {
  if (runs.size() < 2 || runs[0].n > kBoxUnitMax) return false;
  const int64_t ss = runs[1].src - runs[0].src, ds = runs[1].dst - runs[0].dst;
  for (size_t r = 1; r < runs.size(); ++r)
    if (runs[r].n != runs[0].n || runs[r].src - runs[r - 1].src != ss || runs[r].dst - runs[r - 1].dst != ds)
      return false;
  *axis = Axis{static_cast<int64_t>(runs.size()), ss, ds};
  *unit = runs[0].n;
  return true;
}

// Folds axes contiguous on both sides into the box's unit (a box between two
// caches of one dim-major layout moves whole rows, not elements).
Box folded(Box b) {
  for (bool again = true; again;) {
    again = false;
    for (int a = 0; a < 3; ++a)
      if (b.n[a] > 1 && b.ss[a] == b.unit && b.ds[a] == b.unit) {
        b.unit *= b.n[a];
        b.n[a] = 1;
        again = true;
      }
  }
  return b;
}

}  // namespace

std::vector<Segment> make_plan(const Layout& src, const Layout& dst, const PlanRequest& req, PlanInfo* info,
                               std::vector<Box>* boxes) {
  src.validate("src layout");
  dst.validate("dst layout");
  auto mismatch = [](const char* what, int64_t a, int64_t b) {
    fail(Status::invalid_argument, std::string(what) + " differ: src has " + s(a) + ", dst has " + s(b));
  };
  if (src.elem_size != dst.elem_size) mismatch("element sizes (bytes)", src.elem_size, dst.elem_size);
  if (src.num_planes != dst.num_planes) mismatch("plane counts (2 = K and V, 1 = MLA)", src.num_planes, dst.num_planes);
  if (src.num_layers != dst.num_layers) mismatch("layer counts", src.num_layers, dst.num_layers);
  if (src.head_size != dst.head_size) mismatch("head sizes", src.head_size, dst.head_size);

  std::vector<int64_t> layers = req.layers;
  if (layers.empty())
    for (int64_t l = 0; l < src.num_layers; ++l) layers.push_back(l);
  for (size_t i = 0; i < layers.size(); ++i)
    if (layers[i] < 0 || layers[i] >= src.num_layers)
      fail(Status::out_of_range, "layers[" + s(i) + "]=" + s(layers[i]) + " is outside the " + s(src.num_layers) +
                                     " layers of both sides");

  const int64_t h0 = req.h0, h1 = req.h1 < 0 ? src.num_heads : req.h1, nh = h1 - h0;
  if (h0 < 0 || h1 > src.num_heads || nh <= 0)
    fail(Status::out_of_range, "heads (" + s(h0) + ", " + s(h1) + ") is not a non-empty range of the source's " +
                                   s(src.num_heads) + " heads");
  int64_t dh0 = req.dst_h0;
  if (dh0 < 0) dh0 = dst.num_heads == nh ? 0 : h0;
  if (dh0 + nh > dst.num_heads)
    fail(Status::out_of_range, "destination heads (" + s(dh0) + ", " + s(dh0 + nh) + ") for source heads (" + s(h0) +
                                   ", " + s(h1) + ") exceed the destination's " + s(dst.num_heads) + " heads (source has " +
                                   s(src.num_heads) + ")");

  check_blocks(req.src_blocks, src.num_blocks, "src");
  check_blocks(req.dst_blocks, dst.num_blocks, "dst");
  const int64_t have = mul64(req.src_blocks.n, src.block_size, "source tokens");
  const int64_t room = mul64(req.dst_blocks.n, dst.block_size, "destination tokens");
  const int64_t T = req.num_tokens < 0 ? have : req.num_tokens;
  if (T > have)
    fail(Status::out_of_range, "num_tokens=" + s(T) + " exceeds the " + s(have) + " tokens of the " +
                                   s(req.src_blocks.n) + " source blocks of " + s(src.block_size));
  if (T > room)
    fail(Status::buffer_too_small, "the " + s(T) + " source tokens (" + s(req.src_blocks.n) + " blocks of " +
                                       s(src.block_size) + ") do not fit the " + s(room) + " tokens of the " +
                                       s(req.dst_blocks.n) + " destination blocks of " + s(dst.block_size));
  {  // a destination block written twice would make the result depend on order
    const int64_t used = (T + dst.block_size - 1) / dst.block_size;
    std::vector<std::pair<int64_t, int64_t>> ids(static_cast<size_t>(used));  // (id, position): no table per block
    for (int64_t i = 0; i < used; ++i) ids[i] = {req.dst_blocks.at(i), i};
    std::sort(ids.begin(), ids.end());
    for (size_t i = 1; i < ids.size(); ++i)
      if (ids[i].first == ids[i - 1].first)
        fail(Status::invalid_argument, "dst_blocks[" + s(ids[i].second) + "]=" + s(ids[i].first) + " repeats dst_blocks[" +
                                           s(ids[i - 1].second) + "]: a destination block may be written once per plan");
  }
  if (info) *info = PlanInfo{T, h0, h1, dh0, layers};

  // Token runs: stretches inside one source block and one destination block.
  struct TokRun {
    int64_t sb, st, db, dt, n;
  };
  std::vector<TokRun> truns;
  for (int64_t i = 0; i < T;) {
    const int64_t st = i % src.block_size, dt = i % dst.block_size;
    const int64_t n = std::min({src.block_size - st, dst.block_size - dt, T - i});
    truns.push_back({req.src_blocks.at(i / src.block_size), st, req.dst_blocks.at(i / dst.block_size), dt, n});
    i += n;
  }

  const int64_t e = src.elem_size, row_bytes = e * src.head_size;
  std::vector<Segment> segs;
  Out out(segs);
  // The dims of one head as pieces contiguous on both sides, per plane.
  std::vector<std::vector<Segment>> plane_runs(static_cast<size_t>(src.num_planes));
  for (int64_t p = 0; p < src.num_planes; ++p) {
    Out rout(plane_runs[p]);
    for (int64_t d = 0; d < src.head_size; ++d) rout.push(src.dim_offset(p, d), dst.dim_offset(p, d), e);
  }
  std::vector<Axis> run_axis(static_cast<size_t>(src.num_planes));
  std::vector<int64_t> unit(static_cast<size_t>(src.num_planes), 0);
  for (int64_t p = 0; p < src.num_planes; ++p)
    if (!boxes || !box_runs(plane_runs[p], &run_axis[p], &unit[p])) unit[p] = 0;
  for (int64_t l : layers)
    for (int64_t p = 0; p < src.num_planes; ++p) {
      const PlaneStrides &a = src.strides[p], &b = dst.strides[p];
      const int64_t bs0 = src.base(l, p) + h0 * a.head, bd0 = dst.base(l, p) + dh0 * b.head;
      for (const TokRun& r : truns) {
        const int64_t s0 = bs0 + r.sb * a.block + r.st * a.token, d0 = bd0 + r.db * b.block + r.dt * b.token;
        if (unit[p]) {
          const Axis& ra = run_axis[p];
          boxes->push_back(folded(Box{s0 + plane_runs[p][0].src, d0 + plane_runs[p][0].dst, unit[p],
                                      {r.n, nh, ra.n}, {a.token, a.head, ra.ss}, {b.token, b.head, ra.ds}}));
        } else {
          emit_box(out, s0, d0, Axis{r.n, a.token, b.token}, Axis{nh, a.head, b.head}, plane_runs[p], row_bytes);
        }
      }
    }
  return segs;
}

}  // namespace hauler::kv
