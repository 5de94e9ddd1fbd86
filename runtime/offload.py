"""Activation offload to NVMe (after SSDTrain): ``hauler.offload``.

    from hauler.offload import offload
    with offload("/nvme/acts") as off:       # or offload(store=TensorStore(...))
        loss = model(x).sum()
    loss.backward()

Inside the context, every tensor autograd saves for backward goes through
``torch.autograd.graph.saved_tensors_hooks``: parameters (and views of them) and tensors under
``min_bytes`` stay in memory; the others are written to a :class:`hauler.io.TensorStore`
asynchronously, and the in-memory copy is dropped once its write is durable. A tensor saved by
several operations is stored once. During backward the saved tensors are read back in the
reverse order of saving, ``prefetch`` ahead of the one autograd asks for; the last ``keep_last``
tensors saved keep their memory even once written (backward needs them first: reading them back
would stall its start). ``budget`` (bytes) offloads only what does not fit: from the second step
on, the tensors saved first go to disk until the rest fits in ``budget``, and the rest stays in
memory without I/O. The store made for a
directory skips fsync and checksums (scratch data: ``verify=True`` turns CRC-32C checks on; pass
your own ``store`` for other choices) and keeps up to ``recycle`` bytes of freed read-back
tensors for later reads of the same size (no page faults and kernel zeroing of fresh memory on
every read), and keeps up to ``keep_files`` bytes of deleted entries' files for the next step's
writes to overwrite (no block allocation). ``inline=True`` makes that store
submit its I/O from the thread running forward/backward (TensorStore's inline path: no worker
wake-ups, but the submission work lands on that thread; see the README). A tensor whose write
has not finished yet is handed back from memory instead of being read. Entries are deleted when
autograd frees the saved tensors (after backward).

CUDA tensors take the same way with the device steps in between (SSDTrain's path): with cuFile
(GPUDirect Storage) loaded and registering files of the directory, device memory is written and
read in place; otherwise each tensor is copied to pinned host memory on a side stream (the
forward pass does not wait: a thread of the offload's waits for the copy's event, then writes),
and read back ahead of backward into pinned memory, copied to the device on a side stream that
the stream consuming it waits for (an event, not a host wait). The device memory is let go once
its copy is on the host (or, with cuFile, on disk). Which path runs is announced once per
process (an ``OffloadPathNotice`` warning) and named in ``off.stats["path"]``.

A failed write (ENOSPC, EIO, EFBIG, ...) never passes silently: with ``on_error="raise"`` (the
default) it raises ``HaulerIOError`` in the step that needs the tensor (the next save, the end of
the ``with`` block, ``wait_writes()`` or the backward reading it, whichever comes first; the
tensor itself stays in memory); with ``on_error="keep"`` the tensor stays in memory, one warning
says so and ``stats["failed_writes"]`` counts them. ``bytes_written`` counts bytes written.

Given a directory, offload writes in a subdirectory of its own, ``offload-<pid>-<random>``
(``off.directory``; 0700, files 0600, locked like any TensorStore), removed by ``close()``, when
the Offload is garbage-collected, and at interpreter exit: ranks or processes given the same
directory never see each other's activations. Subdirectories whose process is gone (killed) are
removed by the next offload made in the same directory. Without a directory the parent is
``<tmp>/hauler-offload-<uid>``.

``off.stats`` counts what happened: saved, skipped (parameters / small / other devices), shared,
kept in memory by the budget, bytes written, failed writes, read back, hits in memory, and the
time unpack waited for reads.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import os
import queue
import re
import shutil
import stat
import tempfile
import threading
import time
import warnings
import weakref
from typing import Any, Dict, List, Optional, Tuple

from .errors import Closed

__all__ = ["offload", "Offload", "OffloadPathNotice"]

_ids = itertools.count()


class OffloadPathNotice(UserWarning):
    """Says once per process which path CUDA activations take (KvikIO's compatibility-mode
    banner): a fallback's step times must never pass for the fast path's."""


_announced: set = set()
_announce_lock = threading.Lock()


def _announce(what: str) -> None:
    with _announce_lock:
        if what in _announced:
            return
        _announced.add(what)
    warnings.warn(what, OffloadPathNotice, stacklevel=4)


class _CudaDevice:
    """The device steps on a real GPU, through torch.cuda: copies on side streams of their own,
    ordered against the computation by events. The tests put a host double of this interface
    (tests/support/offload_device.py) in front of it in ``_DEVICES``; everything above it is the
    same code on both."""

    name = "cuda"

    def __init__(self) -> None:
        self._streams: Dict[Tuple[int, str], Any] = {}
        self._lock = threading.Lock()

    def owns(self, t: Any) -> bool:
        return bool(t.is_cuda)

    def _side(self, device: Any, kind: str) -> Any:
        import torch
        index = device.index if device.index is not None else torch.cuda.current_device()
        with self._lock:
            s = self._streams.get((index, kind))
            if s is None:
                s = self._streams[(index, kind)] = torch.cuda.Stream(device=index)
        return s

    def direct_io(self, directory: str) -> Tuple[bool, str]:
        """Whether hauler.io moves device memory with cuFile for files of this directory, and why."""
        from . import io
        status = io.cufile_status()
        if status != "available":
            return False, f"cuFile {status}"
        return _cufile_registers(directory)

    def ready(self, t: Any) -> Any:
        """An event after the work queued so far on the stream producing t."""
        import torch
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(t.device))
        return ev

    def to_host(self, t: Any) -> Tuple[Any, Any]:
        """Starts copying t into new pinned host memory on the device-to-host stream, after the
        work that produced it; returns the host tensor and the copy's event."""
        import torch
        side = self._side(t.device, "d2h")
        side.wait_stream(torch.cuda.current_stream(t.device))
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        with torch.cuda.stream(side):
            host.copy_(t, non_blocking=True)
        t.record_stream(side)   # the allocator keeps t's memory until the copy has read it
        ev = torch.cuda.Event()
        ev.record(side)
        return host, ev

    def host_buffer(self, shape: Tuple[int, ...], dtype: Any) -> Any:
        import torch
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def empty(self, shape: Tuple[int, ...], dtype: Any, device: Any) -> Any:
        import torch
        with torch.cuda.stream(self._side(device, "h2d")):
            return torch.empty(shape, dtype=dtype, device=device)

    def to_device(self, host: Any, device: Any) -> Tuple[Any, Any]:
        """Starts copying pinned host memory to a new device tensor on the host-to-device stream."""
        import torch
        side = self._side(device, "h2d")
        with torch.cuda.stream(side):
            d = torch.empty(host.shape, dtype=host.dtype, device=device)
            d.copy_(host, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record(side)
        return d, ev

    def filled(self, d: Any) -> Any:
        """An event for a tensor a synchronous (cuFile) read has filled already."""
        import torch
        ev = torch.cuda.Event()
        ev.record(self._side(d.device, "h2d"))
        return ev

    def wait(self, ev: Any) -> None:
        ev.synchronize()

    def consume(self, d: Any, ev: Any) -> None:
        """The stream running backward waits for d's copy (on the device: no host wait), and the
        allocator keeps d's memory until that stream is done with it."""
        import torch
        cur = torch.cuda.current_stream(d.device)
        cur.wait_event(ev)
        d.record_stream(cur)


_DEVICES: List[Any] = [_CudaDevice()]


def _device_for(t: Any) -> Any:
    for dev in _DEVICES:
        if dev.owns(t):
            return dev
    return None


def _cufile_registers(directory: str) -> Tuple[bool, str]:
    """Whether cuFile registers an O_DIRECT file of this directory (file systems without
    GPUDirect Storage support refuse, and hauler.io would then bounce every request itself)."""
    import ctypes
    lib = None
    for name in ("libcufile.so.0", "libcufile.so"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return False, "cuFile: libcufile not found"

    class Err(ctypes.Structure):
        _fields_ = [("err", ctypes.c_int), ("cu_err", ctypes.c_int)]

    class Descr(ctypes.Structure):   # CUfileDescr_t: type, union {int fd; void *handle}, fs_ops
        _fields_ = [("type", ctypes.c_int), ("handle", ctypes.c_void_p), ("fs_ops", ctypes.c_void_p)]

    lib.cuFileDriverOpen.restype = Err
    lib.cuFileHandleRegister.restype = Err
    lib.cuFileHandleRegister.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(Descr)]
    lib.cuFileHandleDeregister.argtypes = [ctypes.c_void_p]
    rc = lib.cuFileDriverOpen()
    if rc.err != 0:
        return False, f"cuFileDriverOpen failed (error {rc.err})"
    probe = os.path.join(directory, f".cufile-probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_DIRECT", 0), 0o600)
    except OSError as e:
        return False, f"cuFile: cannot open an O_DIRECT file in {directory} ({e.strerror})"
    try:
        handle = ctypes.c_void_p()
        rc = lib.cuFileHandleRegister(ctypes.byref(handle), ctypes.byref(Descr(1, fd, None)))
        if rc.err != 0:
            return False, f"cuFile refuses files of {directory} (cuFileHandleRegister error {rc.err})"
        lib.cuFileHandleDeregister(handle)
        return True, "cuFile (GPUDirect Storage)"
    finally:
        os.close(fd)
        os.unlink(probe)


class _Handle:
    __slots__ = ("key", "tensor", "host", "put", "get", "index", "owner", "ident", "source", "version", "written",
                 "failed", "nbytes", "dev", "direct", "copied", "sput", "shape", "dtype", "device", "__weakref__")

    def __init__(self, key: str, tensor: Any, index: int, owner: "Offload", dev: Any):
        self.key = key
        self.tensor = tensor      # in memory (host, or device) until written (keep_last: kept)
        self.host = None          # a device tensor's pinned host copy, until written
        self.put: concurrent.futures.Future = concurrent.futures.Future()   # the write: done, or failed
        self.get = None           # a prefetch in flight
        self.sput = None          # the store's future of the write (waiting on it drives inline I/O)
        self.index = index
        self.owner = owner
        self.written = False      # durable on disk (the memory may still be kept: keep_last)
        self.failed: Optional[BaseException] = None
        self.nbytes = tensor.numel() * tensor.element_size()
        self.dev = dev            # None: a host tensor
        self.direct = False       # device memory to the file and back through cuFile
        self.copied = False       # a device tensor's host copy is complete
        self.shape, self.dtype, self.device = tuple(tensor.shape), tensor.dtype, tensor.device


class Offload:
    """The context manager returned by :func:`offload`."""

    def __init__(self, directory: Optional[str] = None, store: Any = None, min_bytes: int = 1 << 20,
                 prefetch: int = 2, threads: int = 4, verify: bool = False, recycle: int = 64 << 20,
                 keep_files: int = 4 << 30, keep_last: int = 2, inline: bool = False, on_error: str = "raise",
                 budget: Optional[int] = None):
        import torch  # noqa: F401 - fail early without torch
        from . import _buffers
        from .errors import InvalidArgument
        from .tensorstore import TensorStore
        # every number checked before anything is made (a negative one used to be clamped silently)
        min_bytes = _buffers.as_int("min_bytes", min_bytes, 0)
        prefetch = _buffers.as_int("prefetch", prefetch, 0)
        threads = _buffers.as_int("threads", threads, 1)
        recycle = _buffers.as_int("recycle", recycle, 0)
        keep_files = _buffers.as_int("keep_files", keep_files, 0)
        keep_last = _buffers.as_int("keep_last", keep_last, 0)
        if budget is not None:
            budget = _buffers.as_int("budget", budget, 0)
        if on_error not in ("raise", "keep"):
            raise InvalidArgument(f"on_error must be 'raise' or 'keep', got {on_error!r}")
        if store is not None and not isinstance(store, TensorStore):
            raise InvalidArgument(f"store must be a hauler TensorStore, got {type(store).__name__}")
        if store is not None and directory is not None:
            raise InvalidArgument("give a directory or a store, not both")
        # settings of the store offload makes: with the caller's store they would be ignored
        mine = {"threads": (threads, 4), "verify": (verify, False), "recycle": (recycle, 64 << 20),
                "keep_files": (keep_files, 4 << 30), "inline": (inline, False)}
        ignored = [k for k, (v, dflt) in mine.items() if v != dflt]
        if store is not None and ignored:
            raise InvalidArgument(f"{', '.join(ignored)} configure the store offload makes for a directory; "
                                  f"with store=, give them to that TensorStore")
        tmp = None
        own_dir: Optional[str] = None
        if store is None:
            if directory is None:
                parent = _private_tmp()
                if parent is None:   # someone else's directory there: a fresh one, not reusable
                    tmp = tempfile.mkdtemp(prefix="hauler-offload-")
                    directory = tmp
            if tmp is None:
                from ._store_lock import own_subdirectory
                own_dir = directory = own_subdirectory(os.fspath(directory) if directory is not None else parent)
            try:
                store = TensorStore(directory, threads=threads, sync=False, checksum=verify, recycle=recycle,
                                    keep_files=keep_files, inline=inline)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
        self.store = store
        self.directory = store.directory
        self.min_bytes = min_bytes
        self.prefetch = prefetch
        self.keep_last = keep_last
        self.on_error = on_error
        self.budget = budget
        self._lock = threading.Lock()
        self._handles: List["weakref.ref"] = []  # pack order, from index self._base on
        self._base = 0
        self._shared: Dict[Any, "weakref.ref"] = {}
        self._hooks = None
        self._run = next(_ids)
        self._routes: Dict[str, Tuple[bool, str]] = {}   # device name -> (direct, what)
        self._writer: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._reader: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._deleter = _Deleter()
        # the executors, for the finalizer (which must not hold self); the deleter goes last
        self._pools: List[Any] = [self._deleter]
        self._failure: Optional[Tuple[str, int, BaseException]] = None   # a failed write not reported yet
        self._warned = False
        self._step_bytes = 0          # bytes eligible for offload saved in this step
        self._prev_step_bytes: Optional[int] = None
        self._step_offloaded = 0
        self._paths: set = set()
        self._store_puts: set = set()   # store writes in flight (wait_writes waits for them all)
        self._put_counted = threading.Condition(self._lock)   # one left _store_puts: _written counted it
        self.stats: Dict[str, Any] = {
            "saved": 0, "skipped_param": 0, "skipped_small": 0, "skipped_device": 0, "shared": 0, "kept_budget": 0,
            "bytes_written": 0, "failed_writes": 0, "bytes_failed": 0, "bytes_dropped": 0, "bytes_read": 0, "in_memory_hits": 0,
            "wait_s": 0.0, "path": None}
        # the files go with the Offload: close(), garbage collection, interpreter exit (the store
        # is closed first: its threads may still be writing into the directory)
        self._finalizer = weakref.finalize(self, _cleanup, self.store, own_dir or tmp, self._pools)

    # -- hooks
    def _pack(self, t: Any) -> Any:
        import torch
        self._surface()
        if isinstance(t, torch.nn.Parameter) or (t._base is not None and isinstance(t._base, torch.nn.Parameter)):
            self.stats["skipped_param"] += 1
            return t
        if t.layout != torch.strided or t.is_sparse:
            self.stats["skipped_small"] += 1
            return t
        dev = _device_for(t)
        if dev is None and t.device.type != "cpu":
            self.stats["skipped_device"] += 1     # mps, xpu, meta, ...: no path to a file from there
            return t
        nbytes = t.numel() * t.element_size()
        if nbytes < self.min_bytes:
            self.stats["skipped_small"] += 1
            return t
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
                 t.dtype, t._version, t.device)
        direct = self._route(dev) if dev is not None else False
        with self._lock:
            ref = self._shared.get(ident)
            h = ref() if ref is not None else None
            if h is not None:
                self.stats["shared"] += 1
                return h
            self._step_bytes += nbytes
            quota = None if self.budget is None or self._prev_step_bytes is None else \
                self._prev_step_bytes - self.budget
            if quota is not None and self._step_offloaded >= quota:
                self.stats["kept_budget"] += 1    # the rest of this step fits in the budget
                return t
            self._step_offloaded += nbytes
            if dev is None and "host" not in self._paths:
                self._paths.add("host")
                self.stats["path"] = "+".join(sorted(self._paths))
            index = self._base + len(self._handles)
            key = f"act-{self._run}-{index}"
            # cuFile writes one contiguous range of device memory: a strided view goes as a copy
            h = _Handle(key, t.detach().contiguous() if direct else t.detach(), index, self, dev)
            h.direct = direct
            h.ident = ident
            h.source = weakref.ref(t)   # to notice in-place changes after saving, as autograd does
            h.version = t._version
            self._handles.append(weakref.ref(h))
            self._shared[ident] = weakref.ref(h)
            if direct:
                weakref.finalize(h, self._deleter.later, _unlink, self._direct_path(key))
            else:
                weakref.finalize(h, self._deleter.later, _discard, self.store, key)
            # the handle keep_last places back is no longer among the last: it lets go of what
            # it no longer needs
            old = self._handle(index - self.keep_last)
            if old is not None:
                self._trim(old)
        self.stats["saved"] += 1
        href = weakref.ref(h)
        if dev is None:
            self._submit_put(h, h.tensor)
        elif direct:
            self._writer.submit(self._write_device, href, dev.ready(t), h.nbytes)
        else:
            h.host, ev = dev.to_host(t)
            self._writer.submit(self._write_device, href, ev, h.nbytes)
        return h

    def _route(self, dev: Any) -> bool:
        """Whether dev's tensors go to the files in place (cuFile), decided and announced once."""
        got = self._routes.get(dev.name)
        if got is None:
            direct, why = dev.direct_io(self.directory)
            if direct:
                os.makedirs(self._direct_path(""), mode=0o700, exist_ok=True)
                what = f"{why}: device memory to the files and back in place"
            else:
                what = (f"pinned host bounce buffers, copies on side streams ({why}); "
                        f"each offloaded byte crosses the host link twice")
            got = self._routes[dev.name] = (direct, what)
            with self._lock:
                if self._writer is None:
                    self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hauler-offload-w")
                    self._reader = concurrent.futures.ThreadPoolExecutor(
                        max(1, self.prefetch), thread_name_prefix="hauler-offload-r")
                    self._pools += [self._writer, self._reader]
            self._paths.add("cufile" if direct else "bounce")
            self.stats["path"] = "+".join(sorted(self._paths))
            _announce(f"hauler.offload: {dev.name} activations go to NVMe through {what}")
        return got[0]

    def _direct_path(self, key: str) -> str:
        return os.path.join(self.directory, "direct", key)

    # -- writes
    def _submit_put(self, h: _Handle, data: Any) -> None:
        try:
            fut = self.store.put(h.key, data)
        except Exception as e:  # noqa: BLE001 - a refused put is a failed write like any other
            self._written(h, e)
            return
        h.sput = fut
        href = weakref.ref(h)
        with self._lock:
            self._store_puts.add(fut)
        fut.add_done_callback(lambda f, key=h.key, n=h.nbytes: self._written(href(), f.exception(), key, n, f))

    def _write_device(self, href: "weakref.ref", ev: Any, nbytes: int) -> None:
        """On the writer thread: waits for the event after which the bytes are in place, then
        writes device memory through cuFile, or hands the host copy to the store."""
        from . import io
        h = href()
        if h is None:   # autograd freed it already (e.g. a forward pass that raised): nothing to write
            with self._lock:
                self.stats["bytes_dropped"] += nbytes
            return
        try:
            h.dev.wait(ev)
            if h.direct:
                with io.File(self._direct_path(h.key), "w") as f:
                    f.write(h.tensor)
        except Exception as e:  # noqa: BLE001 - a failed copy or write: reported like any failed write
            self._written(h, e)
            return
        if h.direct:
            self._written(h, None)
            return
        with self._lock:   # on the host now: the device memory goes, unless backward needs it first
            h.copied = True
            self._trim(h)
            host = h.host
        self._submit_put(h, host)

    def _written(self, h: Optional[_Handle], exc: Optional[BaseException], key: str = "", nbytes: int = 0,
                 store_put: Any = None) -> None:
        """A write ended (h None: autograd freed the tensor meanwhile; key and nbytes say which)."""
        if h is not None:
            key, nbytes = h.key, h.nbytes
        with self._lock:
            if store_put is not None:
                self._store_puts.discard(store_put)
                self._put_counted.notify_all()
            if exc is None:
                self.stats["bytes_written"] += nbytes
                if h is not None:
                    h.written = True
                    self._trim(h)
            else:   # the memory stays: nothing is lost, the error is reported by _surface
                self.stats["failed_writes"] += 1
                self.stats["bytes_failed"] += nbytes
                if self._failure is None:
                    self._failure = (key, nbytes, exc)
                if h is not None:
                    h.failed = exc
        if h is not None:
            if exc is None:
                h.put.set_result(None)
            else:
                h.put.set_exception(exc)

    def _surface(self) -> None:
        """Reports a failed write on the thread running the step: raises it (on_error="raise"),
        or warns once (on_error="keep")."""
        if self._failure is None:
            return
        with self._lock:
            failure, self._failure = self._failure, None
        if failure is None:
            return
        if self.on_error == "raise":
            raise self._error(*failure)
        if not self._warned:
            self._warned = True
            warnings.warn(f"hauler.offload: a saved tensor of {failure[1]} bytes could not be written to "
                          f"{self.directory} ({failure[2]}); it stays in memory (on_error='keep'), as will "
                          f"others that fail: stats['failed_writes'] counts them", ResourceWarning, stacklevel=3)

    def _error(self, key: str, nbytes: int, exc: BaseException) -> BaseException:
        from .errors import HaulerIOError
        e = HaulerIOError(f"hauler.offload: writing a saved tensor ({nbytes} bytes, {key}) to {self.directory} "
                          f"failed: {exc}; the tensor is still in memory (on_error='keep' trains on with it "
                          f"there)")
        e.errno = _errno_of(exc)
        e.__cause__ = exc
        return e

    # -- memory
    def _handle(self, index: int) -> Optional[_Handle]:
        """The live handle saved at index, or None (under self._lock)."""
        i = index - self._base
        return self._handles[i]() if 0 <= i < len(self._handles) else None

    def _among_last(self, h: _Handle) -> bool:
        return h.index >= self._base + len(self._handles) - self.keep_last

    def _trim(self, h: _Handle) -> None:
        """Lets go of the memory h no longer needs (under self._lock): all of it once written and
        not among the last keep_last; a device tensor's host copy once written; its device memory
        once the host copy is made, unless among the last keep_last. A failed write keeps all."""
        if h.failed is not None:
            return
        last = self._among_last(h)
        if h.written:
            h.host = None
        if (h.written or h.copied) and not last:
            self._drop_tensor(h)

    def _drop_tensor(self, h: _Handle) -> None:
        """Drops h's tensor (under self._lock). Its address may be reused from now on, so the
        handle no longer stands for "the tensor at this address"."""
        ref = self._shared.get(h.ident)
        if ref is not None and ref() is h:
            del self._shared[h.ident]
        h.tensor = None

    # -- reads
    def _unpack(self, h: Any) -> Any:
        if not isinstance(h, _Handle):
            return h
        src = h.source()
        if src is not None and src._version != h.version:
            raise RuntimeError(
                f"hauler.offload: a tensor saved for backward (shape {tuple(src.shape)}) was modified by an "
                f"in-place operation after it was saved (version {h.version} -> {src._version}); "
                f"the stored copy may hold either value")
        self._surface()
        if h.failed is not None and self.on_error == "raise":
            raise self._error(h.key, h.nbytes, h.failed)
        t, host = h.tensor, h.host
        if t is not None:
            self.stats["in_memory_hits"] += 1
            self._prefetch_before(h.index)
            return t
        if host is not None:   # a device tensor whose host copy is still here (write pending or failed)
            self.stats["in_memory_hits"] += 1
            d, ev = h.dev.to_device(host, h.device)
            self._prefetch_before(h.index)
            h.dev.consume(d, ev)
            return d
        fut = h.get
        h.get = None
        t0 = time.perf_counter()
        if fut is None:
            fut = self._start_read(h)
        self._prefetch_before(h.index)
        t = fut.result()
        if h.dev is not None:
            t, ev = t
            h.dev.consume(t, ev)
        self.stats["wait_s"] += time.perf_counter() - t0
        self.stats["bytes_read"] += h.nbytes
        return t

    def _start_read(self, h: _Handle) -> Any:
        if h.dev is None:
            return self.store.get(h.key)
        return self._reader.submit(self._read_device, h.dev, h.key, h.direct, h.shape, h.dtype, h.device)

    def _read_device(self, dev: Any, key: str, direct: bool, shape: Tuple[int, ...], dtype: Any,
                     device: Any) -> Tuple[Any, Any]:
        """Reads a device tensor back: into device memory in place (cuFile), or into pinned host
        memory and from there to the device on the host-to-device stream. Returns the tensor and
        the event the consuming stream waits for."""
        if direct:
            from . import io
            d = dev.empty(shape, dtype, device)
            with io.File(self._direct_path(key)) as f:
                f.read_into(d)
            return d, dev.filled(d)
        host = dev.host_buffer(shape, dtype)
        self.store.get(key, out=host).result()
        return dev.to_device(host, device)

    def _prefetch_before(self, index: int) -> None:
        """Starts reads of the `prefetch` handles saved just before `index` (backward goes in
        reverse) that are not in memory or in flight yet. The window is those handles, not the next
        `prefetch` unread ones: walking past reads in flight would start two reads per tensor used
        and keep every read-ahead tensor alive until backward reaches it."""
        if not self.prefetch:
            return
        with self._lock:
            todo = []
            seen = 0
            i = index - 1
            while i >= self._base and seen < self.prefetch:
                h = self._handle(i)
                i -= 1
                if h is None:
                    continue   # freed (its node already ran): not part of the window
                seen += 1
                if h.tensor is None and h.host is None and h.get is None and h.failed is None:
                    todo.append(h)
        for h in todo:
            h.get = self._start_read(h)

    # -- context
    def __enter__(self) -> "Offload":
        import torch
        self._surface()
        with self._lock:   # handles of earlier steps that autograd freed: forgotten (indices go on)
            dead = next((i for i, r in enumerate(self._handles) if r() is not None), len(self._handles))
            del self._handles[:dead]
            self._base += dead
            if self._step_bytes:
                self._prev_step_bytes = self._step_bytes
            self._step_bytes = self._step_offloaded = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None
        if exc[0] is None:
            self._surface()

    def wait_writes(self) -> None:
        """Waits until every pending write is durable or failed (a failure: raised with
        on_error="raise", otherwise the tensor stays in memory and is used from there)."""
        with self._lock:
            hs = [r() for r in self._handles]
        for h in hs:
            if h is not None:
                if h.sput is not None:
                    h.sput.exception()
                concurrent.futures.wait([h.put])
        # and the writes of tensors autograd freed meanwhile: the device jobs queued on the one
        # writer thread before now, then the store writes still in flight
        if self._writer is not None:
            try:
                self._writer.submit(lambda: None).result()
            except RuntimeError:   # shut down: nothing queued remains
                pass
        with self._lock:
            puts = set(self._store_puts)
        for f in puts:
            f.exception()   # waiting on the store's future drives inline I/O
        with self._put_counted:   # its done callback, which counts the bytes, may still be running
            self._put_counted.wait_for(lambda: not (puts & self._store_puts))
        self._surface()

    def close(self) -> None:
        """Closes the store and removes this offload's files (also done when the Offload is
        garbage-collected, and at interpreter exit)."""
        self._finalizer()


def _errno_of(exc: BaseException) -> Optional[int]:
    """The errno of a failed write: the exception's own, else the one hauler.io's message names
    ("... failed: No space left on device (ENOSPC) ...")."""
    import errno
    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        return code
    m = re.search(r"\((E[A-Z0-9]+)\)", str(exc))
    return getattr(errno, m.group(1), None) if m else None


def _cleanup(store: Any, directory: Optional[str], pools: List[Any]) -> None:
    mine = threading.current_thread().name.startswith("hauler-offload-")
    for pool in reversed(pools):   # a write still queued there would put into a closed store
        pool.shutdown(wait=not mine)
    try:
        store.close()
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def _private_tmp() -> Optional[str]:
    """<tmp>/hauler-offload-<uid>, made 0700 (so that a crashed run's files are found again by
    the next one), or None when something not ours sits there."""
    path = os.path.join(tempfile.gettempdir(), f"hauler-offload-{os.geteuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return None
    return path


def _discard(store: Any, key: str) -> None:
    # autograd freed a saved tensor: the unlink goes to the store's workers (a stopped or closed
    # store, e.g. at interpreter exit, deletes here)
    try:
        store.discard_later(key)
    except (AttributeError, RuntimeError, Closed):
        try:
            store._discard(key)
        except Exception:  # noqa: BLE001 - at interpreter exit
            pass


class _Deleter:
    """Deletes what autograd frees (store entries, the cuFile route's files) off the backward pass,
    on a thread of its own. later() runs in weakref finalizers, which the garbage collector may
    start inside any allocation, one made under an executor's lock (submit) included: it only puts
    into a SimpleQueue (reentrant) and never takes a lock. After shutdown it deletes in place. A
    file is complete by then: a write holds its handle, so the finalizer cannot run before it ends."""

    def __init__(self) -> None:
        self._q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="hauler-offload-delete", daemon=True)
        self._thread.start()

    def later(self, fn: Any, *args: Any) -> None:
        if self._stopped:
            fn(*args)
        else:
            self._q.put((fn, args))

    def flush(self) -> None:
        """Returns once every deletion asked for before is done."""
        done = threading.Event()
        self._q.put((done.set, ()))
        done.wait()

    def shutdown(self, wait: bool = True) -> None:
        self._stopped = True
        self._q.put(None)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a deletion that cannot run: the directory goes at close
                pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def offload(directory: Optional[str] = None, store: Any = None, min_bytes: int = 1 << 20,
            prefetch: int = 2, threads: int = 4, verify: bool = False, recycle: int = 64 << 20,
            keep_files: int = 4 << 30, keep_last: int = 2, inline: bool = False, on_error: str = "raise",
            budget: Optional[int] = None) -> Offload:
    """A context offloading saved activations to ``directory`` (default: a temporary directory)
    or to ``store`` (a TensorStore); see the module doc."""
    return Offload(directory, store, min_bytes, prefetch, threads, verify, recycle, keep_files, keep_last, inline,
                   on_error, budget)


from .offload_optim import OptimizerOffload  # noqa: E402,F401 - Adam/AdamW state on NVMe
