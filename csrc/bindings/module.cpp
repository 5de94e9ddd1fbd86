// The hauler._core extension: one file per capability registers its part.
#include "bindings.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "hauler's C++ core (datatype engine, row gather, file I/O engine, GPU loader); use the hauler package, not this module";
  hauler::bind::register_errors(m);
  hauler::bind::register_common(m);
  hauler::bind::register_datatype(m);
  hauler::bind::register_gather(m);
  hauler::bind::register_io(m);
  hauler::bind::register_kv(m);
  hauler::bind::register_kv_transfer(m);
}
