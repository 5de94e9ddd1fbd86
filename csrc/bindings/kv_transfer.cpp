// hauler.kv transfer primitives: cross-memory attach moves, staging copies, the lease table.
// Addresses come in as integers (the Python side keeps the arrays alive for the call).
#include "../common/gpu_ipc.hpp"
#include "../common/status.hpp"
#include "../kv/cma.hpp"
#include "bindings.hpp"

namespace hauler::bind {

namespace {
const int64_t* segs_of(uintptr_t p) { return reinterpret_cast<const int64_t*>(p); }
const int64_t* blocks_of(uintptr_t p) { return reinterpret_cast<const int64_t*>(p); }
kv::LeaseEntry* table_of(uintptr_t p) { return reinterpret_cast<kv::LeaseEntry*>(p); }
}  // namespace

void register_kv_transfer(py::module_& m) {
  py::class_<kv::XferProgress>(m, "KvXferProgress", "Progress of one transfer, shared with the thread moving it")
      .def(py::init<>())
      .def_property_readonly("bytes_done", [](const kv::XferProgress& p) { return p.bytes_done.load(); })
      .def_property_readonly("segments_done", [](const kv::XferProgress& p) { return p.segments_done.load(); })
      .def_property_readonly("cancelled", [](const kv::XferProgress& p) { return p.cancel.load(); })
      .def("cancel", [](kv::XferProgress& p) { p.cancel.store(true); })
      .def("set_done", [](kv::XferProgress& p, int64_t bytes) { p.bytes_done.store(bytes); },
           "For transports that move in Python: publish the leading bytes that landed");
  m.def(
      "kv_cma_move",
      [](int pid, int pidfd, bool write, uintptr_t segs, int64_t n, int64_t max_call_bytes, kv::XferProgress* prog) {
        kv::CmaResult r;
        {
          py::gil_scoped_release nogil;
          r = kv::cma_move(pid, pidfd, write, segs_of(segs), n, max_call_bytes, prog);
        }
        return py::make_tuple(r.bytes_done, r.segments_done, r.error, r.calls);
      },
      py::arg("pid"), py::arg("pidfd"), py::arg("write"), py::arg("segs"), py::arg("n"), py::arg("max_call_bytes"),
      py::arg("progress") = nullptr,
      "Moves n (src, dst, nbytes) int64 rows at address segs with process_vm_readv/writev; returns "
      "(bytes_done, segments_done, errno or 0, calls)");
  m.def(
      "kv_segments_stage",
      [](uintptr_t segs, int64_t n, int col, int64_t stream_off, uintptr_t buf, int64_t len, bool to_buf) {
        py::gil_scoped_release nogil;
        kv::segments_stage(segs_of(segs), n, col, stream_off, reinterpret_cast<uint8_t*>(buf), len, to_buf);
      },
      py::arg("segs"), py::arg("n"), py::arg("col"), py::arg("stream_off"), py::arg("buf"), py::arg("len"),
      py::arg("to_buf"));
  m.def(
      "kv_ipc_export",
      [](uintptr_t p) {
        gpu::IpcExport e = gpu::ipc_export(reinterpret_cast<const void*>(p));
        return py::make_tuple(py::bytes(reinterpret_cast<const char*>(e.handle), sizeof e.handle), e.base, e.size);
      },
      py::arg("ptr"), "CUDA IPC handle of the device allocation holding ptr: (handle bytes, base, size)");
  m.def(
      "kv_ipc_open",
      [](const py::bytes& handle, int device) {
        std::string h = handle;
        if (h.size() != gpu::kIpcHandleBytes)
          fail(Status::invalid_argument, "an IPC handle is " + std::to_string(gpu::kIpcHandleBytes) + " bytes, got " +
                                             std::to_string(h.size()));
        uint64_t size = 0;
        void* m = gpu::ipc_open(reinterpret_cast<const uint8_t*>(h.data()), device, &size);
        return py::make_tuple(reinterpret_cast<uintptr_t>(m), size);
      },
      py::arg("handle"), py::arg("device"), "Maps a peer's device allocation here: (address, size)");
  m.def("kv_ipc_close", [](uintptr_t p) { gpu::ipc_close(reinterpret_cast<void*>(p)); }, py::arg("ptr"));
  m.def("_gpu_emu_device_alloc", [](size_t n) { return reinterpret_cast<uintptr_t>(gpu::emulated_device_alloc(n)); },
        py::arg("nbytes"), "Testing: device memory of the GPU emulation (shared memory a peer process can map)");
  m.def("_gpu_emu_device_free", [](uintptr_t p) { gpu::emulated_device_free(reinterpret_cast<void*>(p)); });
  m.attr("kv_lease_entry_bytes") = py::int_(sizeof(kv::LeaseEntry));
  m.def("kv_monotonic_ns", &kv::monotonic_ns);
  m.def("kv_lease_grant", [](uintptr_t table, int64_t nb, uintptr_t blocks, int64_t n, uint64_t id, int64_t dl) {
    return kv::lease_grant(table_of(table), nb, blocks_of(blocks), n, id, dl);
  });
  m.def("kv_lease_clear", [](uintptr_t table, int64_t nb, uintptr_t blocks, int64_t n, uint64_t id) {
    kv::lease_clear(table_of(table), nb, blocks_of(blocks), n, id);
  });
  m.def("kv_lease_snapshot", [](uintptr_t table, int64_t nb, uintptr_t blocks, int64_t n, uint64_t id,
                                uintptr_t gens) {
    int64_t min_deadline = 0;
    int64_t bad = kv::lease_snapshot(table_of(table), nb, blocks_of(blocks), n, id,
                                     reinterpret_cast<uint64_t*>(gens), &min_deadline);
    return py::make_tuple(bad, min_deadline);
  });
  m.def("kv_lease_verify", [](uintptr_t table, int64_t nb, uintptr_t blocks, int64_t n, uintptr_t gens,
                              int64_t min_deadline) {
    return kv::lease_verify(table_of(table), nb, blocks_of(blocks), n, reinterpret_cast<const uint64_t*>(gens),
                            min_deadline);
  });
}

}  // namespace hauler::bind
