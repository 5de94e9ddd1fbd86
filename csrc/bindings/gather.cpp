// Bindings of the row gather: host gather/scatter over raw addresses (the
// Python layer, hauler.gather, owns the arrays and keeps them alive for the
// call), the GPU gather, and table registration (pin).
#include "../common/checked.hpp"
#include "../common/gpu.hpp"
#include "../gather/gather.hpp"
#include "../gather/gpu_gather.hpp"
#include "bindings.hpp"

namespace hauler::bind {

using namespace hauler::gather;

namespace {

Table table_of(uintptr_t ptr, int64_t rows, int64_t row_bytes, int64_t row_stride) {
  Table t{reinterpret_cast<uint8_t*>(ptr), rows, row_bytes, row_stride};
  check_table(t);
  return t;
}

Index index_of(uintptr_t ptr, int64_t n, int width) {
  Index i{reinterpret_cast<const void*>(ptr), n, width};
  if (width != 4 && width != 8)
    fail(Status::invalid_argument, "index elements must be int32 or int64, got " + std::to_string(width) + " bytes");
  if (n < 0) fail(Status::invalid_argument, "index count must be >= 0");
  return i;
}

void check_rows_buffer(int64_t len, int64_t n, int64_t row_bytes, const char* what) {
  const int64_t need = mul64(n, row_bytes, "gathered bytes");
  if (len < need)
    fail(Status::buffer_too_small, std::string(what) + " buffer of " + std::to_string(len) + " bytes is too small for " +
                                       std::to_string(n) + " rows of " + std::to_string(row_bytes) + " bytes (" +
                                       std::to_string(need) + " bytes)");
}

void check_disjoint(const Table& t, uintptr_t buf, int64_t len, const char* what) {
  if (t.rows == 0 || len == 0) return;
  const uintptr_t lo = reinterpret_cast<uintptr_t>(t.data), hi = lo + static_cast<uintptr_t>(t.rows * t.row_stride);
  if (buf < hi && lo < buf + static_cast<uintptr_t>(len))
    fail(Status::invalid_argument, std::string(what) + " buffer overlaps the table; pass a separate buffer");
}

// The checked arguments of a host or device scatter.
struct ScatterCall {
  Table t;
  Index i;
  Reduce r = Reduce::assign;
  Elem e = Elem::u8;
  ScatterCall(uintptr_t table, int64_t rows, int64_t row_bytes, int64_t row_stride, uintptr_t index, int64_t n,
              int width, uintptr_t src, int64_t src_len, const std::string& reduce, const std::string& elem)
      : t(table_of(table, rows, row_bytes, row_stride)), i(index_of(index, n, width)) {
    check_rows_buffer(src_len, n, row_bytes, "src");
    check_disjoint(t, src, src_len, "src");
    if (reduce == "add") r = Reduce::add;
    else if (reduce != "assign") fail(Status::invalid_argument, "reduce must be 'assign' or 'add', got '" + reduce + "'");
    if (r == Reduce::add) e = elem_of(elem);
  }
};

}  // namespace

void register_gather(py::module_& m) {
  m.def("gather_host", [](uintptr_t table, int64_t rows, int64_t row_bytes, int64_t row_stride, uintptr_t index,
                          int64_t n, int width, uintptr_t out, int64_t out_len, int threads, int stream,
                          int prefetch) {
    Table t = table_of(table, rows, row_bytes, row_stride);
    Index i = index_of(index, n, width);
    check_rows_buffer(out_len, n, row_bytes, "out");
    check_disjoint(t, out, out_len, "out");
    py::gil_scoped_release nogil;
    gather::gather(t, i, reinterpret_cast<uint8_t*>(out), Options{threads, stream, prefetch});
  });
  m.def("scatter_host", [](uintptr_t table, int64_t rows, int64_t row_bytes, int64_t row_stride, uintptr_t index,
                           int64_t n, int width, uintptr_t src, int64_t src_len, const std::string& reduce,
                           const std::string& elem, int threads) {
    ScatterCall c(table, rows, row_bytes, row_stride, index, n, width, src, src_len, reduce, elem);
    py::gil_scoped_release nogil;
    gather::scatter(c.t, c.i, reinterpret_cast<const uint8_t*>(src), c.r, c.e, Options{threads, -1, -1});
  });
  m.def("scatter_device", [](uintptr_t table, int64_t rows, int64_t row_bytes, int64_t row_stride, uintptr_t index,
                             int64_t n, int width, uintptr_t src, int64_t src_len, const std::string& reduce,
                             const std::string& elem, uintptr_t stream, bool sync, int max_blocks) {
    ScatterCall c(table, rows, row_bytes, row_stride, index, n, width, src, src_len, reduce, elem);
    py::gil_scoped_release nogil;
    gpu_scatter(c.t, c.i, reinterpret_cast<const void*>(src), c.r, c.e, reinterpret_cast<void*>(stream), max_blocks);
    if (sync) gpu::synchronize(reinterpret_cast<void*>(stream));
  });
  m.def("scatter_check_elem", [](const std::string& elem) { elem_of(elem); },
        "Throws invalid_argument unless scatter(reduce='add') supports the element (numpy kind + size)");
  m.def("gather_copy_kind", [](int64_t row_bytes, bool stream) { return std::string(copy_kind(row_bytes, stream)); });
  m.def("gather_device", [](uintptr_t table, int64_t rows, int64_t row_bytes, int64_t row_stride, uintptr_t index,
                            int64_t n, int width, uintptr_t out, int64_t out_len, uintptr_t stream, bool sync,
                            int max_blocks) {
    Table t = table_of(table, rows, row_bytes, row_stride);
    Index i = index_of(index, n, width);
    check_rows_buffer(out_len, n, row_bytes, "out");
    check_disjoint(t, out, out_len, "out");
    py::gil_scoped_release nogil;
    gpu_gather(t, i, reinterpret_cast<void*>(out), reinterpret_cast<void*>(stream), max_blocks);
    if (sync) gpu::synchronize(reinterpret_cast<void*>(stream));
  });
  m.def("gpu_gather_choice", [](uintptr_t table, int64_t row_bytes, int64_t row_stride, uintptr_t out) {
    GpuChoice c = gpu_choice(Table{reinterpret_cast<uint8_t*>(table), 1, row_bytes, row_stride},
                             reinterpret_cast<void*>(out));
    return py::make_tuple(c.word, c.group);
  });
  m.def("host_register", [](uintptr_t p, int64_t n, bool readonly) {
    if (n <= 0) fail(Status::invalid_argument, "cannot pin " + std::to_string(n) + " bytes");
    return reinterpret_cast<uintptr_t>(host_register(reinterpret_cast<void*>(p), static_cast<size_t>(n), readonly));
  });
  m.def("host_unregister", [](uintptr_t p) { host_unregister(reinterpret_cast<void*>(p)); });
}

}  // namespace hauler::bind
