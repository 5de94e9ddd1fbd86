// Maps hauler::Error to the exception classes of hauler.errors, so Python
// callers get e.g. hauler.BufferTooSmall (a ValueError) with the core's message.
#include "../common/status.hpp"
#include "bindings.hpp"

namespace hauler::bind {

namespace {
const char* class_for(Status s) {
  switch (s) {
    case Status::invalid_argument: return "InvalidArgument";
    case Status::overflow: return "Overflow";
    case Status::buffer_too_small: return "BufferTooSmall";
    case Status::out_of_range: return "OutOfRange";
    case Status::read_only: return "ReadOnlyBuffer";
    case Status::no_device: return "NoDevice";
    case Status::io_error: return "HaulerIOError";
    default: return "HaulerError";
  }
}
}  // namespace

void register_errors(py::module_&) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      py::object cls = py::module_::import("hauler.errors").attr(class_for(e.status()));
      PyErr_SetString(cls.ptr(), e.what());
    }
  });
}

HeldBuffer::HeldBuffer(py::handle obj, bool writable, const char* what) {
  int flags = PyBUF_ANY_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
  if (PyObject_GetBuffer(obj.ptr(), &view_, flags) == 0) return;
  PyErr_Clear();
  // Say why: read-only, non-contiguous or no buffer protocol at all.
  if (writable && PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_ANY_CONTIGUOUS) == 0) {
    PyBuffer_Release(&view_);
    fail(Status::read_only, std::string(what) + " is read-only; pass a writable buffer");
  }
  PyErr_Clear();
  if (PyObject_CheckBuffer(obj.ptr()))
    fail(Status::invalid_argument, std::string(what) + " is not a contiguous buffer; pass a contiguous array "
                                   "(for a strided view, build its type with Datatype.from_array)");
  fail(Status::invalid_argument, std::string(what) + " of type " +
                                     std::string(py::str(py::type::of(obj).attr("__name__"))) +
                                     " does not support the buffer protocol");
}

}  // namespace hauler::bind
