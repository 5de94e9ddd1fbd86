// Shared helpers for the pybind11 bindings: thin conversion and error
// translation only; all checking and work happens in the core.
#pragma once
#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

namespace hauler::bind {

namespace py = pybind11;

void register_errors(py::module_& m);
void register_common(py::module_& m);
void register_datatype(py::module_& m);
void register_gather(py::module_& m);
void register_io(py::module_& m);
void register_kv(py::module_& m);
void register_kv_transfer(py::module_& m);

// A Python buffer held for the duration of a call (PyBuffer_Release on scope exit).
class HeldBuffer {
 public:
  // `what` names the argument in error messages ("src", "out", ...).
  HeldBuffer(py::handle obj, bool writable, const char* what);
  ~HeldBuffer() { PyBuffer_Release(&view_); }
  HeldBuffer(const HeldBuffer&) = delete;
  HeldBuffer& operator=(const HeldBuffer&) = delete;
  uint8_t* data() const { return static_cast<uint8_t*>(view_.buf); }
  int64_t size() const { return static_cast<int64_t>(view_.len); }

 private:
  Py_buffer view_{};
};

}  // namespace hauler::bind
