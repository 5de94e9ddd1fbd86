"""hauler.gather's file table: rows in a file (raw or .npy) read through hauler.io, never mapped."""
from __future__ import annotations

import fcntl
import math
import os
from typing import Any, Optional, Tuple

import numpy as np

from . import _buffers
from ._fileio import File, alignment
from ._gather_table import _addr, _core, _Table
from ._store_lock import lock_or_refuse
from .errors import InvalidArgument, OutOfRange, ReadOnlyBuffer


def _check_indices(flat: np.ndarray, rows: int) -> None:
    """The memory tables' index errors (same messages), raised before any read."""
    if flat.size == 0:
        return
    bad = (flat < 0) | (flat >= rows)
    if not bad.any():
        return
    i = int(np.argmax(bad))
    v = int(flat[i])
    if v < 0:
        raise OutOfRange(f"index[{i}] = {v} is negative (a table of {rows} rows takes 0..{rows - 1})")
    raise OutOfRange(f"index[{i}] = {v} is out of range for a table of {rows} rows")


def _npy_header(path: str) -> Tuple[Tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, read from its header only."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
        except ValueError as e:
            raise InvalidArgument(f"{path!r} is not a .npy file: {e}") from None
        offset = f.tell()
    if dtype.hasobject:
        raise InvalidArgument(f"{path!r} holds Python objects (dtype {dtype}); tables hold plain data")
    if fortran and len(shape) > 1:
        raise InvalidArgument(f"{path!r} is stored in Fortran order; rows must be C-contiguous")
    return tuple(int(s) for s in shape), dtype, offset


class _FileTable(_Table):
    """A table in a file (raw bytes or .npy) read with hauler's I/O engine, never mapped.

    ``gather`` reads only the blocks (``block`` bytes, 4 KiB or the O_DIRECT alignment if larger)
    that hold the wanted rows: the sorted unique rows' blocks, coalesced into extents of
    consecutive blocks, are read as one request (``io.File.read_extents``), and the rows are
    copied from the read buffer into ``out`` in index order.

    ``scatter`` (only when opened with ``writable=True``) is a read-modify-write of the same
    extents: read the blocks holding the touched rows (one request), apply the rows there with the
    memory tables' scatter (same duplicate rules), write those extents back (one request). Bytes
    of a block outside the touched rows are written back as they were read, so a failed write
    leaves every other row intact, and the blocks written before the failure are written back as
    they were read (the scatter then changed nothing; blocks that cannot be restored either are
    named in the error with the target rows they hold). ``writable=True`` takes an exclusive
    ``flock`` of the file (a second writable open, in any process, raises StoreLocked naming the
    holder); ``writable="shared"`` opens share it, and each read-modify-write holds an fcntl
    byte-range lock on its blocks, so scatters from several processes into rows sharing blocks
    wait for each other instead of losing updates. Read-only opens take no lock (a gather during a
    scatter may see a row half written). ``bytes_read``/``blocks_read``/``extents_read``,
    ``bytes_written``/``blocks_written``/``extents_written`` and ``requests`` count what was asked
    of the engine (``reset_counters()``)."""

    def __init__(self, name: str, path: str, shape: Tuple[int, ...], dtype: np.dtype, offset: int,
                 direct: Optional[bool] = None, writable: Any = False, lock: bool = True):
        dtype = np.dtype(dtype)
        if len(shape) < 1:
            raise InvalidArgument(f"table {name!r} must have at least one dimension (rows), got a scalar")
        shape = tuple(_buffers.as_int(f"table {name!r}: shape[{i}]", s, 0) for i, s in enumerate(shape))
        row_bytes = math.prod(shape[1:]) * dtype.itemsize   # exact: a product that wraps is caught below
        if row_bytes == 0:
            raise InvalidArgument(f"table {name!r} has empty rows (shape {shape})")
        if writable not in (False, True, "shared"):
            raise InvalidArgument(f"table {name!r}: writable must be False, True or 'shared', got {writable!r}")
        self.file = File(path, "r+" if writable else "r", direct=direct)
        self.writable = writable
        if writable and lock:   # a table unpickled in a worker is its owner's, handed on: no lock of its own
            try:
                lock_or_refuse(self.file.fileno(), path, writable == "shared", f"writable file table {path!r}",
                               "writable='shared' opens share it, their scatters serialized by byte-range locks")
            except BaseException:
                self.file.close()
                raise
        size = self.file.size()
        need = offset + shape[0] * row_bytes
        if size < need:
            self.file.close()
            raise InvalidArgument(f"table {name!r}: {path!r} holds {size} bytes, the table {shape} {dtype} "
                                  f"at offset {offset} needs {need}")
        # a zero-byte stand-in with the table's shape and dtype (read-only): what FeatureStore's
        # checks look at; the rows themselves are only in the file
        self.arr = np.broadcast_to(np.zeros((1,) + tuple(shape[1:]), dtype), tuple(shape))
        self.name, self.kind, self.torch_dtype, self.path, self.owner = name, "file", None, path, False
        self.keep, self.device_ptr, self.warned_fallback, self._finalizer = None, None, False, None
        self.row_bytes = self.row_stride = row_bytes
        self.offset, self.file_size, self.direct = int(offset), size, direct
        self.block = max(4096, alignment())
        self.reset_counters()

    COUNTERS = ("bytes_read", "blocks_read", "extents_read", "requests", "bytes_written", "blocks_written",
                "extents_written")

    def reset_counters(self) -> None:
        for k in _FileTable.COUNTERS:
            setattr(self, k, 0)

    def stats(self) -> dict:
        """What was asked of the engine since the last reset (FeatureStore.stats)."""
        return {k: getattr(self, k) for k in _FileTable.COUNTERS}

    def as_user(self, arr: Optional[np.ndarray] = None, torch_out: bool = False) -> Any:
        if arr is None:
            raise InvalidArgument(f"table {self.name!r} lives in a file ({self.path!r}) read through the I/O "
                                  "engine; it has no in-memory view: gather its rows")
        return super().as_user(arr, torch_out)

    def blocks_for(self, idx: np.ndarray) -> np.ndarray:
        """The sorted block numbers holding rows `idx` (validated indices)."""
        u = np.unique(idx.reshape(-1).astype(np.int64, copy=False))
        if u.size == 0:
            return u
        start = self.offset + u * self.row_bytes
        b0 = start // self.block
        b1 = (start + self.row_bytes - 1) // self.block
        span = b1 - b0 + 1
        total = int(span.sum())
        # every block b0..b1 of every row, then unique (rows share blocks)
        rep = np.repeat(b0 - np.concatenate(([0], np.cumsum(span)[:-1])), span)
        return np.unique(rep + np.arange(total, dtype=np.int64))

    def _plan(self, rows: np.ndarray) -> Tuple[np.ndarray, list, list]:
        """(blocks, offsets, sizes): the sorted blocks holding `rows` (validated, non-empty) and
        the coalesced extents covering them (the last one cut at the end of the file)."""
        B = self.block
        blocks = self.blocks_for(rows)
        breaks = np.flatnonzero(np.diff(blocks) != 1) + 1
        first = np.concatenate(([0], breaks))
        count = np.diff(np.concatenate((first, [blocks.size])))
        offsets = (blocks[first] * B).tolist()
        sizes = (count * B).tolist()
        sizes[-1] = min(sizes[-1], self.file_size - offsets[-1])
        return blocks, offsets, sizes

    def _count_read(self, blocks: np.ndarray, offsets: list, sizes: list) -> None:
        self.requests += 1
        self.extents_read += len(offsets)
        self.bytes_read += sum(sizes)
        self.blocks_read += int(blocks.size)

    def _fetch(self, rows: np.ndarray, blocks: np.ndarray, offsets: list, sizes: list):
        """Reads a plan of _plan(rows) as one request; counts nothing (a prefetch thread calls
        it). Returns (buf, window, pos) as _read_blocks does."""
        B, rb = self.block, self.row_bytes
        # aligned to the block, so O_DIRECT tasks need no bounce buffer
        raw = np.empty(blocks.size * B + B, np.uint8)
        buf = raw[-_addr(raw) % B:][:blocks.size * B]
        self.file.read_extents(buf, offsets, sizes)
        start = self.offset + rows.astype(np.int64) * rb
        pos = np.searchsorted(blocks, start // B) * B + start % B
        window = np.lib.stride_tricks.as_strided(buf, shape=(buf.size - rb + 1, rb), strides=(1, 1))
        return buf, window, pos

    def _read_blocks(self, rows: np.ndarray):
        """Reads the blocks holding `rows` (validated, non-empty) as one request of coalesced
        extents (the last one cut at the end of the file). Returns (buf, offsets, sizes, window,
        pos): block k of the sorted block list sits at buf[k*B:(k+1)*B], and row rows[i] is
        window[pos[i]] (a sliding row_bytes window over buf: every row is contiguous in buf, its
        blocks being consecutive slots)."""
        blocks, offsets, sizes = self._plan(rows)
        buf, window, pos = self._fetch(rows, blocks, offsets, sizes)
        self._count_read(blocks, offsets, sizes)
        return buf, offsets, sizes, window, pos

    def read_rows(self, rows: np.ndarray, dst: np.ndarray) -> None:
        """dst[i] = the bytes of row rows[i] (validated, non-empty; dst: (n, row_bytes) uint8)."""
        _, _, _, window, pos = self._read_blocks(rows)
        dst[...] = window[pos]  # (np.take would copy window)

    def gather_into(self, idx: np.ndarray, out: np.ndarray, threads: int, stream: int) -> None:
        flat = idx.reshape(-1)
        _check_indices(flat, self.rows)
        if flat.size == 0:
            return
        self.read_rows(flat, out.reshape(-1).view(np.uint8).reshape(flat.size, self.row_bytes))

    def scatter_from(self, idx: np.ndarray, src: np.ndarray, reduce: str,
                     threads: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """Returns (the sorted touched rows, their bytes as written), None when nothing was touched."""
        assert self.writable, "FeatureStore.scatter checks writability first"
        flat = idx.reshape(-1)
        _check_indices(flat, self.rows)
        elem = f"{src.dtype.kind}{src.dtype.itemsize}"
        if reduce == "add":
            _core().scatter_check_elem(elem)  # before any I/O
        if flat.size == 0:
            return None
        rows, slot = np.unique(flat, return_inverse=True)
        span = self._span(rows)
        # other processes' scatters into these blocks wait: their read-modify-writes would lose ours
        fcntl.lockf(self.file.fileno(), fcntl.LOCK_EX, span[1] - span[0], span[0])
        try:
            return rows, self._scatter_locked(rows, slot, src, reduce, elem, threads)
        finally:
            fcntl.lockf(self.file.fileno(), fcntl.LOCK_UN, span[1] - span[0], span[0])

    def _span(self, rows: np.ndarray) -> Tuple[int, int]:
        """The byte range [start, end) of the blocks holding sorted rows."""
        B = self.block
        start = (self.offset + int(rows[0]) * self.row_bytes) // B * B
        end = -(-(self.offset + (int(rows[-1]) + 1) * self.row_bytes) // B) * B
        return start, end

    def _scatter_locked(self, rows: np.ndarray, slot: np.ndarray, src: np.ndarray, reduce: str, elem: str,
                        threads: int) -> np.ndarray:
        buf, offsets, sizes, window, pos = self._read_blocks(rows)
        before = buf.copy()
        # the touched rows, packed, are a small memory table: the host scatter applies src to it with
        # the memory tables' rules (assign: last position wins; add: numpy.add.at order)
        stage = window[pos]
        slot = np.ascontiguousarray(slot.reshape(-1), dtype=np.int64)
        _core().scatter_host(_addr(stage), rows.size, self.row_bytes, self.row_bytes, _addr(slot), slot.size, 8,
                             _addr(src), src.nbytes, reduce, elem, threads)
        window[pos] = stage  # rows are disjoint in buf; the rest of each block stays as read
        try:
            self.file.write_extents(buf, offsets, sizes)
        except Exception as err:
            again = type(err)(f"{err}{self._roll_back(before, offsets, sizes, rows)}")
            if isinstance(err, OSError):
                again.errno = err.errno
            raise again from err
        self.requests += 1
        self.extents_written += len(offsets)
        self.bytes_written += sum(sizes)
        self.blocks_written += int(buf.size // self.block)
        return stage

    def _roll_back(self, before: np.ndarray, offsets: Any, sizes: Any, rows: np.ndarray) -> str:
        """After a failed write-back, writes every block's bytes as read back, block by block: the
        scatter then changed nothing. Blocks that cannot be restored either (the failure again) are
        named in the error with the target rows they hold, which may hold new values."""
        B = self.block
        failed = []
        k = 0
        for off, size in zip(offsets, sizes):
            for b in range(0, size, B):
                n = min(B, size - b)
                try:
                    self.file.write(before[k:k + n], offset=off + b)
                except Exception:  # noqa: BLE001 - reported below, with the original error
                    failed.append(off + b)
                k += n
        if not failed:
            note = "; the scatter changed nothing (every block written was restored)"
        else:
            lo = self.offset + rows.astype(np.int64) * self.row_bytes
            hit = np.zeros(rows.size, bool)
            for f in failed:
                hit |= (lo < f + B) & (lo + self.row_bytes > f)
            note = (f"; {len(failed)} block(s) could not be restored either, so target rows "
                    f"{rows[hit].tolist()[:20]}{' ...' if hit.sum() > 20 else ''} may hold new or old values; "
                    f"every other row is as it was")
        return note

    pinnable = False  # rows come from the file; gather(device=...) gathers on the host and copies

    def check_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyBuffer(f"table {self.name!r} is an NVMe table opened read-only; add it with "
                                 "backend='file', writable=True to scatter into it")

    def register(self) -> None:
        pass  # see pinnable

    def not_pinned_error(self, what: str) -> InvalidArgument:
        return InvalidArgument(f"table {self.name!r} is an NVMe table (read through the I/O engine): a GPU "
                               f"{what} needs a table in memory; move the rows through host memory")

    def close(self) -> None:
        try:
            self.file.close()
        except Exception:  # closing during teardown: the table is gone either way
            pass

    def __getstate__(self):
        return {"name": self.name, "path": self.path, "shape": tuple(self.arr.shape), "dtype": self.arr.dtype.str,
                "offset": self.offset, "direct": self.direct, "writable": self.writable}

    def __setstate__(self, state):
        _FileTable.__init__(self, state["name"], state["path"], tuple(state["shape"]), np.dtype(state["dtype"]),
                            state["offset"], state["direct"], state.get("writable", False), lock=False)


def _file_table(name: str, path: str, dtype: Any, shape: Any, offset: int, direct: Optional[bool],
                writable: Any, cls: type = _FileTable, extra: Optional[dict] = None) -> _FileTable:
    """A `cls` table (_FileTable, or _gather_cache's cached one given its options in `extra`)."""
    extra = extra or {}
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"table {name!r}: no such file {path!r}")
    offset = _buffers.as_int("offset", offset, minimum=0)
    if dtype is None and shape is None:
        try:
            shp, dt, off = _npy_header(path)
        except InvalidArgument as e:
            raise InvalidArgument(f"table {name!r}: {e} (a raw file needs dtype= and shape=)") from None
        return cls(name, path, shp, dt, off + offset, direct, writable, **extra)
    if dtype is None:
        raise InvalidArgument(f"table {name!r}: a raw file table needs dtype= (and shape=, rows may be -1)")
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise InvalidArgument(f"table {name!r}: dtype {dt} holds Python objects; tables hold plain data")
    dims = (-1,) if shape is None else (shape if not np.isscalar(shape) else (shape,))
    shp = tuple(_buffers.as_int(f"table {name!r}: shape[{i}]", s, -1 if i == 0 else 0) for i, s in enumerate(dims))
    if not shp:
        raise InvalidArgument(f"table {name!r} must have at least one dimension (rows), got shape {shape!r}")
    if shp[0] == -1:
        row_bytes = math.prod(shp[1:]) * dt.itemsize
        if row_bytes == 0:
            raise InvalidArgument(f"table {name!r} has empty rows (shape {shape})")
        shp = ((os.path.getsize(path) - offset) // row_bytes,) + shp[1:]
    return cls(name, path, shp, dt, offset, direct, writable, **extra)
