// Device buffers: cuFile (GPUDirect Storage) loaded with dlopen when libcufile
// and a GPU exist, else a host bounce buffer copied with the CUDA driver
// (cuMemcpyDtoH/HtoD, from the common driver loader). No CUDA or cufile headers: the few
// types used are declared here as cufile.h (CUDA 11.4+) lays them out.
// Compiled everywhere; exercised only where a GPU exists.
#include <dlfcn.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "../common/cuda_driver.hpp"
#include "../common/gpu.hpp"
#include "io.hpp"

namespace hauler::io {

struct FileState;

namespace {

// ---- minimal cufile.h ----
struct CUfileError_t {
  int err;     // CUfileOpError, 0 = CU_FILE_SUCCESS
  int cu_err;  // CUresult
};
enum { CU_FILE_HANDLE_TYPE_OPAQUE_FD = 1 };
struct CUfileDescr_t {
  int type;
  union {
    int fd;
    void* handle;
  } handle;
  const void* fs_ops;
};
using CUfileHandle_t = void*;
using FnDriverOpen = CUfileError_t (*)();
using FnHandleRegister = CUfileError_t (*)(CUfileHandle_t*, CUfileDescr_t*);
using FnHandleDeregister = void (*)(CUfileHandle_t);
using FnRead = ssize_t (*)(CUfileHandle_t, void*, size_t, off_t, off_t);
using FnWrite = ssize_t (*)(CUfileHandle_t, const void*, size_t, off_t, off_t);

struct Loaded {
  bool cufile = false;
  std::string cufile_why;
  FnHandleRegister reg = nullptr;
  FnHandleDeregister dereg = nullptr;
  FnRead read = nullptr;
  FnWrite write = nullptr;
  const cuda::Driver* driver = nullptr;  // with the calls the bounce path needs
};

const Loaded& loaded() {
  static Loaded L;
  static std::once_flag once;
  std::call_once(once, [] {
    // The machine's GPU, not the test emulation: emulated device memory is host memory, which
    // never goes to cuFile (device_io refuses it first), and this answer is kept for good.
    const gpu::GpuStatus gpu = gpu::loader_status();
    if (!gpu.available) {
      L.cufile_why = "no usable GPU (" + gpu.message + ")";
      return;
    }
    const cuda::Driver* d = cuda::driver();
    if (d && d->memcpy_dtoh && d->memcpy_htod && d->pointer_get_attribute && d->ctx_push_current &&
        d->ctx_pop_current)
      L.driver = d;
    void* lib = dlopen("libcufile.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!lib) lib = dlopen("libcufile.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      L.cufile_why = std::string("libcufile not found: ") + (e ? e : "dlopen failed");
      return;
    }
    auto open = reinterpret_cast<FnDriverOpen>(dlsym(lib, "cuFileDriverOpen"));
    L.reg = reinterpret_cast<FnHandleRegister>(dlsym(lib, "cuFileHandleRegister"));
    L.dereg = reinterpret_cast<FnHandleDeregister>(dlsym(lib, "cuFileHandleDeregister"));
    L.read = reinterpret_cast<FnRead>(dlsym(lib, "cuFileRead"));
    L.write = reinterpret_cast<FnWrite>(dlsym(lib, "cuFileWrite"));
    if (!open || !L.reg || !L.dereg || !L.read || !L.write) {
      L.cufile_why = "libcufile lacks cuFileDriverOpen/HandleRegister/Read/Write";
      return;
    }
    CUfileError_t rc = open();
    if (rc.err != 0) {
      L.cufile_why = "cuFileDriverOpen failed (error " + std::to_string(rc.err) + ")";
      return;
    }
    L.cufile = true;
  });
  return L;
}

}  // namespace

bool cufile_available() { return loaded().cufile; }
std::string cufile_status() {
  const Loaded& L = loaded();
  return L.cufile ? std::string("available") : "not available: " + L.cufile_why;
}

namespace {
int64_t device_io(const std::shared_ptr<FileState>& st, Op op, uint64_t dev, int64_t len, int64_t off) {
  if (!gpu::available() || gpu::emulation())
    fail(Status::no_device, "a device buffer was given but no usable GPU exists (" + gpu::status_message() + ")");
  const Loaded& L = loaded();
  if (L.cufile) {
    CUfileDescr_t d{};
    d.type = CU_FILE_HANDLE_TYPE_OPAQUE_FD;
    d.handle.fd = state_fd(st);
    CUfileHandle_t h = nullptr;
    CUfileError_t rc = L.reg(&h, &d);
    if (rc.err == 0) {
      int64_t done = 0;
      while (done < len) {
        ssize_t r = op == Op::read ? L.read(h, reinterpret_cast<void*>(dev), static_cast<size_t>(len - done),
                                            off + done, done)
                                   : L.write(h, reinterpret_cast<const void*>(dev), static_cast<size_t>(len - done),
                                             off + done, done);
        if (r <= 0) {
          L.dereg(h);
          if (r == 0 && op == Op::read)
            fail(Status::out_of_range, "short read at offset " + std::to_string(off + done) + " (end of file)");
          fail(Status::io_error, std::string("cuFile") + (op == Op::read ? "Read" : "Write") + " failed at offset " +
                                     std::to_string(off + done) + " (returned " + std::to_string(r) + ")");
        }
        done += r;
      }
      L.dereg(h);
      return len;
    }
    // registration refused (e.g. a file system without GDS support): bounce below
  }
  const cuda::Driver* D = L.driver;
  if (!D) fail(Status::no_device, "the CUDA driver lacks cuMemcpyDtoH/HtoD; cannot bounce device buffers");
  cuda::CUcontext ctx = nullptr;
  if (D->pointer_get_attribute(&ctx, cuda::kAttrContext, dev) != 0 || ctx == nullptr)
    fail(Status::invalid_argument, "pointer " + std::to_string(dev) + " is not device memory the driver knows");
  D->ctx_push_current(ctx);
  struct Pop {
    const cuda::Driver* D;
    ~Pop() {
      cuda::CUcontext c;
      D->ctx_pop_current(&c);
    }
  } pop{D};
  int64_t chunk = std::max<int64_t>(task_size() * 8, kAlign);
  BounceBuffer bb(std::min(chunk, len));
  for (int64_t done = 0; done < len;) {
    int64_t n = std::min(bb.capacity(), len - done);
    if (op == Op::read) {
      execute(st, Op::read, bb.data(), n, off + done);
      if (D->memcpy_htod(dev + static_cast<uint64_t>(done), bb.data(), static_cast<size_t>(n)) != 0)
        fail(Status::io_error, "cuMemcpyHtoD failed");
    } else {
      if (D->memcpy_dtoh(bb.data(), dev + static_cast<uint64_t>(done), static_cast<size_t>(n)) != 0)
        fail(Status::io_error, "cuMemcpyDtoH failed");
      execute(st, Op::write, bb.data(), n, off + done);
    }
    done += n;
  }
  return len;
}
}  // namespace

int64_t device_read(const std::shared_ptr<FileState>& st, uint64_t dev, int64_t len, int64_t off) {
  return device_io(st, Op::read, dev, len, off);
}
int64_t device_write(const std::shared_ptr<FileState>& st, uint64_t dev, int64_t len, int64_t off) {
  return device_io(st, Op::write, dev, len, off);
}

}  // namespace hauler::io
