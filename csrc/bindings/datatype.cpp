// Bindings of the datatype engine: type constructors, properties, and
// pack/unpack over Python buffers (host) or raw device pointers.
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <mutex>

#include "../common/checked.hpp"
#include "../common/gpu.hpp"
#include "../datatype/decode.hpp"
#include "../datatype/gpu_pack.hpp"
#include "../datatype/layout.hpp"
#include "../datatype/pack.hpp"
#include "../datatype/type.hpp"
#include "bindings.hpp"

namespace hauler::bind {

using namespace hauler::dt;

namespace {

// A committed type: the IR node, its canonical form (computed once), and a
// few execution plans keyed by element count.
class PyType {
 public:
  explicit PyType(TypeRef t) : t_(std::move(t)) {}
  const TypeRef& type() const { return t_; }

  const Layout& one() {
    std::call_once(once_, [&] { one_ = canonical(t_); });
    return one_;
  }

  std::shared_ptr<const Plan> plan(int64_t count) {
    if (count < 0) fail(Status::invalid_argument, "count must be >= 0, got " + std::to_string(count));
    const Layout& l = one();
    std::lock_guard<std::mutex> lk(m_);
    auto it = plans_.find(count);
    if (it != plans_.end()) return it->second;
    auto p = std::make_shared<const Plan>(make_plan(repeat(l, count, t_->b.extent())));
    if (plans_.size() >= 8) plans_.erase(plans_.begin());
    plans_.emplace(count, p);
    return p;
  }

 private:
  TypeRef t_;
  std::once_flag once_;
  Layout one_;
  std::mutex m_;
  std::map<int64_t, std::shared_ptr<const Plan>> plans_;
};

using PyTypeRef = std::shared_ptr<PyType>;

PyTypeRef wrap(TypeRef t) { return std::make_shared<PyType>(std::move(t)); }
TypeRef unwrap(const PyTypeRef& t) {
  if (!t) fail(Status::invalid_argument, "datatype is None");
  return t->type();
}
std::vector<TypeRef> unwrap_all(const std::vector<PyTypeRef>& ts) {
  std::vector<TypeRef> out;
  for (const auto& t : ts) out.push_back(unwrap(t));
  return out;
}

Order order_of(const std::string& s) {
  if (s == "C" || s == "c") return Order::c;
  if (s == "F" || s == "f" || s == "fortran" || s == "Fortran") return Order::fortran;
  fail(Status::invalid_argument, "order must be 'C' or 'F', got '" + s + "'");
}

Distrib distrib_of(const std::string& s) {
  if (s == "none") return Distrib::none;
  if (s == "block") return Distrib::block;
  if (s == "cyclic") return Distrib::cyclic;
  fail(Status::invalid_argument, "distribution must be 'none', 'block' or 'cyclic', got '" + s + "'");
}

// A buffer as the checks see it.
struct Span {
  const uint8_t* data;
  int64_t size;
  const char* name;  // the argument's name in messages
};

struct Call {
  std::shared_ptr<const Plan> plan;
  int64_t n;  // bytes of the window
};

// Every check of a pack/unpack call, before anything is written: the window
// [position, position + nbytes) lies in the message (nbytes defaults to the
// rest of it), the typed buffer holds every byte the type map touches with
// the origin at `offset`, the packed buffer holds the window, and the two
// buffers do not overlap.
Call checked_call(PyType& t, int64_t count, Span typed, Span packed, int64_t offset, int64_t position,
                  const py::object& nbytes) {
  Call c{t.plan(count), 0};
  const Plan& p = *c.plan;
  c.n = nbytes.is_none() ? p.total - position : nbytes.cast<int64_t>();
  check_window(p, position, c.n);
  if (p.total > 0) {
    int64_t lo = add64(offset, p.span_lo, "buffer offset"), hi = add64(offset, p.span_hi, "buffer offset");
    if (lo < 0 || hi > typed.size)
      fail(Status::buffer_too_small,
           std::string(typed.name) + " buffer of " + std::to_string(typed.size) + " bytes does not hold the data: "
           "with the type's origin at offset " + std::to_string(offset) + " it needs bytes [" + std::to_string(lo) +
           ", " + std::to_string(hi) + ")");
  }
  if (packed.size < c.n)
    fail(Status::buffer_too_small, std::string(packed.name) + " buffer of " + std::to_string(packed.size) +
                                       " bytes is too small for " + std::to_string(c.n) + " packed bytes");
  if (c.n > 0 && typed.size > 0 && packed.data < typed.data + typed.size && typed.data < packed.data + c.n)
    fail(Status::invalid_argument, "the packed buffer overlaps the typed buffer; use separate buffers");
  return c;
}

py::dict layout_dict(const Plan& p) {
  py::list runs, dims;
  for (const Run& r : p.layout.runs) runs.append(py::make_tuple(r.offset, r.length));
  for (const Dim& d : p.layout.dims) dims.append(py::make_tuple(d.count, d.stride));
  KernelChoice k = kernel_choice(p);
  py::dict out;
  out["form"] = p.layout.empty() ? "empty" : p.layout.strided() ? "strided" : "runs";
  out["runs"] = runs;
  out["dims"] = dims;
  out["bytes"] = p.total;
  out["span"] = py::make_tuple(p.span_lo, p.span_hi);
  out["kernel"] = k.form;
  out["word"] = k.word;
  return out;
}

}  // namespace

void register_datatype(py::module_& m) {
  py::class_<PyType, PyTypeRef>(m, "Type", "A datatype of hauler's core (use hauler.datatype.Datatype)")
      .def_property_readonly("size", [](PyType& t) { return t.type()->b.size; })
      .def_property_readonly("lb", [](PyType& t) { return t.type()->b.lb; })
      .def_property_readonly("ub", [](PyType& t) { return t.type()->b.ub; })
      .def_property_readonly("extent", [](PyType& t) { return t.type()->b.extent(); })
      .def_property_readonly("true_lb", [](PyType& t) { return t.type()->b.true_lb; })
      .def_property_readonly("true_extent", [](PyType& t) { return t.type()->b.true_extent(); })
      .def_property_readonly("kind", [](PyType& t) { return kind_name(t.type()->kind); })
      .def_property_readonly("name", [](PyType& t) { return t.type()->name; })
      .def("describe_tree", [](PyType& t) { return describe_tree(t.type()); })
      .def("describe_layout", [](PyType& t, int64_t count) { return describe_layout(t.plan(count)->layout); })
      .def("layout", [](PyType& t, int64_t count) { return layout_dict(*t.plan(count)); })
      .def("pack_size", [](PyType& t, int64_t count) {
        if (count < 0) fail(Status::invalid_argument, "count must be >= 0, got " + std::to_string(count));
        return mul64(t.type()->b.size, count, "packed size");
      });

  m.def("named", [](const std::string& n) { return wrap(named(n)); });
  m.def("named_type_names", &named_type_names);
  m.def("contiguous", [](int64_t c, const PyTypeRef& o) { return wrap(contiguous(c, unwrap(o))); });
  m.def("vector", [](int64_t c, int64_t bl, int64_t s, const PyTypeRef& o) {
    return wrap(vector(c, bl, s, unwrap(o)));
  });
  m.def("hvector", [](int64_t c, int64_t bl, int64_t s, const PyTypeRef& o) {
    return wrap(hvector(c, bl, s, unwrap(o)));
  });
  m.def("indexed", [](const std::vector<int64_t>& bl, const std::vector<int64_t>& d, const PyTypeRef& o) {
    return wrap(indexed(bl, d, unwrap(o)));
  });
  m.def("hindexed", [](const std::vector<int64_t>& bl, const std::vector<int64_t>& d, const PyTypeRef& o) {
    return wrap(hindexed(bl, d, unwrap(o)));
  });
  m.def("indexed_block", [](int64_t bl, const std::vector<int64_t>& d, const PyTypeRef& o) {
    return wrap(indexed_block(bl, d, unwrap(o)));
  });
  m.def("hindexed_block", [](int64_t bl, const std::vector<int64_t>& d, const PyTypeRef& o) {
    return wrap(hindexed_block(bl, d, unwrap(o)));
  });
  m.def("struct", [](const std::vector<int64_t>& bl, const std::vector<int64_t>& d,
                     const std::vector<PyTypeRef>& ts) { return wrap(structure(bl, d, unwrap_all(ts))); });
  m.def("subarray", [](const std::vector<int64_t>& sizes, const std::vector<int64_t>& subsizes,
                       const std::vector<int64_t>& starts, const std::string& order, const PyTypeRef& o) {
    return wrap(subarray(sizes, subsizes, starts, order_of(order), unwrap(o)));
  });
  m.def("darray", [](int64_t size, int64_t rank, const std::vector<int64_t>& gsizes,
                     const std::vector<std::string>& distribs, const std::vector<int64_t>& dargs,
                     const std::vector<int64_t>& psizes, const std::string& order, const PyTypeRef& o) {
    std::vector<Distrib> ds;
    for (const auto& s : distribs) ds.push_back(distrib_of(s));
    return wrap(darray(size, rank, gsizes, ds, dargs, psizes, order_of(order), unwrap(o)));
  });
  m.def("resized", [](const PyTypeRef& o, int64_t lb, int64_t ext) { return wrap(resized(unwrap(o), lb, ext)); });
  m.def("dup", [](const PyTypeRef& o) { return wrap(dup(unwrap(o))); });
  m.def("with_bounds", [](const PyTypeRef& o, int64_t lb, int64_t ext) {
    return wrap(with_bounds(unwrap(o), lb, ext));
  });
  m.attr("DEFAULT_DARG") = kDefaultDarg;

  // The MPI type decoder (datatype/decode.hpp) that the shim uses, fed by runtime/_mpi_decode.py
  // with what mpi4py's Get_envelope / Get_contents return. constants: the library's
  // [ORDER_C, ORDER_FORTRAN, DISTRIBUTE_BLOCK, DISTRIBUTE_CYCLIC, DISTRIBUTE_NONE, DISTRIBUTE_DFLT_DARG].
  m.def("mpi_from_contents", [](const std::string& combiner, const std::vector<int64_t>& ints,
                                const std::vector<int64_t>& addrs, const std::vector<PyTypeRef>& olds,
                                const std::vector<int64_t>& constants) {
    if (constants.size() != 6)
      fail(Status::invalid_argument, "constants must hold the library's 6 order and distribution values, got " +
                                         std::to_string(constants.size()));
    MpiConstants k{constants[0], constants[1], constants[2], constants[3], constants[4], constants[5]};
    return wrap(from_contents(combiner_of(combiner), ints, addrs, unwrap_all(olds), k));
  });
  m.def("mpi_from_named", [](const std::string& name, int64_t size) { return wrap(from_named(name, size)); });
  m.def("mpi_with_library_bounds", [](const PyTypeRef& o, int64_t size, int64_t lb, int64_t extent) {
    return wrap(with_library_bounds(unwrap(o), size, lb, extent));
  });

  // Host pack: bytes [position, position + nbytes) of the packed message of
  // `count` elements whose origin is at byte `offset` of `src`, into out[0:nbytes].
  m.def("pack_host", [](PyType& t, int64_t count, py::handle src, int64_t offset, py::handle out,
                        int64_t position, py::object nbytes, int threads) {
    HeldBuffer s(src, false, "src"), o(out, true, "out");
    Call c = checked_call(t, count, {s.data(), s.size(), "src"}, {o.data(), o.size(), "out"}, offset, position,
                          nbytes);
    py::gil_scoped_release nogil;
    pack(*c.plan, s.data() + offset, o.data(), position, c.n, threads);
    return c.n;
  });
  m.def("unpack_host", [](PyType& t, int64_t count, py::handle packed, py::handle dst, int64_t offset,
                          int64_t position, py::object nbytes, int threads) {
    HeldBuffer i(packed, false, "packed"), d(dst, true, "dst");
    Call c = checked_call(t, count, {d.data(), d.size(), "dst"}, {i.data(), i.size(), "packed"}, offset, position,
                          nbytes);
    py::gil_scoped_release nogil;
    unpack(*c.plan, d.data() + offset, i.data(), position, c.n, threads);
    return c.n;
  });

  // Device pack on raw pointers (from __cuda_array_interface__ or DLPack):
  // the same checks, then the GPU backend (or the host emulation in tests).
  // Kernels run on `stream`; with sync the call waits for them.
  m.def("pack_device", [](PyType& t, int64_t count, uintptr_t src, int64_t src_len, int64_t offset,
                          uintptr_t out, int64_t out_len, int64_t position, py::object nbytes, uintptr_t stream,
                          bool sync) {
    auto* s = reinterpret_cast<uint8_t*>(src);
    auto* o = reinterpret_cast<uint8_t*>(out);
    Call c = checked_call(t, count, {s, src_len, "src"}, {o, out_len, "out"}, offset, position, nbytes);
    py::gil_scoped_release nogil;
    gpu_pack(*c.plan, s + offset, o, position, c.n, reinterpret_cast<void*>(stream));
    if (sync) gpu::synchronize(reinterpret_cast<void*>(stream));
    return c.n;
  });
  m.def("unpack_device", [](PyType& t, int64_t count, uintptr_t packed, int64_t packed_len, uintptr_t dst,
                            int64_t dst_len, int64_t offset, int64_t position, py::object nbytes, uintptr_t stream,
                            bool sync) {
    auto* i = reinterpret_cast<uint8_t*>(packed);
    auto* d = reinterpret_cast<uint8_t*>(dst);
    Call c = checked_call(t, count, {d, dst_len, "dst"}, {i, packed_len, "packed"}, offset, position, nbytes);
    py::gil_scoped_release nogil;
    gpu_unpack(*c.plan, d + offset, i, position, c.n, reinterpret_cast<void*>(stream));
    if (sync) gpu::synchronize(reinterpret_cast<void*>(stream));
    return c.n;
  });
}

}  // namespace hauler::bind
