// Bindings of csrc/common: GPU availability, run-time settings, CRC-32C.
#include "../common/crc32c.hpp"
#include "../common/gpu.hpp"
#include "../common/status.hpp"
#include "../common/settings.hpp"
#include "bindings.hpp"

#include <optional>

namespace hauler::bind {

void register_common(py::module_& m) {
  m.def("cuda_available", [] { return gpu::available(); },
        "True when GPU kernels can run (a driver, a device and libhauler_cuda.so), or under test emulation");
  m.def("cuda_status", [] { return gpu::status_message(); }, "Why the GPU path is or is not available");
  m.def("cuda_library", [] { return gpu::library_path(); }, "Where the GPU loader looks for libhauler_cuda.so");
  m.def("_use_gpu_emulation", [](bool on) { gpu::use_emulation(on); },
        "Testing only: run device-pointer calls through the host emulation of the GPU kernels");
  m.def("_gpu_emulation", [] { return gpu::emulation(); });
  m.def("set_setting",
        [](const std::string& name, std::optional<std::string> text) {
          if (text) settings::set(name, *text);
          else settings::reset(name);
        },
        py::arg("name"), py::arg("text"),
        "Run-time override of a HAULER_* setting the core reads (validated; None: remove it). "
        "hauler.config.set calls this");
  m.def("setting",
        [](const std::string& name) -> std::optional<std::string> {
          std::string text = settings::text(settings::id(name));
          if (text.empty()) return std::nullopt;
          return text;
        },
        py::arg("name"), "The value the core uses for a HAULER_* setting (canonical text; None: unset)");
  m.def("parse_setting",
        [](const std::string& name, const std::string& text) {
          settings::Value v;
          std::string error;
          if (!settings::parse(settings::spec(settings::id(name)), text, &v, &error))
            fail(Status::invalid_argument, error);
          return v.text;
        },
        py::arg("name"), py::arg("text"), "The core's parse of a HAULER_* value: its canonical text");
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
