"""The I/O backends the tests run on, and the bytes a file holds on disk."""
import contextlib
import os

import pytest

from hauler import config, io

BACKENDS = ["io_uring", "threads"]


def require(name):
    """Skips the test when `name` is io_uring and this kernel or sandbox refuses it."""
    if name == "io_uring":
        config.set("HAULER_IO_BACKEND", "auto")
        try:
            if io.backend() != "io_uring":
                pytest.skip("io_uring unavailable here: " + io.backend_description())
        finally:
            config.set("HAULER_IO_BACKEND", None)


@contextlib.contextmanager
def using(name, **settings):
    """The engine forced to backend `name` with the given HAULER_IO_* settings; all reset after."""
    require(name)
    config.set("HAULER_IO_BACKEND", name)
    for key, value in settings.items():
        config.set(key, value)
    try:
        yield name
    finally:
        for key in ["HAULER_IO_BACKEND", *settings]:
            config.set(key, None)


def disk_bytes(path, off=0, n=None):
    """`n` bytes of the file at `off` (default: to the end), read with plain os.pread."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if n is None:
            n = os.fstat(fd).st_size - off
        return os.pread(fd, n, off)
    finally:
        os.close(fd)
