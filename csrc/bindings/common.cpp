// Bindings of csrc/common: GPU availability, run-time settings.
#include "../common/gpu.hpp"
#include "../common/settings.hpp"
#include "bindings.hpp"

namespace hauler::bind {

void register_common(py::module_& m) {
  m.def("cuda_available", [] { return gpu::available(); },
        "True when GPU kernels can run (a driver, a device and libhauler_cuda.so), or under test emulation");
  m.def("cuda_status", [] { return gpu::status_message(); }, "Why the GPU path is or is not available");
  m.def("_use_gpu_emulation", [](bool on) { gpu::use_emulation(on); },
        "Testing only: run device-pointer calls through the host emulation of the GPU kernels");
  m.def("_gpu_emulation", [] { return gpu::emulation(); });
  m.def("_set_setting", [](const std::string& name, int64_t value) { settings::set_override(name, value); },
        "Run-time override of an integer HAULER_* setting read by the core (negative: remove)");
  m.def("threads", [] { return settings::threads(); }, "Threads the core uses for large copies");
}

}  // namespace hauler::bind
