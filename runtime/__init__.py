"""hauler: a communication runtime for GPU programs.

Importing hauler loads the C++ core and nothing else: no MPI initialization
(mpi4py.MPI is imported only where MPI is used) and no CUDA driver call until
a GPU is asked about.
"""
from ._version import __version__
from .errors import (BufferTooSmall, HaulerError, HaulerIOError, InvalidArgument, NoDevice,
                     OutOfRange, Overflow, ReadOnlyBuffer)
from . import _core

__all__ = ["__version__", "cuda_available", "cuda_status", "HaulerError", "InvalidArgument",
           "Overflow", "BufferTooSmall", "OutOfRange", "ReadOnlyBuffer", "NoDevice",
           "HaulerIOError", "datatype"]


def cuda_available() -> bool:
    """True when the GPU kernels can run: a driver, a device and libhauler_cuda.so."""
    return bool(_core.cuda_available())


def cuda_status() -> str:
    """Why the GPU path is or is not available, in words (no driver, no device, not built...)."""
    return str(_core.cuda_status())


def __getattr__(name):
    # Submodules load on first use so `import hauler` stays cheap.
    if name == "datatype":
        from . import datatype
        return datatype
    raise AttributeError(f"module 'hauler' has no attribute {name!r}")
