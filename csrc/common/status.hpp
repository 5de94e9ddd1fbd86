// Status codes and the one exception type the core throws. Bindings map each
// code to a Python exception class; the C ABI (interpose, CUDA library) maps
// them to integers. Messages say what was wrong and with which values.
#pragma once
#include <stdexcept>
#include <string>

namespace hauler {

enum class Status : int {
  ok = 0,
  invalid_argument = 1,  // malformed request (negative count, bad order, ...)
  overflow = 2,          // a size, offset or stride does not fit in 64 bits
  buffer_too_small = 3,  // a buffer does not cover the bytes the call needs
  out_of_range = 4,      // a position or index outside the message or table
  read_only = 5,         // an output buffer that cannot be written
  no_device = 6,         // a device buffer with no usable GPU
  io_error = 7,
  internal = 8,
};

const char* status_name(Status s) noexcept;

class Error : public std::runtime_error {
 public:
  Error(Status s, const std::string& msg) : std::runtime_error(msg), status_(s) {}
  Status status() const noexcept { return status_; }

 private:
  Status status_;
};

[[noreturn]] void fail(Status s, const std::string& msg);

}  // namespace hauler
