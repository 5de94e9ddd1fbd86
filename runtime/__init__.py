"""hauler: a communication runtime for GPU programs.

Importing hauler loads the C++ core and nothing else: no MPI initialization
(mpi4py.MPI is imported only where MPI is used) and no CUDA driver call until
a GPU is asked about.
"""
import importlib

from ._version import __version__
from .errors import (BufferTooSmall, Closed, HaulerError, HaulerIOError, InvalidArgument, NoDevice,
                     OutOfRange, Overflow, ReadOnlyBuffer)
try:
    from . import _core
except ImportError as _e:  # keep `hauler info` able to say what is wrong with the build
    _core = None
    _core_error = _e

# Submodules that load on first use so `import hauler` stays cheap (no mpi4py.MPI, no torch).
_LAZY_SUBMODULES = ("datatype", "gather", "io", "kv", "offload")
# Exceptions defined beside the code that raises them, importable from here too (on first use).
_LAZY_ERRORS = {"CapacityExceeded": "tensorstore", "CorruptEntry": "_store_format", "SwapSpaceFull": "kv",
                "UnknownRequest": "kv", "DriveLost": "kv", "DriveTimeout": "kv", "ConfigError": "config",
                "MpiNotFound": "mpi_find", "OffloadPathNotice": "offload",
                "InterposeNotBuilt": "interpose", "UnknownLauncher": "interpose",
                "StoreLocked": "_store_lock", "UnsafeDirectory": "_store_lock",
                **{n: "kv.transport" for n in ("TransferError", "PeerLost", "TransferTimeout", "LeaseExpired",
                                               "TransferCancelled", "TransportRefused", "PeerMemoryError")}}

__all__ = ["__version__", "cuda_available", "cuda_status", "HaulerError", "InvalidArgument",
           "Overflow", "BufferTooSmall", "OutOfRange", "ReadOnlyBuffer", "NoDevice",
           "HaulerIOError", "Closed", *_LAZY_ERRORS, *_LAZY_SUBMODULES]


def _require_core():
    if _core is None:
        raise ImportError(f"hauler's C++ core (hauler._core) failed to import: {_core_error}; "
                          "rebuild with `pip install -e .` (or bash scripts/setup.sh)") from _core_error
    return _core


def cuda_available() -> bool:
    """True when the GPU kernels can run: a driver, a device and libhauler_cuda.so."""
    return bool(_require_core().cuda_available())


def cuda_status() -> str:
    """Why the GPU path is or is not available, in words (no driver, no device, not built...)."""
    return str(_require_core().cuda_status())


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        # import_module, not `from . import name`: the latter looks the name up on this module
        # first, which lands back here and recurses.
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_ERRORS:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_ERRORS[name]}"), name)
    raise AttributeError(f"module 'hauler' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES) | set(_LAZY_ERRORS))
