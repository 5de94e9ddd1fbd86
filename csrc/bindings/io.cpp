// Bindings of csrc/io: the file handle, futures, backend/cuFile status.
// Thin: hold the Python buffer, release the GIL, call the core.
#include "../common/checked.hpp"
#include "../io/io.hpp"
#include "../io/poller.hpp"
#include "bindings.hpp"

#include <map>
#include <memory>
#include <tuple>

namespace hauler::bind {

namespace {

// A queued request: keeps the caller's buffer alive (and exported) until the
// request finished; destroying it waits for that, with the GIL released.
class PyFuture {
 public:
  PyFuture(std::shared_ptr<io::Future> f, std::unique_ptr<HeldBuffer> buf, int64_t nbytes)
      : f_(std::move(f)), buf_(std::move(buf)), nbytes_(nbytes) {}
  ~PyFuture() {
    if (f_ && !f_->done()) {
      py::gil_scoped_release nogil;
      f_->wait(-1);
    }
    buf_.reset();  // PyBuffer_Release with the GIL held
  }
  bool wait(double timeout) {
    py::gil_scoped_release nogil;
    return f_->wait(timeout);
  }
  bool done() const { return f_->done(); }
  bool cancel() { return f_->cancel(); }
  bool cancelled() const { return f_->cancelled(); }
  bool running() const { return f_->state() == io::Future::running; }
  int64_t get() {
    int64_t n;
    {
      py::gil_scoped_release nogil;
      n = f_->get();
    }
    return n;
  }
  void release_buffer() {
    if (f_->done()) buf_.reset();
  }
  int64_t nbytes() const { return nbytes_; }

 private:
  std::shared_ptr<io::Future> f_;
  std::unique_ptr<HeldBuffer> buf_;
  int64_t nbytes_;
};

int64_t resolve_size(const HeldBuffer& b, py::object size, const char* what) {
  if (size.is_none()) return b.size();
  int64_t n = size.cast<int64_t>();
  if (n < 0) fail(Status::invalid_argument, "size must be >= 0, got " + std::to_string(n));
  if (n > b.size())
    fail(Status::buffer_too_small, std::string(what) + " holds " + std::to_string(b.size()) +
                                       " bytes, fewer than the " + std::to_string(n) + " requested");
  return n;
}

// pread/pwrite: the request submitted; the future keeps the buffer alive until it completes.
std::unique_ptr<PyFuture> start(const io::File& f, py::object buf, py::object size, int64_t offset, io::Op op) {
  auto b = std::make_unique<HeldBuffer>(buf, op == io::Op::read, "buf");
  int64_t n = resolve_size(*b, size, "buf");
  uint8_t* p = b->data();
  auto fut = io::submit(f.state(), op, p, n, offset);
  return std::make_unique<PyFuture>(std::move(fut), std::move(b), n);
}

int64_t many(const io::File& f, py::object buf, const std::vector<int64_t>& offsets, int64_t size, io::Op op) {
  HeldBuffer b(buf, op == io::Op::read, "buf");
  if (size < 0) fail(Status::invalid_argument, "size must be >= 0, got " + std::to_string(size));
  int64_t need = mul64(static_cast<int64_t>(offsets.size()), size, "pieces * size");
  if (need > b.size())
    fail(Status::buffer_too_small, "buf holds " + std::to_string(b.size()) + " bytes, fewer than the " +
                                       std::to_string(offsets.size()) + " pieces of " + std::to_string(size) +
                                       " bytes need (" + std::to_string(need) + ")");
  std::vector<io::Segment> segs;
  segs.reserve(offsets.size());
  for (size_t i = 0; i < offsets.size(); ++i)
    segs.push_back({b.data() + static_cast<int64_t>(i) * size, offsets[i], size});
  py::gil_scoped_release nogil;
  return io::execute_segments(f.state(), op, segs);
}

// Pieces of different sizes: piece i (sizes[i] bytes at file offset offsets[i]) goes to / comes
// from the bytes after pieces 0..i-1 in buf. One request, like many().
int64_t extents(const io::File& f, py::object buf, const std::vector<int64_t>& offsets,
                const std::vector<int64_t>& sizes, io::Op op) {
  HeldBuffer b(buf, op == io::Op::read, "buf");
  if (offsets.size() != sizes.size())
    fail(Status::invalid_argument, "offsets has " + std::to_string(offsets.size()) + " entries, sizes has " +
                                       std::to_string(sizes.size()));
  std::vector<io::Segment> segs;
  segs.reserve(offsets.size());
  int64_t pos = 0;
  for (size_t i = 0; i < offsets.size(); ++i) {
    if (sizes[i] < 0 || offsets[i] < 0)
      fail(Status::invalid_argument, "extent " + std::to_string(i) + " has a negative offset or size");
    if (sizes[i] > b.size() - pos)
      fail(Status::buffer_too_small, "buf holds " + std::to_string(b.size()) + " bytes, fewer than the extents need");
    segs.push_back({b.data() + pos, offsets[i], sizes[i]});
    pos += sizes[i];
  }
  py::gil_scoped_release nogil;
  return io::execute_segments(f.state(), op, segs);
}


// The polled ring (io/poller.hpp) with the buffers of each request held until it is taken.
// A piece: (write, fd, buffer, offset in the buffer, bytes, offset in the file).
class PyPoller {
 public:
  explicit PyPoller(unsigned depth) {
    py::gil_scoped_release nogil;
    p_ = std::make_unique<io::Poller>(depth);
  }
  ~PyPoller() {
    {
      py::gil_scoped_release nogil;
      p_.reset();  // waits for requests in flight: their buffers are held below
    }
    held_.clear();
  }
  uint64_t submit(const std::vector<std::tuple<bool, int, py::object, int64_t, int64_t, int64_t>>& pieces,
                  const std::string& what) {
    std::vector<std::unique_ptr<HeldBuffer>> held;
    std::vector<io::PollPiece> ps;
    std::map<PyObject*, HeldBuffer*> seen;
    for (const auto& [write, fd, obj, at, len, off] : pieces) {
      auto it = seen.find(obj.ptr());
      HeldBuffer* b;
      if (it == seen.end()) {
        held.push_back(std::make_unique<HeldBuffer>(obj, !write, "buf"));
        b = seen[obj.ptr()] = held.back().get();
      } else {
        b = it->second;
      }
      if (at < 0 || len < 0 || at > b->size() || len > b->size() - at)
        fail(Status::buffer_too_small, "a piece of " + what + " (" + std::to_string(len) + " bytes at " +
                                           std::to_string(at) + ") lies outside its buffer of " +
                                           std::to_string(b->size()) + " bytes");
      ps.push_back({write, fd, b->data() + at, len, off});
    }
    uint64_t id;
    {
      py::gil_scoped_release nogil;
      id = p_->submit(ps, what);
    }
    held_[id] = std::move(held);
    return id;
  }
  bool done(uint64_t id) { return p_->done(id); }
  bool wait(uint64_t id, double timeout) {
    py::gil_scoped_release nogil;
    return p_->wait(id, timeout);
  }
  int64_t take(uint64_t id) {
    struct Drop {  // the buffers go once the request is over, however take ends
      PyPoller& p;
      uint64_t id;
      ~Drop() { p.held_.erase(id); }
    };
    {
      py::gil_scoped_release nogil;
      p_->wait(id, -1);
    }
    Drop d{*this, id};
    return p_->take(id);
  }
  size_t poll() { return p_->poll(); }
  bool usable() const { return p_->usable(); }

 private:
  std::unique_ptr<io::Poller> p_;
  std::map<uint64_t, std::vector<std::unique_ptr<HeldBuffer>>> held_;
};

}  // namespace

void register_io(py::module_& m) {
  py::class_<PyFuture>(m, "IOFuture")
      .def("wait", &PyFuture::wait, py::arg("timeout") = -1.0,
           "Waits up to timeout seconds (negative: forever); True when done")
      .def("done", &PyFuture::done)
      .def("cancel", &PyFuture::cancel, "Cancels the request if it has not started; True if it never runs")
      .def("cancelled", &PyFuture::cancelled)
      .def("running", &PyFuture::running)
      .def("get", &PyFuture::get, "Waits, then the byte count or the request's error")
      .def("release_buffer", &PyFuture::release_buffer)
      .def_property_readonly("nbytes", &PyFuture::nbytes);

  py::class_<PyPoller>(m, "IOPoller")
      .def(py::init<unsigned>(), py::arg("depth"))
      .def("submit", &PyPoller::submit, py::arg("pieces"), py::arg("what"),
           "Starts a request of pieces (write, fd, buffer, offset in buffer, bytes, file offset); its id")
      .def("done", &PyPoller::done, "True when the request finished (reaps what is ready; never sleeps)")
      .def("wait", &PyPoller::wait, py::arg("id"), py::arg("timeout") = -1.0)
      .def("take", &PyPoller::take, "Waits; the bytes moved or the request's error; forgets the request")
      .def("poll", &PyPoller::poll, "Reaps what is ready; the number of unfinished requests")
      .def("usable", &PyPoller::usable);

  py::class_<io::File>(m, "IOFile")
      .def(py::init([](const std::string& path, const std::string& mode, int direct) {
             py::gil_scoped_release nogil;
             return std::make_unique<io::File>(path, mode, direct);
           }),
           py::arg("path"), py::arg("mode") = "r", py::arg("direct") = -1)
      .def_property_readonly("direct", &io::File::direct)
      .def_property_readonly("direct_reason", &io::File::direct_reason)
      .def_property_readonly("path", &io::File::path)
      .def_property_readonly("mode", &io::File::mode)
      .def_property_readonly("closed", [](const io::File& f) { return !f.is_open(); })
      .def("fileno", &io::File::fd)
      .def("size", &io::File::size)
      .def("close",
           [](io::File& f) {
             py::gil_scoped_release nogil;
             f.close();
           })
      .def("sync",
           [](const io::File& f, bool data_only) {
             py::gil_scoped_release nogil;
             f.sync(data_only);
           },
           py::arg("data_only") = false)
      .def("truncate", [](const io::File& f, int64_t size) { f.truncate(size); })
      .def("read_into",
           [](const io::File& f, py::object buf, py::object size, int64_t offset) {
             HeldBuffer b(buf, true, "buf");
             int64_t n = resolve_size(b, size, "buf");
             py::gil_scoped_release nogil;
             return f.read(b.data(), n, offset);
           },
           py::arg("buf"), py::arg("size") = py::none(), py::arg("offset") = 0)
      .def("write",
           [](const io::File& f, py::object buf, py::object size, int64_t offset) {
             HeldBuffer b(buf, false, "buf");
             int64_t n = resolve_size(b, size, "buf");
             py::gil_scoped_release nogil;
             return f.write(b.data(), n, offset);
           },
           py::arg("buf"), py::arg("size") = py::none(), py::arg("offset") = 0)
      .def("pread",
           [](const io::File& f, py::object buf, py::object size, int64_t offset) {
             return start(f, buf, size, offset, io::Op::read);
           },
           py::arg("buf"), py::arg("size") = py::none(), py::arg("offset") = 0)
      .def("pwrite",
           [](const io::File& f, py::object buf, py::object size, int64_t offset) {
             return start(f, buf, size, offset, io::Op::write);
           },
           py::arg("buf"), py::arg("size") = py::none(), py::arg("offset") = 0)
      .def("read_many",
           [](const io::File& f, py::object buf, std::vector<int64_t> offsets, int64_t size) {
             return many(f, buf, offsets, size, io::Op::read);
           },
           py::arg("buf"), py::arg("offsets"), py::arg("size"))
      .def("read_extents",
           [](const io::File& f, py::object buf, std::vector<int64_t> offsets, std::vector<int64_t> sizes) {
             return extents(f, buf, offsets, sizes, io::Op::read);
           },
           py::arg("buf"), py::arg("offsets"), py::arg("sizes"))
      .def("write_extents",
           [](const io::File& f, py::object buf, std::vector<int64_t> offsets, std::vector<int64_t> sizes) {
             return extents(f, buf, offsets, sizes, io::Op::write);
           },
           py::arg("buf"), py::arg("offsets"), py::arg("sizes"))
      .def("write_many",
           [](const io::File& f, py::object buf, std::vector<int64_t> offsets, int64_t size) {
             return many(f, buf, offsets, size, io::Op::write);
           },
           py::arg("buf"), py::arg("offsets"), py::arg("size"))
      .def("read_device",
           [](const io::File& f, uint64_t ptr, int64_t size, int64_t offset) {
             py::gil_scoped_release nogil;
             return io::device_read(f.state(), ptr, size, offset);
           })
      .def("write_device", [](const io::File& f, uint64_t ptr, int64_t size, int64_t offset) {
        py::gil_scoped_release nogil;
        return io::device_write(f.state(), ptr, size, offset);
      });

  m.def("io_backend", [] { return std::string(io::backend().name); }, "The I/O backend in use");
  m.def("io_backend_description", &io::backend_description);
  m.def("io_backend_is_fallback", &io::backend_is_fallback);
  m.def("io_cufile_status", &io::cufile_status);
  m.def("io_registration_description", &io::registration_description);
  m.def("io_registration_failed", &io::registration_failed);
  m.def("io_counters", [] {
    io::IoCounters c = io::io_counters();
    py::dict d;
    d["ops"] = c.ops;
    d["fixed_buffer_ops"] = c.fixed_buffer_ops;
    d["fixed_file_ops"] = c.fixed_file_ops;
    d["waits"] = c.waits;
    d["bounced_bytes"] = io::bounced_bytes();
    return d;
  });
  m.def("io_alignment", [] { return io::kAlign; });
}

}  // namespace hauler::bind
