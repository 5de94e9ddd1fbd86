"""hauler.io's files, futures and backend queries (re-exported by hauler.io, whose doc describes
them). TensorStore builds on this module; hauler.io re-exports both, so neither imports the other.
"""
from __future__ import annotations

import concurrent.futures
import os
from typing import Any, Optional

from . import _buffers
from .errors import InvalidArgument, NoDevice

__all__ = ["File", "Future", "backend", "backend_description", "backend_is_fallback",
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


class Future:
    """The result of :meth:`File.pread` / :meth:`File.pwrite`: ``result(timeout=None)`` gives the
    byte count or raises the request's error; ``done()``, ``cancel()`` (only before the request
    started), ``cancelled()``. The buffer stays referenced until the request finished."""

    __slots__ = ("_f", "_obj", "_value", "_error", "_settled")

    def __init__(self, core_future: Any, obj: Any = None, value: Any = None):
        self._f = core_future
        self._obj = obj
        self._value = value
        self._error: Optional[BaseException] = None
        self._settled = core_future is None

    def _settle(self) -> None:
        if self._settled:
            return
        try:
            self._value = self._f.get()
        except BaseException as e:  # noqa: BLE001 - carried to result()
            self._error = e
        self._settled = True
        self._f.release_buffer()

    def done(self) -> bool:
        return self._f is None or bool(self._f.done())

    def running(self) -> bool:
        return self._f is not None and bool(self._f.running())

    def cancel(self) -> bool:
        return self._f is not None and bool(self._f.cancel())

    def cancelled(self) -> bool:
        return self._f is not None and bool(self._f.cancelled())

    def result(self, timeout: Optional[float] = None) -> Any:
        if self.cancelled():
            raise concurrent.futures.CancelledError("the I/O request was cancelled before it started")
        if not self._settled:
            if not self._f.wait(-1.0 if timeout is None else max(float(timeout), 0.0)):
                raise TimeoutError(f"the I/O request did not finish within {timeout} s")
            self._settle()
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        try:
            self.result(timeout)
        except (TimeoutError, concurrent.futures.CancelledError):
            raise
        except BaseException as e:  # noqa: BLE001
            return e
        return None

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "done" if self.done() else "pending"
        return f"<hauler.io.Future {state}>"


def _check_int(name: str, v: Any, minimum: int = 0) -> int:
    return _buffers.as_int(name, v, minimum)


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
        n = dev.nbytes if size is None else _check_int("size", size)
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
        offset = _check_int("offset", offset)
        host, dev = self._prepare(buf, True)
        if dev is not None:
            return self._device(dev, size, offset, True)
        return int(self._f.read_into(host, size, offset))

    def write(self, buf: Any, size: Optional[int] = None, offset: int = 0) -> int:
        """Writes ``size`` bytes (default: all of ``buf``) of ``buf`` at ``offset``; blocking."""
        offset = _check_int("offset", offset)
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
        return int(self._f.read_many(host, [int(o) for o in offsets], _check_int("size", size)))

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
        return int(getattr(self._f, name)(host, [int(o) for o in offsets], [int(n) for n in sizes]))

    def write_many(self, buf: Any, offsets: Any, size: int) -> int:
        """Writes bytes [i*size, (i+1)*size) of ``buf`` at file offset ``offsets[i]`` for every i,
        as one request; blocking. Pieces must not overlap (nor share a 4 KiB block of an
        O_DIRECT file when unaligned)."""
        host, dev = self._prepare(buf, False)
        if dev is not None:
            raise InvalidArgument("write_many takes host buffers")
        return int(self._f.write_many(host, [int(o) for o in offsets], _check_int("size", size)))

    # -- asynchronous
    def pread(self, buf: Any, size: Optional[int] = None, offset: int = 0) -> Future:
        """Starts reading ``size`` bytes at ``offset`` into ``buf``; returns a :class:`Future`."""
        offset = _check_int("offset", offset)
        host, dev = self._prepare(buf, True)
        if dev is not None:
            return _device_future(lambda: self._device(dev, size, offset, True), buf)
        return Future(self._f.pread(host, size, offset), buf)

    def pwrite(self, buf: Any, size: Optional[int] = None, offset: int = 0) -> Future:
        """Starts writing ``size`` bytes of ``buf`` at ``offset``; returns a :class:`Future`."""
        offset = _check_int("offset", offset)
        host, dev = self._prepare(buf, False)
        if dev is not None:
            return _device_future(lambda: self._device(dev, size, offset, False), buf)
        return Future(self._f.pwrite(host, size, offset), buf)

    def sync(self, data_only: bool = False) -> None:
        """fsync (fdatasync with data_only=True)."""
        self._f.sync(bool(data_only))

    def truncate(self, size: int) -> None:
        self._f.truncate(_check_int("size", size))


class _Done:
    """A finished core future (device requests run synchronously)."""

    def __init__(self, fn):
        self._err = None
        self._val = None
        try:
            self._val = fn()
        except BaseException as e:  # noqa: BLE001
            self._err = e

    def wait(self, timeout=-1.0):
        return True

    def done(self):
        return True

    def running(self):
        return False

    def cancel(self):
        return False

    def cancelled(self):
        return False

    def get(self):
        if self._err is not None:
            raise self._err
        return self._val

    def release_buffer(self):
        pass


def _device_future(fn, obj) -> Future:
    return Future(_Done(fn), obj)
