// Bindings of csrc/common: GPU availability, run-time settings, CRC-32C.
#include "../common/crc32c.hpp"
#include "../common/gpu.hpp"
#include "../common/status.hpp"
#include "../common/settings.hpp"
#include "bindings.hpp"

namespace hauler::bind {

void register_common(py::module_& m) {
  m.def("cuda_available", [] { return gpu::available(); },
        "True when GPU kernels can run (a driver, a device and libhauler_cuda.so), or under test emulation");
  m.def("cuda_status", [] { return gpu::status_message(); }, "Why the GPU path is or is not available");
  m.def("cuda_library", [] { return gpu::library_path(); }, "Where the GPU loader looks for libhauler_cuda.so");
  m.def("_use_gpu_emulation", [](bool on) { gpu::use_emulation(on); },
        "Testing only: run device-pointer calls through the host emulation of the GPU kernels");
  m.def("_gpu_emulation", [] { return gpu::emulation(); });
  m.def("_set_setting", [](const std::string& name, int64_t value) { settings::set_override(name, value); },
        "Run-time override of an integer HAULER_* setting read by the core (negative: remove)");
  m.def("threads", [] { return settings::threads(); }, "Threads the core uses for large copies");
  m.def("crc32c",
        [](py::object buf, uint32_t crc, const std::string& impl) {
          HeldBuffer b(buf, false, "buf");
          if (impl == "hardware" && !crc::has_hardware())
            fail(Status::invalid_argument, "crc32c: impl='hardware' needs SSE4.2, which this CPU lacks");
          if (impl != "auto" && impl != "hardware" && impl != "table")
            fail(Status::invalid_argument, "crc32c: impl must be 'auto', 'hardware' or 'table', got '" + impl + "'");
          py::gil_scoped_release nogil;  // 8 MiB activations: ~1 ms each, other threads run meanwhile
          if (impl == "table") return crc::crc32c_table(b.data(), size_t(b.size()), crc);
          if (impl == "hardware") return crc::crc32c_hardware(b.data(), size_t(b.size()), crc);
          return crc::crc32c(b.data(), size_t(b.size()), crc);
        },
        py::arg("buf"), py::arg("crc") = 0, py::arg("impl") = "auto",
        "CRC-32C of a contiguous buffer's bytes, continuing from crc (the CRC of the bytes before); "
        "impl: 'auto' (the fastest the CPU runs), 'hardware' (SSE4.2) or 'table' (portable)");
  m.def("crc32c_implementation", [] { return std::string(crc::implementation()); },
        "What crc32c(impl='auto') runs: 'sse4.2' or 'table'");
}

}  // namespace hauler::bind
