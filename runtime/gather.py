"""Row gathering for graph learning: ``hauler.gather``.

A :class:`FeatureStore` holds named row-major tables and gathers rows by index:

    from hauler.gather import FeatureStore
    fs = FeatureStore()
    fs.add("x", torch.randn(1_000_000, 128))        # kept by reference: no copy
    fs.add("y", "labels.npy")                        # memory-mapped, read-only
    fs.add("emb", np.zeros((10**6, 64), np.float32), shared=True)   # one /dev/shm copy
    rows = fs.gather("x", torch.tensor([3, 1, 4]))  # torch.Tensor of shape (3, 128)
    fs.scatter("emb", idx, grads, reduce="add")

Tables
    * ``memory``: a numpy array or CPU torch tensor, used in place. Forked DataLoader workers
      (Linux's default) see the same pages without copying (nothing writes them).
    * ``shared``: ``add(..., shared=True)`` or :meth:`FeatureStore.share` copies the table once
      into a ``.npy`` file in ``/dev/shm`` and maps it; pickling (spawn/forkserver workers) sends
      the path, so every worker maps the same memory. The creating store deletes the file when it
      is closed or collected (mappings already open stay valid).
    * ``mmap``: a path to a ``.npy`` file, memory-mapped (read-only unless ``writable=True``);
      pickling sends the path.
    * ``file``: ``add(name, path, backend="file")``: a ``.npy`` or raw file (``dtype=``,
      ``shape=``, ``offset=``) on NVMe, read through the I/O engine (``hauler.io``, O_DIRECT where
      allowed), never mapped. A gather reads only the 4 KiB blocks holding the wanted rows,
      coalesced into extents, as one request. ``writable=True`` opens it read-write: a scatter
      reads the blocks holding the touched rows, applies the rows and writes the same extents
      back (read-only tables' scatter raises ReadOnlyBuffer); pickling sends the path.
  Rows are everything after the first dimension; they must be C-contiguous (rows themselves may
  be any distance apart). Any dtype, bfloat16 tensors included.

Results
    ``gather`` returns ``out`` when given; otherwise a torch tensor when the index or the table
    was a torch tensor (torch dtype preserved), else a numpy array. The result has shape
    ``index.shape + row_shape``.

Errors (all raised before anything is written): an index out of range or negative
(:class:`~hauler.OutOfRange`, naming the position and value), an index that is not int32/int64,
an ``out`` of the wrong shape, dtype or layout or read-only, rows of another size
(:class:`~hauler.InvalidArgument`), a missing table name (:class:`KeyError`), a GPU path with
no GPU (:class:`~hauler.NoDevice`).

Threads: the host gather splits large calls over hauler's thread pool (HAULER_GATHER_THREADS);
inside a DataLoader worker process it uses one thread unless told otherwise, as torch does.
"""
from __future__ import annotations

import os
import sys
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _buffers, _gather_registry, _gather_shm, config
from ._gather_file import _file_table
from ._gather_table import _addr, _core, _Table, _torch, _unlink
from ._lifetime import needs_open
from .errors import InvalidArgument, NoDevice, ReadOnlyBuffer

__all__ = ["FeatureStore", "GatherCollate", "gather", "scatter", "SHM_DIR"]

SHM_DIR = _gather_shm.SHM_DIR


def _torch_ops(index: Any, t: Any) -> Any:
    """hauler._torch_ops when torch is in play (a torch index or table), else None: imports
    torch only when the caller already did."""
    if _buffers.is_torch_tensor(index) or _buffers.is_torch_tensor(getattr(t, "keep", None)):
        from . import _torch_ops
        return _torch_ops
    return None


def _in_worker() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return torch.utils.data.get_worker_info() is not None
    except AttributeError:
        return False


def _threads(threads: Optional[int]) -> int:
    if threads is not None:
        return _buffers.as_int("threads", threads, minimum=0)
    if _in_worker() and config.source("HAULER_GATHER_THREADS") == "default":  # an override counts too
        return 1
    return 0


# -- tables ---------------------------------------------------------------------------------------

def _table_from(name: str, data: Any, shared: bool, writable: bool, mode: int = 0o600) -> _Table:
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.exists(path):
            raise FileNotFoundError(f"table {name!r}: no such file {path!r}")
        try:
            arr = np.load(path, mmap_mode="r+" if writable else "r", allow_pickle=False)
        except ValueError as e:
            raise InvalidArgument(f"table {name!r}: {path!r} is not a .npy file numpy can map: {e}") from None
        if not isinstance(arr, np.memmap) and not isinstance(arr, np.ndarray):
            raise InvalidArgument(f"table {name!r}: {path!r} holds no array")
        t = _Table(name, arr, "mmap", path=os.path.abspath(path))
        return _share(t, mode) if shared else t
    torch_dtype, keep = None, None
    if _buffers.is_torch_tensor(data):
        if data.is_cuda:
            raise InvalidArgument(f"table {name!r} is a CUDA tensor; tables live in host memory "
                                  "(pin() makes them readable by the GPU)")
        if not data.is_contiguous():
            raise InvalidArgument(f"table {name!r}: the tensor is not contiguous; pass tensor.contiguous()")
        torch_dtype, keep = data.dtype, data
        arr = _buffers.torch_as_numpy(data, writable=False, what=f"table {name!r}")
    elif isinstance(data, np.ndarray):
        arr = data
    elif hasattr(data, "__array_interface__") or hasattr(data, "__array__"):
        arr = np.asarray(data)
    else:
        raise InvalidArgument(f"table {name!r} must be a numpy array, a CPU torch tensor or a .npy path, "
                              f"got {type(data).__name__}")
    if arr.dtype.hasobject:
        raise InvalidArgument(f"table {name!r} holds Python objects (dtype {arr.dtype}); tables hold plain data")
    t = _Table(name, arr, "memory", torch_dtype, keep=keep)
    return _share(t, mode) if shared else t


def _check_shareable(t: _Table) -> None:
    if getattr(t.keep, "requires_grad", False):
        raise InvalidArgument(f"table {t.name!r} requires grad: a shared table is a copy in /dev/shm, which "
                              "would not carry its gradient; share a detached tensor or keep it in memory")


def _share(t: _Table, mode: int = 0o600) -> _Table:
    """A copy of the table in /dev/shm (mode: its permission bits), mapped; pickles by path."""
    if t.kind == "shared":
        return t
    _check_shareable(t)
    src = np.ascontiguousarray(t.arr)
    dst, path, fd = _gather_shm.create(src.shape, src.dtype, mode)
    try:
        dst[...] = src
        dst.flush()
    except BaseException:
        del dst
        _unlink(path)
        os.close(fd)
        raise
    table = _Table(t.name, dst, "shared", t.torch_dtype, path=path, owner=True)
    weakref.finalize(table, os.close, fd)   # its lock: held while the table lives
    return table


# -- indices and outputs --------------------------------------------------------------------------

def _index_array(index: Any) -> Tuple[np.ndarray, bool]:
    """(C-contiguous int32/int64 numpy array, was_torch)."""
    was_torch = False
    if _buffers.is_torch_tensor(index):
        was_torch = True
        torch = _torch()
        if index.dtype not in (torch.int32, torch.int64):
            raise InvalidArgument(f"index must be an int32 or int64 tensor, got {index.dtype}")
        if index.is_cuda:
            index = index.cpu()  # indices are validated on the host; the GPU path uploads them
        arr = index.detach().contiguous().numpy()
    elif isinstance(index, np.ndarray):
        arr = index
        if arr.dtype.kind not in "iu" or arr.dtype.itemsize not in (4, 8) or arr.dtype.kind == "u":
            raise InvalidArgument(f"index must be an int32 or int64 array, got dtype {arr.dtype}")
    elif isinstance(index, (list, tuple, range)) or np.isscalar(index):
        arr = np.asarray(index)
        if arr.size == 0:
            arr = arr.astype(np.int64)
        if arr.dtype.kind not in "iu" or arr.dtype == np.uint64:
            raise InvalidArgument(f"index must hold integers, got {type(index).__name__} of dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
    else:
        raise InvalidArgument(f"index must be an int32/int64 numpy array, torch tensor or a list of ints, "
                              f"got {type(index).__name__}")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    # not ascontiguousarray: it makes a 0-d index 1-d, and a scalar index drops the row dimension
    return (arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)), was_torch


def _out_array(t: _Table, out: Any, shape: Tuple[int, ...], what: str = "out") -> np.ndarray:
    """A writable numpy view of `out` after checking shape, dtype and layout."""
    if _buffers.is_torch_tensor(out):
        if out.is_cuda:
            raise InvalidArgument(f"{what} is a CUDA tensor; pass device=... or a device array")
        if t.torch_dtype is not None and out.dtype != t.torch_dtype:
            raise InvalidArgument(f"{what} has dtype {out.dtype}, table {t.name!r} has {t.torch_dtype}")
        if tuple(out.shape) != shape:
            raise InvalidArgument(f"{what} has shape {tuple(out.shape)}, the gather needs {shape}")
        if not out.is_contiguous():
            raise InvalidArgument(f"{what} is not contiguous; pass a contiguous tensor")
        arr = _buffers.torch_as_numpy(out, writable=True, what=what)
        if t.torch_dtype is None and arr.dtype != t.arr.dtype:
            raise InvalidArgument(f"{what} has dtype {out.dtype}, table {t.name!r} has {t.arr.dtype}")
        return arr
    if not isinstance(out, np.ndarray):
        raise InvalidArgument(f"{what} must be a numpy array or CPU torch tensor, got {type(out).__name__}")
    if out.dtype != t.arr.dtype:
        raise InvalidArgument(f"{what} has dtype {out.dtype}, table {t.name!r} has {t.arr.dtype}")
    if out.shape != shape:
        raise InvalidArgument(f"{what} has shape {out.shape}, the gather needs {shape}")
    if not out.flags.c_contiguous:
        raise InvalidArgument(f"{what} is not C-contiguous; pass a contiguous array")
    if not out.flags.writeable:
        raise ReadOnlyBuffer(f"{what} is read-only; pass a writable array")
    return out


# -- the store ------------------------------------------------------------------------------------

class FeatureStore:
    """Named row-major tables and the gathers and scatters over them (see the module help)."""

    def __init__(self, tables: Optional[Dict[str, Any]] = None, *, shared: bool = False):
        self._tables: Dict[str, _Table] = {}
        self._pinned = False
        self._opened()
        for name, data in (tables or {}).items():
            self.add(name, data, shared=shared)

    # tables
    @needs_open
    def add(self, name: str, data: Any, *, shared: bool = False, writable: bool = False,
            backend: Optional[str] = None, dtype: Any = None, shape: Any = None, offset: int = 0,
            direct: Optional[bool] = None, shared_mode: int = 0o600) -> None:
        """Add (or replace) table `name`: a numpy array, CPU torch tensor or .npy path (mapped;
        `writable` maps it read-write). `shared` copies it once into /dev/shm (see the module help),
        in a file of mode `shared_mode` (0600: this user only, whatever the umask).

        ``backend="file"``: `data` is a path read through the I/O engine (hauler.io, O_DIRECT where
        allowed; `direct` as for io.File), never mapped: a .npy file, or a raw file of rows given
        `dtype` and `shape` (rows may be -1: as many as the file holds) starting at byte `offset`.
        Gathers read only the blocks holding the wanted rows; `writable` opens the file read-write
        so scatter can update rows (a read-modify-write of the blocks holding them): True locks the
        file for this process alone, "shared" lets several processes scatter into it (each scatter
        holds a byte-range lock on its blocks)."""
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"table name must be a non-empty string, got {name!r}")
        if backend not in (None, "memory", "mmap", "file"):
            raise InvalidArgument(f"backend must be None, 'memory', 'mmap' or 'file', got {backend!r}")
        if backend == "file":
            if not isinstance(data, (str, os.PathLike)):
                raise InvalidArgument(f"table {name!r}: backend='file' takes a path, got {type(data).__name__}")
            if shared:
                raise InvalidArgument(f"table {name!r}: a file table is read through the I/O engine, never mapped "
                                      "(shared= does not apply)")
            t: _Table = _file_table(name, data, dtype, shape, offset, direct, writable)
        else:
            if dtype is not None or shape is not None or offset or direct is not None:
                raise InvalidArgument("dtype=, shape=, offset= and direct= apply to backend='file' only")
            t = _table_from(name, data, shared, writable, _gather_shm.check_mode(shared_mode))
        old = self._tables.get(name)
        if old is not None:
            old.unregister()  # first: the new table may be the same memory
        if self._pinned:
            try:
                t.register()
            except BaseException:
                if old is not None:
                    old.register()
                raise
        self._tables[name] = t
        if old is not None and old is not t:
            old.close()

    @needs_open
    def remove(self, name: str) -> bool:
        t = self._tables.pop(name, None)
        if t is None:
            return False
        t.unregister()
        t.close()
        return True

    @needs_open
    def share(self, shared_mode: int = 0o600) -> "FeatureStore":
        """Move every ordinary-memory table into /dev/shm (one copy, shared with every worker
        process however it was started; files of mode `shared_mode`); returns self."""
        mode = _gather_shm.check_mode(shared_mode)
        for t in self._tables.values():
            _check_shareable(t)
        for name, t in list(self._tables.items()):
            if t.kind == "memory":
                self._tables[name] = _share(t, mode)
        return self

    @needs_open
    def names(self) -> List[str]:
        return list(self._tables)

    @needs_open
    def __contains__(self, name: object) -> bool:
        return name in self._tables

    @needs_open
    def __len__(self) -> int:
        return len(self._tables)

    def _get(self, name: str) -> _Table:
        try:
            return self._tables[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self._tables) or "none"
            raise KeyError(f"no table named {name!r} in this FeatureStore (tables: {known})") from None

    @needs_open
    def table(self, name: str) -> Any:
        """The whole table, no copy: a torch tensor for torch tables, else a numpy array."""
        t = self._get(name)
        return t.as_user()

    @needs_open
    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self._get(name).arr.shape)

    @needs_open
    def dtype(self, name: str) -> Any:
        t = self._get(name)
        return t.torch_dtype if t.torch_dtype is not None else t.arr.dtype

    @needs_open
    def kind(self, name: str) -> str:
        """'memory', 'shared', 'mmap' or 'file' (read through the I/O engine)."""
        return self._get(name).kind

    @needs_open
    def path(self, name: str) -> Optional[str]:
        return self._get(name).path

    # gather / scatter
    @needs_open
    def gather(self, name: str, index: Any, out: Any = None, device: Any = None, *, sparse: bool = False,
               threads: Optional[int] = None, stream: Optional[bool] = None,
               gpu_blocks: Optional[int] = None) -> Any:
        """Rows `index` of table `name` (shape index.shape + row_shape; a scalar index gives one row,
        as table[5] does).

        Autograd: from a table added as a tensor that requires grad, the result carries a gradient
        (the scatter-add of its gradient into the table's rows; `sparse=True`: a sparse COO
        gradient, as nn.Embedding(sparse=True)). torch.compile traces the call as the custom op
        torch.ops.hauler.gather (see hauler._torch_ops).

        `out`: a numpy array / CPU tensor of exactly that shape and dtype (C-contiguous, writable)
        or a device array (``__cuda_array_interface__``) to gather into. `device`: None or "cpu"
        for host memory, a CUDA device to gather into a new tensor there (zero-copy from a
        pin()ned table, else a host gather and a copy). `stream`: True/False forces non-temporal
        stores on/off (default: by HAULER_GATHER_STREAM_MIN). `gpu_blocks`: cap on the GPU kernel's
        thread blocks for this call (default HAULER_GATHER_GPU_BLOCKS), to leave the GPU to
        training kernels running beside it."""
        ops = _torch_ops(index, self._tables.get(name))
        if ops is not None:
            result = ops.gather(self, name, index, out, device, bool(sparse))
            if result is not None:
                return result
        return self._gather(name, index, out, device, threads=threads, stream=stream, gpu_blocks=gpu_blocks)

    def _gather(self, name: str, index: Any, out: Any = None, device: Any = None, *,
                threads: Optional[int] = None, stream: Optional[bool] = None,
                gpu_blocks: Optional[int] = None) -> Any:
        t = self._get(name)
        idx, idx_torch = _index_array(index)
        shape = tuple(idx.shape) + t.row_shape
        n = idx.size
        blocks = -1 if gpu_blocks is None else _buffers.as_int("gpu_blocks", gpu_blocks, minimum=0)
        dev_out = _buffers.device_buffer(out) if out is not None else None
        if dev_out is not None:
            _buffers.check_writable_device(dev_out, "out")
            self._gather_device(t, idx, dev_out.ptr, dev_out.nbytes, _buffers.launch_stream(None, out)[0], blocks)
            return out
        if device is not None and str(device) != "cpu":
            return self._gather_to_device(t, idx, shape, device, blocks)
        if out is not None:
            arr = _out_array(t, out, shape)
            result = out
        else:
            arr = np.empty(shape, dtype=t.arr.dtype)
            result = None
        t.gather_into(idx, arr, _threads(threads), -1 if stream is None else int(bool(stream)))
        if result is not None:
            return result
        if idx_torch or t.torch_dtype is not None:
            return t.as_user(arr, torch_out=True)
        return arr

    @needs_open
    def scatter(self, name: str, index: Any, src: Any, *, reduce: str = "assign",
                threads: Optional[int] = None, gpu_blocks: Optional[int] = None) -> None:
        """table[index[i]] = src[i] (reduce="assign": with duplicate indices the LAST position
        wins, as a loop in index order would) or += (reduce="add": every position adds, each row
        in index order, equal to numpy.add.at). Everything is checked before any row changes.

        `src` on the device (``__cuda_array_interface__``: a CUDA tensor, CuPy, ...) into a
        pin()ned table runs the GPU scatter kernel, which writes the table in place over the
        link, and waits for it (on src's stream). assign: duplicates are resolved on the host
        first, so the last position wins there too. add: one atomicAdd per element (float32/64,
        (u)int32/64; 8/16-bit integers have no atomic and raise InvalidArgument), duplicates
        added in no fixed order (integers exact; floats may differ from numpy.add.at in the last
        bits). `gpu_blocks` caps the kernel's thread blocks as for gather. A scatter autograd would
        have to record (src or the table requiring grad, grad mode on) is refused: it writes in place."""
        ops = _torch_ops(src, self._tables.get(name)) or _torch_ops(index, None)
        if ops is not None and ops.scatter(self, name, index, src, reduce):
            return
        self._scatter(name, index, src, reduce=reduce, threads=threads, gpu_blocks=gpu_blocks)

    def _scatter(self, name: str, index: Any, src: Any, *, reduce: str = "assign",
                 threads: Optional[int] = None, gpu_blocks: Optional[int] = None) -> None:
        t = self._get(name)
        if reduce not in ("assign", "add"):
            raise InvalidArgument(f"reduce must be 'assign' or 'add', got {reduce!r}")
        t.check_writable()
        idx, _ = _index_array(index)
        shape = tuple(idx.shape) + t.row_shape
        dev_src = _buffers.device_buffer(src)
        if dev_src is not None:
            blocks = -1 if gpu_blocks is None else _buffers.as_int("gpu_blocks", gpu_blocks, minimum=0)
            self._scatter_device(t, idx, src, dev_src, shape, reduce, blocks)
            return
        if _buffers.is_torch_tensor(src):
            if tuple(src.shape) != shape:
                raise InvalidArgument(f"src has shape {tuple(src.shape)}, the scatter needs {shape}")
            if t.torch_dtype is not None and src.dtype != t.torch_dtype:
                raise InvalidArgument(f"src has dtype {src.dtype}, table {name!r} has {t.torch_dtype}")
            s = _buffers.torch_as_numpy(src.contiguous(), writable=False, what="src")
        else:
            s = np.asarray(src)
            if s.shape != shape:
                raise InvalidArgument(f"src has shape {s.shape}, the scatter needs {shape}")
            s = np.ascontiguousarray(s)
        if s.dtype != t.arr.dtype:
            raise InvalidArgument(f"src has dtype {s.dtype}, table {name!r} has {t.arr.dtype}")
        if reduce == "add" and t.torch_dtype is not None and t.torch_dtype != _torch_dtype_of(s.dtype):
            raise InvalidArgument(f"reduce='add' does not support {t.torch_dtype} tables")
        t.scatter_from(idx, s, reduce, _threads(threads))

    # GPU
    @needs_open
    def pin(self) -> "FeatureStore":
        """Register every table for zero-copy GPU reads (cudaHostRegister, in place). NoDevice
        when there is no usable GPU, saying why. Tables added later are pinned as they come."""
        from . import cuda_available, cuda_status
        if not cuda_available():
            raise NoDevice(f"pin() needs a GPU: {cuda_status()}")
        for t in self._tables.values():
            t.register()
        self._pinned = True
        return self

    @needs_open
    def unpin(self) -> None:
        for t in self._tables.values():
            t.unregister()
        self._pinned = False

    @property
    def pinned(self) -> bool:
        return self._pinned

    @staticmethod
    def _device_ptr(t: _Table, what: str) -> int:
        """The table's device address for a kernel: NoDevice without a GPU, InvalidArgument when
        the table is not pinned."""
        if t.device_ptr is None and t.rows > 0:
            from . import cuda_available, cuda_status
            if not cuda_available():
                raise NoDevice(f"a GPU {what} needs a GPU: {cuda_status()}")
            raise t.not_pinned_error(what)
        return t.device_ptr or 0

    def _gather_device(self, t: _Table, idx: np.ndarray, out_ptr: int, out_len: int, stream: int,
                       blocks: int = -1) -> None:
        _core().gather_device(self._device_ptr(t, "gather"), t.rows, t.row_bytes, t.row_stride, _addr(idx), idx.size,
                              idx.itemsize, out_ptr, out_len, stream or 0, False, blocks)

    def _scatter_device(self, t: _Table, idx: np.ndarray, src: Any, dev: Any, shape: Tuple[int, ...], reduce: str,
                        blocks: int) -> None:
        cai = getattr(src, "__cuda_array_interface__", None)
        if cai is not None:
            if tuple(cai["shape"]) != shape:
                raise InvalidArgument(f"src has shape {tuple(cai['shape'])}, the scatter needs {shape}")
            sdt = np.dtype(cai["typestr"])
            if sdt.itemsize != t.arr.itemsize or (t.torch_dtype is None and sdt != t.arr.dtype):
                raise InvalidArgument(f"src has dtype {sdt}, table {t.name!r} has {t.arr.dtype}")
        if dev.nbytes != idx.size * t.row_bytes:
            raise InvalidArgument(f"src holds {dev.nbytes} bytes; {idx.size} rows of {t.row_bytes} bytes are "
                                  f"{idx.size * t.row_bytes}")
        if reduce == "add" and t.torch_dtype is not None and t.torch_dtype != _torch_dtype_of(t.arr.dtype):
            raise InvalidArgument(f"reduce='add' does not support {t.torch_dtype} tables")
        ptr = self._device_ptr(t, "scatter")
        elem = f"{t.arr.dtype.kind}{t.arr.dtype.itemsize}"
        _core().scatter_device(ptr, t.rows, t.row_bytes, t.row_stride, _addr(idx), idx.size, idx.itemsize, dev.ptr,
                               dev.nbytes, reduce, elem, _buffers.launch_stream(None, src)[0], True, blocks)

    def _gather_to_device(self, t: _Table, idx: np.ndarray, shape: Tuple[int, ...], device: Any,
                          blocks: int = -1) -> Any:
        from . import cuda_available, cuda_status
        torch = _torch()
        if not cuda_available() or torch is None or not torch.cuda.is_available():
            raise NoDevice(f"gather(device={str(device)!r}) needs a GPU: {cuda_status()}")
        dtype = t.torch_dtype or _torch_dtype_of(t.arr.dtype)
        dev = torch.device(device)
        if t.device_ptr is not None:
            out = torch.empty(shape, dtype=dtype, device=dev)
            stream = torch.cuda.current_stream(dev).cuda_stream
            _core().gather_device(t.device_ptr, t.rows, t.row_bytes, t.row_stride, _addr(idx), idx.size,
                                  idx.itemsize, out.data_ptr(), out.numel() * out.element_size(), stream, False,
                                  blocks)
            return out
        if not t.warned_fallback and t.pinnable:  # a fallback number must never pass for the zero-copy path
            import warnings
            warnings.warn(f"hauler.gather: table {t.name!r} is not pinned, so gather(device=...) gathers on the "
                          "host and copies to the GPU; call FeatureStore.pin() for the zero-copy kernel",
                          RuntimeWarning, stacklevel=3)
            t.warned_fallback = True
        host = torch.empty(shape, dtype=dtype, pin_memory=True)
        self._gather(t.name, idx, out=host)
        return host.to(dev, non_blocking=True)

    # lifetime and pickling
    def close(self) -> None:
        """Unpin and drop every table (shared tables' /dev/shm files are deleted); then every method
        but close() raises Closed."""
        if self._closed:
            return
        try:
            self.unpin()
        except Exception:
            pass
        for t in self._tables.values():
            if t._finalizer is not None:
                t._finalizer()
            t.close()
        self._tables.clear()
        self._closed = True

    @needs_open
    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @needs_open
    def __getstate__(self):
        return {"tables": list(self._tables.values())}

    def __setstate__(self, state):
        self._tables = {t.name: t for t in state["tables"]}
        self._pinned = False  # a pin belongs to the process that made it
        self._opened()

    def _opened(self) -> None:
        self._closed = False
        self._id = str(next(_gather_registry.IDS))   # torch.compile's graphs name the store by it
        _gather_registry.STORES[self._id] = self

    def _closed_name(self) -> str:
        return "this FeatureStore"

    def __repr__(self) -> str:
        if self._closed:
            return "FeatureStore(closed)"
        parts = [f"{n}: {t.kind} {t.arr.shape} {self.dtype(n)}" for n, t in self._tables.items()]
        return f"FeatureStore({'; '.join(parts)})"


_gather_registry.store_class = FeatureStore


def _torch_dtype_of(np_dtype: np.dtype) -> Any:
    torch = _torch()
    return torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype


# -- one-shot helpers -----------------------------------------------------------------------------

def gather(table: Any, index: Any, out: Any = None, **kw: Any) -> Any:
    """Rows `index` of one table (numpy array, CPU tensor or .npy path), as FeatureStore.gather."""
    fs = FeatureStore()
    fs.add("table", table)
    return fs.gather("table", index, out=out, **kw)


def scatter(table: Any, index: Any, src: Any, *, reduce: str = "assign", **kw: Any) -> None:
    """table[index] = src (or += with reduce="add") in place, as FeatureStore.scatter."""
    fs = FeatureStore()
    fs.add("table", table)
    fs.scatter("table", index, src, reduce=reduce, **kw)


# -- DataLoader collate ---------------------------------------------------------------------------

class GatherCollate:
    """``collate_fn`` for a ``torch.utils.data.DataLoader`` whose dataset yields node ids.

    Each batch becomes ``{"index": ids, <table>: rows, ...}``: the rows of every named table,
    gathered straight into an output buffer. In the main process (num_workers=0) the buffers are
    reused: a ring of `depth` buffers per table (pinned when a GPU exists, unless
    ``pin_memory=False``), so a
    batch's tensors stay valid until `depth` more batches were collated. In a worker process each
    batch is gathered into a fresh tensor in shared memory, which the DataLoader then hands to the
    main process without copying it again.
    """

    def __init__(self, store: FeatureStore, names: Union[str, Sequence[str]], *, depth: int = 2,
                 pin_memory: Optional[bool] = None):
        self.store = store
        self.names = [names] if isinstance(names, str) else list(names)
        for n in self.names:
            store._get(n)
        self.depth = _buffers.as_int("depth", depth, minimum=1)
        self.pin_memory = pin_memory
        self._ring: Dict[str, List[Any]] = {}
        self._turn = 0

    def _buffer(self, name: str, n: int, k: int) -> Any:
        torch = _torch()
        t = self.store._get(name)
        dtype = t.torch_dtype or _torch_dtype_of(t.arr.dtype)
        ring = self._ring.setdefault(name, [None] * self.depth)
        buf = ring[k]
        if buf is None or buf.shape[0] < n:
            from . import cuda_available
            pin = self.pin_memory is not False and cuda_available() and torch.cuda.is_available()
            buf = torch.empty((n,) + t.row_shape, dtype=dtype, pin_memory=pin)
            ring[k] = buf
        return buf[:n]

    def __call__(self, batch: Any) -> Dict[str, Any]:
        torch = _torch()
        ids = batch if _buffers.is_torch_tensor(batch) else torch.as_tensor(np.asarray(batch))
        if ids.dtype not in (torch.int32, torch.int64):
            ids = ids.to(torch.int64)
        out: Dict[str, Any] = {"index": ids}
        worker = _in_worker()
        k = self._turn % self.depth
        self._turn += 1
        for name in self.names:
            t = self.store._get(name)
            if worker:
                dtype = t.torch_dtype or _torch_dtype_of(t.arr.dtype)
                buf = torch.empty((ids.shape[0],) + t.row_shape, dtype=dtype).share_memory_()
            else:
                buf = self._buffer(name, ids.shape[0], k)
            out[name] = self.store.gather(name, ids, out=buf)
        return out
