"""hauler.gather's table in memory (ordinary, /dev/shm or memory-mapped): the base class whose
row movers FeatureStore calls; _gather_file.py holds the table read from a file through hauler.io.
"""
from __future__ import annotations

import os
import sys
import weakref
from typing import Any, Optional, Tuple

import numpy as np

from .errors import InvalidArgument, ReadOnlyBuffer


def _core():
    from . import _require_core
    return _require_core()


def _torch():
    """torch when importable, else None."""
    if "torch" in sys.modules:
        return sys.modules["torch"]
    try:
        import torch
    except ImportError:
        return None
    return torch


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class _Table:
    """One table: a numpy view of its memory plus what is needed to share and rebuild it."""

    def __init__(self, name: str, arr: np.ndarray, kind: str, torch_dtype: Any = None, path: Optional[str] = None,
                 owner: bool = False, keep: Any = None):
        if arr.ndim < 1:
            raise InvalidArgument(f"table {name!r} must have at least one dimension (rows), got a scalar")
        if arr.ndim > 1 and not arr[:1].reshape(arr.shape[1:]).flags.c_contiguous and arr.shape[0] > 0:
            raise InvalidArgument(f"table {name!r}: rows must be C-contiguous (strides {arr.strides}); "
                                  "pass np.ascontiguousarray(table)")
        row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.itemsize
        stride = arr.strides[0] if arr.shape[0] > 1 else row_bytes
        if stride < row_bytes:
            raise InvalidArgument(f"table {name!r}: row stride {stride} is smaller than the row size {row_bytes} "
                                  "(negative or overlapping rows); pass np.ascontiguousarray(table)")
        if row_bytes == 0:
            raise InvalidArgument(f"table {name!r} has empty rows (shape {arr.shape})")
        self.name, self.arr, self.kind = name, arr, kind
        self.torch_dtype, self.path, self.owner = torch_dtype, path, owner
        self.keep = keep  # the object that owns the memory (a torch tensor), kept alive
        self.row_bytes, self.row_stride = row_bytes, stride
        self.device_ptr: Optional[int] = None
        self.warned_fallback = False
        self._finalizer = weakref.finalize(self, _unlink, path) if owner and path else None

    @property
    def rows(self) -> int:
        return self.arr.shape[0]

    @property
    def row_shape(self) -> Tuple[int, ...]:
        return tuple(self.arr.shape[1:])

    @property
    def nbytes(self) -> int:
        return 0 if self.rows == 0 else (self.rows - 1) * self.row_stride + self.row_bytes

    def as_user(self, arr: Optional[np.ndarray] = None, torch_out: bool = False) -> Any:
        """`arr` (default: the table) as the user gave the table: torch (dtype restored) or numpy."""
        a = self.arr if arr is None else arr
        if torch_out or self.torch_dtype is not None:
            t = _torch_view(a)
            if self.torch_dtype is not None and t.dtype != self.torch_dtype:
                t = t.view(self.torch_dtype)
            return t
        return a

    # The row movers FeatureStore calls (_FileTable reads the blocks holding the rows instead).
    def gather_into(self, idx: np.ndarray, out: np.ndarray, threads: int, stream: int) -> None:
        _core().gather_host(*_rows_args(self), _addr(idx), idx.size, idx.itemsize, _addr(out), out.nbytes,
                            threads, stream, -1)

    def scatter_from(self, idx: np.ndarray, src: np.ndarray, reduce: str, threads: int) -> None:
        elem = f"{src.dtype.kind}{src.dtype.itemsize}"
        _core().scatter_host(*_rows_args(self), _addr(idx), idx.size, idx.itemsize, _addr(src), src.nbytes, reduce,
                             elem, threads)

    # What FeatureStore asks of every table; _FileTable answers for a table that is not in memory.
    pinnable = True  # rows in addressable memory that pin() registers for the GPU

    def check_writable(self) -> None:
        """ReadOnlyBuffer unless a scatter may write the table."""
        if not self.arr.flags.writeable:
            raise ReadOnlyBuffer(f"table {self.name!r} is read-only ({self.kind}); "
                                 + ("add it with writable=True" if self.kind == "mmap" else "pass a writable array"))

    def register(self) -> None:
        """Makes the rows readable by GPU threads in place (cudaHostRegister); device_ptr set."""
        if self.device_ptr is None and self.rows > 0:
            self.device_ptr = int(_core().host_register(_addr(self.arr), self.nbytes, not self.arr.flags.writeable))
            # a table dropped while pinned must not leave its pages registered (a later table on
            # them could not pin); runs before the table's array is released
            self._unpin = weakref.finalize(self, _core().host_unregister, _addr(self.arr))

    def unregister(self) -> None:
        if self.device_ptr is not None:
            self.device_ptr = None
            unpin = getattr(self, "_unpin", None)
            if unpin is not None:
                unpin.detach()
            _core().host_unregister(_addr(self.arr))

    def not_pinned_error(self, what: str) -> InvalidArgument:
        return InvalidArgument(f"table {self.name!r} is not pinned: call FeatureStore.pin() first so GPU threads "
                               "can reach it in place")

    def close(self) -> None:
        """Releases what the table holds open besides memory (nothing for a memory table)."""

    def __getstate__(self):
        state = {"name": self.name, "kind": self.kind, "torch_dtype": _dtype_name(self.torch_dtype),
                 "path": self.path}
        if self.kind in ("shared", "mmap"):
            state["writable"] = bool(self.arr.flags.writeable)
        else:
            state["arr"] = self.arr  # ordinary memory pickles as a copy (fork shares it instead)
        return state

    def __setstate__(self, state):
        td = _dtype_from_name(state["torch_dtype"])
        if state["kind"] in ("shared", "mmap"):
            arr = np.load(state["path"], mmap_mode="r+" if state["writable"] else "r")
        else:
            arr = state["arr"]
        self.__init__(state["name"], arr, state["kind"], td, state["path"], owner=False)


def _torch_view(a: np.ndarray) -> Any:
    """A torch tensor over the numpy array's memory (read-only arrays too: torch warns only)."""
    torch = _torch()
    if a.flags.writeable:
        return torch.from_numpy(a)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable tensors": the caller owns the contract
        return torch.from_numpy(a)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _dtype_name(td: Any) -> Optional[str]:
    return None if td is None else str(td).replace("torch.", "")


def _dtype_from_name(name: Optional[str]) -> Any:
    if name is None:
        return None
    return getattr(_torch(), name)


def _rows_args(t: _Table) -> Tuple[int, int, int, int]:
    return (_addr(t.arr) if t.rows else 0, t.rows, t.row_bytes, t.row_stride)
