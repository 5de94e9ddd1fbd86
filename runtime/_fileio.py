"""hauler.io's files, futures and backend queries (re-exported by hauler.io, whose doc describes
them). TensorStore builds on this module; hauler.io re-exports both, so neither imports the other.
"""
from __future__ import annotations

import atexit
import collections
import errno
import concurrent.futures
import os
import stat
import threading
from typing import Any, Optional

from . import _buffers
from .errors import HaulerIOError, InvalidArgument, NoDevice

__all__ = ["File", "Future", "empty", "backend", "backend_description", "backend_is_fallback",
           "registration", "registration_failed", "counters", "cufile_status", "alignment"]


def _core():
    from . import _require_core
    return _require_core()


def backend() -> str:
    """The I/O backend in use: "io_uring" or "threads"."""
    return str(_core().io_backend())


def backend_description() -> str:
    """The backend in words, with the reason when it is a fallback."""
    return str(_core().io_backend_description())


def backend_is_fallback() -> bool:
    """True when io_uring was wanted (HAULER_IO_BACKEND=auto) but could not run here."""
    return bool(_core().io_backend_is_fallback())


def registration() -> str:
    """What io_uring registration (HAULER_IO_REGISTER) did, in words: the bounce arena's and the
    files' state; "FALLBACK: ... NOT registered: <why>" when a registration failed (plain ops run)."""
    return str(_core().io_registration_description())


def registration_failed() -> bool:
    """True when a registration was wanted and failed (the plain io_uring ops ran instead)."""
    return bool(_core().io_registration_failed())


def counters() -> dict:
    """Process-wide counts: io_uring ops submitted, of them fixed_buffer_ops (read/write_fixed on
    the registered bounce arena) and fixed_file_ops (on a registered file); waits (times an
    io_uring thread slept for completions: once per request whose tasks all fit the queue);
    bounced_bytes (any backend): bytes that went through bounce buffers (whole 4 KiB blocks)."""
    return dict(_core().io_counters())


def cufile_status() -> str:
    """Whether cuFile (GPUDirect Storage) is loaded, or why not."""
    return str(_core().io_cufile_status())


def alignment() -> int:
    """The O_DIRECT alignment of buffers, offsets and sizes (bytes)."""
    return int(_core().io_alignment())


def empty(shape: Any, dtype: Any = "uint8", like: str = "numpy") -> Any:
    """An uninitialized array (``like="numpy"``) or CPU tensor (``like="torch"``) whose memory
    starts on a page (4 KiB) boundary, so O_DIRECT reads and writes of it at aligned offsets use
    it in place (no bounce buffers). ``dtype``: a numpy dtype, or a torch dtype with torch."""
    import numpy as np
    from ._store_format import aligned_empty
    from .errors import Overflow
    dims = _buffers.as_ints("shape", (shape,) if isinstance(shape, int) or hasattr(shape, "__index__") else shape)
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"shape must have no negative dimension, got {tuple(dims)}")
    if like not in ("numpy", "torch"):
        raise InvalidArgument(f'like must be "numpy" or "torch", got {like!r}')
    if like == "torch":
        import torch
        tdtype = dtype if isinstance(dtype, torch.dtype) else torch.from_numpy(np.empty(0, _np_dtype(dtype))).dtype
        itemsize = tdtype.itemsize
    else:
        ndtype = _np_dtype(dtype)
        itemsize = ndtype.itemsize
    nbytes = itemsize
    for d in dims:
        nbytes *= d
    if nbytes >= 1 << 63:
        raise Overflow(f"shape {tuple(dims)} of {itemsize}-byte items is {nbytes} bytes: beyond 64 bits")
    raw = aligned_empty(max(nbytes, 1), 0, alignment())[:nbytes]  # an empty slice keeps the aligned address
    if like == "torch":
        return torch.from_numpy(raw).view(tdtype).reshape(dims)
    return raw.view(ndtype).reshape(dims)


def _np_dtype(dtype: Any) -> Any:
    import numpy as np
    try:
        return np.dtype(dtype)
    except TypeError as e:
        raise InvalidArgument(f"dtype {dtype!r} is not a numpy dtype: {e}") from None


class Future(concurrent.futures.Future):
    """The result of :meth:`File.pread` / :meth:`File.pwrite`: a ``concurrent.futures.Future``
    (``concurrent.futures.wait``, ``as_completed`` and ``add_done_callback`` work) whose
    ``result(timeout=None)`` gives the byte count or raises the request's error; ``cancel()``
    succeeds only before the request started. The buffer stays referenced until the request
    finished. A thread of hauler's completes futures nobody waits on (for callbacks and waiters);
    ``result()`` and ``done()`` complete it themselves when the request has finished."""

    def __init__(self, core_future: Any, obj: Any = None):
        super().__init__()
        self._f = core_future
        self._obj = obj
        self._settle_lock = threading.Lock()
        _completer.track(self)

    def _settle(self) -> None:
        """Moves the core future's outcome into this one, once (it must have finished)."""
        with self._settle_lock:
            if super().done():
                return
            try:
                value = self._f.get()
            except BaseException as e:  # noqa: BLE001 - carried to result()
                self.set_exception(e)
            else:
                self.set_result(value)
            finally:
                self._f.release_buffer()
                self._obj = None

    def done(self) -> bool:
        if not super().done() and self._f.done():
            if self._f.cancelled():
                super().cancel()
            else:
                self._settle()
        return super().done()

    def running(self) -> bool:
        return not super().done() and bool(self._f.running())

    def cancel(self) -> bool:
        if super().cancelled():
            return True
        if super().done() or not self._f.cancel():
            return False
        with self._settle_lock:
            self._obj = None
            return super().cancel()

    def _wait_core(self, timeout: Optional[float]) -> None:
        if not super().done():
            if not self._f.wait(-1.0 if timeout is None else max(float(timeout), 0.0)):
                raise concurrent.futures.TimeoutError(f"the I/O request did not finish within {timeout} s")
            self.done()

    def result(self, timeout: Optional[float] = None) -> Any:
        self._wait_core(timeout)
        return super().result(0)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        self._wait_core(timeout)
        return super().exception(0)

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "done" if self.done() else "pending"
        return f"<hauler.io.Future {state}>"


class _Completer:
    """Completes hauler.io futures that nobody waits on, so waiters and callbacks run: one thread,
    started at the first request, that sleeps in the oldest pending request (GIL released) and
    then sweeps every pending one (a request finishing out of order is seen within POLL_S)."""

    POLL_S = 0.02

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._pending: "collections.deque[Future]" = collections.deque()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    def track(self, fut: Future) -> None:
        with self._cv:
            self._pending.append(fut)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hauler-io-futures", daemon=True)
                self._thread.start()
            self._cv.notify()

    def stop(self) -> None:
        """At exit, before the interpreter finalizes: a daemon thread that retakes the GIL after
        the core's wait then would be unwound through pybind11's frames (std::terminate)."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(1.0)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                first = self._pending[0]
            first._f.wait(self.POLL_S)
            with self._cv:
                pending = list(self._pending)
            finished = [f for f in pending if f.done()]  # done() settles a finished one
            if finished:
                gone = set(map(id, finished))
                with self._cv:
                    self._pending = collections.deque(f for f in self._pending if id(f) not in gone)

    def _after_fork(self) -> None:
        # the thread is gone in a child; futures the parent submitted settle there with an error
        self._cv = threading.Condition()
        self._thread = None
        pending, self._pending = self._pending, collections.deque()
        for fut in pending:
            self.track(fut)


_completer = _Completer()
os.register_at_fork(after_in_child=_completer._after_fork)
atexit.register(_completer.stop)


def _check_int(name: str, v: Any, minimum: int = 0) -> int:
    return _buffers.as_int(name, v, minimum)


def _check_size(size: Any) -> Optional[int]:
    """None (the whole buffer) or an exact int in [0, 2**63): never a float or a wider int."""
    return None if size is None else _check_int("size", size)


def _check_offsets(name: str, values: Any) -> list:
    out = _buffers.as_ints(name, values)
    for i, v in enumerate(out):
        if v < 0:
            raise InvalidArgument(f"{name}[{i}] must be >= 0, got {v}")
    return out


class File:
    """A file opened for hauler's I/O engine. ``mode``: "r", "r+", "w" (create/truncate), "w+",
    "x" (create, fail if it exists), "x+". ``direct``: None = O_DIRECT where the file system
    allows it (HAULER_IO_DIRECT), True = require it, False = buffered I/O.

    The handle is closed by ``close()``, at the end of a ``with`` block or when collected; closing
    waits for requests in flight, and later calls raise HaulerIOError (EBADF)."""

    def __init__(self, path: Any, mode: str = "r", direct: Optional[bool] = None):
        if not isinstance(mode, str):
            raise InvalidArgument(f"mode must be a string, got {type(mode).__name__}")
        self._path = os.fspath(path)
        d = -1 if direct is None else (1 if direct else 0)
        self._f = _core().IOFile(self._path, mode, d)
        if stat.S_ISDIR(os.fstat(self._f.fileno()).st_mode):  # refused here, not at the first read
            self._f.close()
            raise HaulerIOError(errno.EISDIR, f"EISDIR: {self._path} is a directory, not a file", self._path)

    # -- properties
    @property
    def path(self) -> str:
        return self._path

    @property
    def mode(self) -> str:
        return str(self._f.mode)

    @property
    def direct(self) -> bool:
        """True when the file is open with O_DIRECT."""
        return bool(self._f.direct)

    @property
    def direct_reason(self) -> str:
        """Why the handle is not using O_DIRECT ("" when it is)."""
        return str(self._f.direct_reason)

    @property
    def closed(self) -> bool:
        return bool(self._f.closed)

    def fileno(self) -> int:
        return int(self._f.fileno())

    def size(self) -> int:
        return int(self._f.size())

    # -- life cycle
    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "File":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        how = "O_DIRECT" if self.direct else "buffered"
        return f"<hauler.io.File {self._path!r} mode={self.mode!r} {how}{' closed' if self.closed else ''}>"

    # -- buffers
    @staticmethod
    def _prepare(buf: Any, writable: bool):
        dev = _buffers.device_buffer(buf)
        if dev is not None:
            if writable:
                _buffers.check_writable_device(dev, "buf")
            return None, dev
        return _buffers.host_object(buf, "buf", writable=writable), None

    def _device(self, dev: Any, size: Optional[int], offset: int, read: bool) -> int:
        n = dev.nbytes if size is None else size
        if n > dev.nbytes:
            from .errors import BufferTooSmall
            raise BufferTooSmall(f"buf holds {dev.nbytes} bytes, fewer than the {n} requested")
        from . import cuda_available, cuda_status
        if not cuda_available():
            raise NoDevice(f"a device array was given but no usable GPU exists ({cuda_status()})")
        fn = self._f.read_device if read else self._f.write_device
        return int(fn(dev.ptr, n, offset))

    # -- blocking
    def read_into(self, buf: Any, size: Optional[int] = None, offset: int = 0) -> int:
        """Reads ``size`` bytes (default: all of ``buf``) at ``offset`` into ``buf``; blocking."""
        offset, size = _check_int("offset", offset), _check_size(size)
        host, dev = self._prepare(buf, True)
        if dev is not None:
            return self._device(dev, size, offset, True)
        return int(self._f.read_into(host, size, offset))

    def write(self, buf: Any, size: Optional[int] = None, offset: int = 0) -> int:
        """Writes ``size`` bytes (default: all of ``buf``) of ``buf`` at ``offset``; blocking."""
        offset, size = _check_int("offset", offset), _check_size(size)
        host, dev = self._prepare(buf, False)
        if dev is not None:
            return self._device(dev, size, offset, False)
        return int(self._f.write(host, size, offset))

    def read_many(self, buf: Any, offsets: Any, size: int) -> int:
        """Reads ``len(offsets)`` pieces of ``size`` bytes, piece i from file offset
        ``offsets[i]`` into bytes [i*size, (i+1)*size) of ``buf``, as one request (all pieces
        share the queue depth); blocking. Every byte or an exception."""
        host, dev = self._prepare(buf, True)
        if dev is not None:
            raise InvalidArgument("read_many takes host buffers")
        return int(self._f.read_many(host, _check_offsets("offsets", offsets), _check_int("size", size)))

    def read_extents(self, buf: Any, offsets: Any, sizes: Any) -> int:
        """Reads ``len(offsets)`` pieces of different sizes, piece i (``sizes[i]`` bytes from file
        offset ``offsets[i]``) into ``buf`` right after pieces 0..i-1, as one request; blocking.
        Every byte or an exception."""
        return self._extents(buf, offsets, sizes, True)

    def write_extents(self, buf: Any, offsets: Any, sizes: Any) -> int:
        """Writes ``len(offsets)`` pieces of different sizes, piece i (``sizes[i]`` bytes at file
        offset ``offsets[i]``) from ``buf`` right after pieces 0..i-1, as one request; blocking.
        Pieces must not overlap (nor share a 4 KiB block of an O_DIRECT file when unaligned)."""
        return self._extents(buf, offsets, sizes, False)

    def _extents(self, buf: Any, offsets: Any, sizes: Any, read: bool) -> int:
        host, dev = self._prepare(buf, read)
        name = "read_extents" if read else "write_extents"
        if dev is not None:
            raise InvalidArgument(f"{name} takes host buffers")
        return int(getattr(self._f, name)(host, _check_offsets("offsets", offsets), _check_offsets("sizes", sizes)))

    def write_many(self, buf: Any, offsets: Any, size: int) -> int:
        """Writes bytes [i*size, (i+1)*size) of ``buf`` at file offset ``offsets[i]`` for every i,
        as one request; blocking. Pieces must not overlap (nor share a 4 KiB block of an
        O_DIRECT file when unaligned)."""
        host, dev = self._prepare(buf, False)
        if dev is not None:
            raise InvalidArgument("write_many takes host buffers")
        return int(self._f.write_many(host, _check_offsets("offsets", offsets), _check_int("size", size)))

    # -- asynchronous
    def pread(self, buf: Any, size: Optional[int] = None, offset: int = 0) -> Future:
        """Starts reading ``size`` bytes at ``offset`` into ``buf``; returns a :class:`Future`."""
        offset, size = _check_int("offset", offset), _check_size(size)
        host, dev = self._prepare(buf, True)
        if dev is not None:
            return _device_future(lambda: self._device(dev, size, offset, True), buf)
        return Future(self._f.pread(host, size, offset), buf)

    def pwrite(self, buf: Any, size: Optional[int] = None, offset: int = 0) -> Future:
        """Starts writing ``size`` bytes of ``buf`` at ``offset``; returns a :class:`Future`."""
        offset, size = _check_int("offset", offset), _check_size(size)
        host, dev = self._prepare(buf, False)
        if dev is not None:
            return _device_future(lambda: self._device(dev, size, offset, False), buf)
        return Future(self._f.pwrite(host, size, offset), buf)

    def sync(self, data_only: bool = False) -> None:
        """fsync (fdatasync with data_only=True)."""
        self._f.sync(bool(data_only))

    def truncate(self, size: int) -> None:
        self._f.truncate(_check_int("size", size))


def _device_future(fn, obj) -> concurrent.futures.Future:
    """Device requests run synchronously (cuFile or a host bounce, before pread/pwrite return):
    their future is already done."""
    fut: concurrent.futures.Future = concurrent.futures.Future()
    try:
        fut.set_result(fn())
    except BaseException as e:  # noqa: BLE001 - carried to result()
        fut.set_exception(e)
    return fut
