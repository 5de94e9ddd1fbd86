"""Files at the drive's speed: ``hauler.io``.

    from hauler import io
    with io.File("/data/x.bin", "w") as f:
        fut = f.pwrite(array)            # a Future; the write runs on hauler's I/O threads
        fut.result()                     # bytes written, or the error (HaulerIOError, OutOfRange, ...)
    with io.File("/data/x.bin") as f:
        f.read_into(out)                 # blocking; every byte or an exception

Files are opened with O_DIRECT where the file system allows it (``File.direct`` says whether, and
``File.direct_reason`` why not); requests are split into tasks (HAULER_IO_TASK_SIZE) with up to
HAULER_IO_QUEUE_DEPTH in flight on the io_uring backend, or on a pread/pwrite thread pool where
io_uring is unavailable (``backend()`` says which; ``backend_is_fallback()`` is True then).
Unaligned buffers, offsets and sizes go through pooled aligned bounce buffers. Buffers: numpy
arrays, torch CPU tensors, anything with the buffer protocol; device arrays (CuPy, torch CUDA)
through cuFile when present, else a host bounce, and NoDevice without a GPU. Device requests are
synchronous: ``pread``/``pwrite`` of a device array return once the bytes moved, with a future that
is already done. Every future is a ``concurrent.futures.Future`` (``wait``, ``as_completed``,
``add_done_callback``).

A request either moves every byte or raises: reads past the end raise OutOfRange, a file that
shrinks underneath raises OutOfRange ("short read"), disk full raises HaulerIOError (ENOSPC).
"""
from __future__ import annotations

from ._fileio import (File, Future, alignment, empty, backend, backend_description, backend_is_fallback, counters,
                      cufile_status, registration, registration_failed)

__all__ = ["File", "Future", "empty", "backend", "backend_description", "backend_is_fallback",
           "registration", "registration_failed", "counters", "cufile_status", "TensorStore", "alignment",
           "CapacityExceeded", "CorruptEntry", "StoreLocked", "UnsafeDirectory"]


def __getattr__(name):
    if name == "TensorStore":  # on first use: `from hauler import io` stays cheap
        from .tensorstore import TensorStore
        return TensorStore
    if name in ("CapacityExceeded", "CorruptEntry", "StoreLocked", "UnsafeDirectory"):  # TensorStore's errors, named in docs/io.md
        from . import tensorstore
        return getattr(tensorstore, name)
    raise AttributeError(f"module 'hauler.io' has no attribute {name!r}")
