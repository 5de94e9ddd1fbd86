// Bindings of hauler.kv: layouts arrive as plain tuples built by
// runtime/kv/layout.py (which reads the tensors' real strides); plans come
// back as (n, 3) int64 arrays of (src, dst, nbytes).
#include <pybind11/numpy.h>

#include <cstring>

#include "../common/status.hpp"
#include "../kv/copy.hpp"
#include "../kv/kv_gpu.hpp"
#include "../kv/layout.hpp"
#include "../kv/plan.hpp"
#include "bindings.hpp"

namespace hauler::bind {

namespace {

using kv::Layout;
using kv::Segment;

// (elem, layers, planes, blocks, block_size, heads, head_size, bases, strides)
// with strides one (block, token, head, dim, dim_hi, x) tuple per plane.
Layout layout_of(const py::tuple& t) {
  if (t.size() != 9) fail(Status::invalid_argument, "kv layout tuple must have 9 fields, got " + std::to_string(t.size()));
  Layout l;
  l.elem_size = t[0].cast<int64_t>();
  l.num_layers = t[1].cast<int64_t>();
  l.num_planes = t[2].cast<int64_t>();
  l.num_blocks = t[3].cast<int64_t>();
  l.block_size = t[4].cast<int64_t>();
  l.num_heads = t[5].cast<int64_t>();
  l.head_size = t[6].cast<int64_t>();
  l.bases = t[7].cast<std::vector<int64_t>>();
  for (const auto& st : t[8].cast<std::vector<std::vector<int64_t>>>()) {
    if (st.size() != 6) fail(Status::invalid_argument, "kv plane strides need 6 fields (block, token, head, dim, dim_hi, x)");
    l.strides.push_back(kv::PlaneStrides{st[0], st[1], st[2], st[3], st[4], st[5]});
  }
  return l;
}

const Segment* segs_of(const py::array_t<int64_t, py::array::c_style>& a, int64_t* n) {
  if (a.ndim() != 2 || a.shape(1) != 3)
    fail(Status::invalid_argument, "plan segments must be an (n, 3) int64 array");
  *n = a.shape(0);
  return reinterpret_cast<const Segment*>(a.data());
}

// A plan's boxes: (n, 12) int64 rows (src, dst, unit, n[3], ss[3], ds[3]).
constexpr py::ssize_t kBoxFields = sizeof(kv::Box) / sizeof(int64_t);
static_assert(kBoxFields == 12, "a box is 12 int64 fields");

const kv::Box* boxes_of(const py::array_t<int64_t, py::array::c_style>& a, int64_t* n) {
  if (a.ndim() != 2 || a.shape(1) != kBoxFields)
    fail(Status::invalid_argument, "plan boxes must be an (n, 12) int64 array");
  *n = a.shape(0);
  const kv::Box* b = reinterpret_cast<const kv::Box*>(a.data());
  for (int64_t i = 0; i < *n; ++i)
    if (b[i].unit <= 0 || b[i].n[0] < 0 || b[i].n[1] < 0 || b[i].n[2] < 0)
      fail(Status::invalid_argument, "plan box " + std::to_string(i) + " has a non-positive size");
  return b;
}

}  // namespace

void register_kv(py::module_& m) {
  m.def("kv_layout_check", [](const py::tuple& t, const std::string& what) {
    Layout l = layout_of(t);
    l.validate(what.c_str());
    py::dict d;
    d["extent_bytes"] = l.extent_bytes();
    d["extents_per_block"] = l.extents_per_block();
    d["regions"] = l.regions();
    return d;
  });
  m.def("kv_plan", [](const py::tuple& src, const py::tuple& dst, uintptr_t sp, int64_t sn, int sw, uintptr_t dp,
                      int64_t dn, int dw, const std::vector<int64_t>& layers, int64_t h0, int64_t h1, int64_t dh0,
                      int64_t num_tokens, bool with_boxes) {
    Layout s = layout_of(src), d = layout_of(dst);
    kv::PlanRequest req;
    req.src_blocks = kv::BlockList{reinterpret_cast<const void*>(sp), sn, sw};
    req.dst_blocks = kv::BlockList{reinterpret_cast<const void*>(dp), dn, dw};
    req.layers = layers;
    req.h0 = h0;
    req.h1 = h1;
    req.dst_h0 = dh0;
    req.num_tokens = num_tokens;
    kv::PlanInfo info;
    std::vector<Segment> segs;
    std::vector<kv::Box> boxes;
    {
      py::gil_scoped_release nogil;
      segs = kv::make_plan(s, d, req, &info, with_boxes ? &boxes : nullptr);
    }
    py::array_t<int64_t> out({static_cast<py::ssize_t>(segs.size()), static_cast<py::ssize_t>(3)});
    if (!segs.empty()) std::memcpy(out.mutable_data(), segs.data(), segs.size() * sizeof(Segment));
    py::array_t<int64_t> bx({static_cast<py::ssize_t>(boxes.size()), static_cast<py::ssize_t>(kBoxFields)});
    if (!boxes.empty()) std::memcpy(bx.mutable_data(), boxes.data(), boxes.size() * sizeof(kv::Box));
    return py::make_tuple(out, info.num_tokens, info.h0, info.h1, info.dst_h0, info.layers, bx);
  });
  m.def("kv_check_disjoint", [](const py::array_t<int64_t, py::array::c_style>& a) {
    int64_t n = 0;
    const Segment* segs = segs_of(a, &n);
    kv::check_disjoint(segs, n);
  });
  m.def("kv_copy_device", [](const py::array_t<int64_t, py::array::c_style>& a,
                             const py::array_t<int64_t, py::array::c_style>& boxes,
                             const py::array_t<int64_t, py::array::c_style>& regions, uintptr_t stream, bool sync,
                             int max_blocks) {
    int64_t n = 0, nb = 0;
    const Segment* segs = segs_of(a, &n);
    const kv::Box* bx = boxes_of(boxes, &nb);
    if (regions.ndim() != 2 || regions.shape(1) != 2)
      fail(Status::invalid_argument, "regions must be an (n, 2) int64 array of (address, nbytes)");
    py::gil_scoped_release nogil;
    kv::copy_segments_device(segs, n, bx, nb, regions.data(), regions.shape(0), reinterpret_cast<void*>(stream), sync,
                             max_blocks);
  });
  m.def("kv_copy_host", [](const py::array_t<int64_t, py::array::c_style>& a,
                           const py::array_t<int64_t, py::array::c_style>& boxes, int threads) {
    int64_t n = 0, nb = 0;
    const Segment* segs = segs_of(a, &n);
    const kv::Box* bx = boxes_of(boxes, &nb);
    py::gil_scoped_release nogil;
    kv::copy_moves(segs, n, bx, nb, threads);
  });
}

}  // namespace hauler::bind
