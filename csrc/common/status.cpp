#include "status.hpp"

namespace hauler {

const char* status_name(Status s) noexcept {
  switch (s) {
    case Status::ok: return "ok";
    case Status::invalid_argument: return "invalid argument";
    case Status::overflow: return "overflow";
    case Status::buffer_too_small: return "buffer too small";
    case Status::out_of_range: return "out of range";
    case Status::read_only: return "read-only buffer";
    case Status::no_device: return "no device";
    case Status::io_error: return "I/O error";
    case Status::internal: return "internal error";
  }
  return "unknown status";
}

void fail(Status s, const std::string& msg) { throw Error(s, msg); }

}  // namespace hauler
