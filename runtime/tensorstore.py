"""``hauler.io.TensorStore``: tensors and numpy arrays on disk by key, asynchronously.

    store = TensorStore("/nvme/acts", capacity=8 << 30)
    fut = store.put("layer3", tensor)        # a concurrent.futures.Future (None when durable)
    arr = store.get("layer3").result()       # a new tensor/array; dtype, shape, checksum verified

Each entry is one file: a 4 KiB header (magic, version, JSON: key, kind, dtype, shape, nbytes,
checksum algorithm and value) and the data from the header's offset (4096 + the data's address
modulo 4096), written with hauler.io (O_DIRECT where allowed). Replacing an entry is
atomic: the new value goes to a temporary file that is fsynced and renamed over the old one (and
the directory fsynced), so a failed or interrupted put leaves the previous value readable.
A corrupted entry raises :class:`CorruptEntry` on get; a missing one KeyError. Checksums are
CRC-32C (hauler's core: SSE4.2 where the CPU has it, ~10x zlib's crc32 in one thread, with the GIL
released); version-1 entries, written with zlib's crc32, still verify.

With ``capacity`` (bytes of data and headers), a put that would exceed it first evicts unpinned
entries, least recently used first; if that cannot make room the put raises
:class:`CapacityExceeded` and stores nothing. ``pin(key)`` protects an entry from eviction.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import threading
import time
import uuid
import weakref
import zlib  # verifies version-1 entries (crc32)
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from . import _buffers, _entry_io
from .errors import HaulerIOError, InvalidArgument, OutOfRange

__all__ = ["TensorStore", "CorruptEntry", "CapacityExceeded"]

MAGIC = b"HAULERTS"
VERSION = 2       # 2: "checksum" names the algorithm ("crc32c" or null), "crc" holds it
PADDED = 3        # 3: as 2, the file padded with zeros to whole 4 KiB blocks (inline puts)
VERSIONS = (1, 2, 3)  # 1: "crc32" holds zlib's crc32 (or null); still read
DRIVE_S = 0.05    # how often a thread of the store's polls inline requests nobody waits for
HEADER = 4096
SUFFIX = ".hts"
SPARE = ".spare"  # files of deleted entries kept for reuse (keep_files); never entries


class CorruptEntry(HaulerIOError):
    """A stored entry whose header, size or checksum does not match its data."""


class CapacityExceeded(HaulerIOError):
    """A put that does not fit in the store's capacity even after evicting unpinned entries."""


@dataclass
class _Entry:
    key: str
    file_bytes: int
    pinned: bool = False
    last_use: float = 0.0
    meta: Optional[Dict[str, Any]] = None  # the header of a padded (version 3) entry: gets go inline


def _aligned_empty(nbytes: int, phase: int = 0, align: int = 4096) -> np.ndarray:
    """nbytes of memory whose address is phase modulo align."""
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = (phase - raw.ctypes.data) % align
    return raw[start:start + nbytes]


class _Recycler:
    """Memory of torch values that get returned, kept once they are freed and handed to later gets
    of the same size (up to max_bytes kept). A fresh buffer is page-faulted and zeroed by the
    kernel as it is read into: for hauler.offload's ~200 MB read back per step, ~0.04 s of system
    time on the cores torch computes on. Only torch values: every view of a tensor keeps the
    numpy array it was made from alive, so its finalizer runs when the last view is gone (numpy
    views point past it to the memory's owner)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._free: Dict[int, List[np.ndarray]] = {}
        self._kept = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int, phase: int) -> np.ndarray:
        size = nbytes + HEADER
        raw = None
        if size <= self.max_bytes:
            with self._lock:
                free = self._free.get(size)
                if free:
                    raw = free.pop()
                    self._kept -= size
        if raw is None:
            raw = np.empty(size, dtype=np.uint8)
        start = (phase - raw.ctypes.data) % HEADER
        flat = raw[start:start + nbytes]
        if size <= self.max_bytes:
            weakref.finalize(flat, self._give_back, raw)
        return flat

    def _give_back(self, raw: np.ndarray) -> None:
        with self._lock:
            if self._kept + raw.nbytes <= self.max_bytes:
                self._free.setdefault(raw.nbytes, []).append(raw)
                self._kept += raw.nbytes


PHASE_MIN = 1 << 20


def _data_offset(flat: np.ndarray) -> int:
    """Where an entry's data starts in its file: right after the header; for data of PHASE_MIN
    bytes or more, at the same offset modulo 4096 as the data's address, so that O_DIRECT writes
    it from the caller's memory (only the two edge blocks bounce) instead of copying all of it
    through bounce buffers (torch and numpy rarely hand out 4 KiB-aligned memory)."""
    return HEADER + (flat.ctypes.data % HEADER if flat.nbytes >= PHASE_MIN else 0)


def _checksum(algorithm: str, flat: np.ndarray) -> int:
    if algorithm == "crc32c":
        from . import _core
        return int(_core.crc32c(flat))
    return zlib.crc32(memoryview(flat)) & 0xFFFFFFFF  # "crc32": entries of version 1


def _header(meta: Dict[str, Any], version: int = VERSION) -> np.ndarray:
    body = json.dumps(meta, sort_keys=True).encode()
    if len(body) + 16 > HEADER:
        raise InvalidArgument(f"entry metadata too long ({len(body)} bytes); use a shorter key or fewer dims")
    h = _aligned_empty(HEADER)   # aligned: written without a bounce
    h[:] = 0
    raw = MAGIC + version.to_bytes(4, "little") + len(body).to_bytes(4, "little") + body
    h[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return h


def _parse_header(h: bytes, path: str) -> Dict[str, Any]:
    if len(h) < 16 or h[:8] != MAGIC:
        raise CorruptEntry(f"{path}: not a hauler TensorStore entry (bad magic)")
    ver = int.from_bytes(h[8:12], "little")
    n = int.from_bytes(h[12:16], "little")
    if ver not in VERSIONS or n > HEADER - 16:
        raise CorruptEntry(f"{path}: bad header (version {ver}, length {n})")
    try:
        meta = json.loads(bytes(h[16:16 + n]).decode())
        for k in ("key", "kind", "dtype", "shape", "nbytes") + (("checksum", "crc") if ver >= 2 else ("crc32",)):
            meta[k]
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise CorruptEntry(f"{path}: header does not parse ({e})") from None
    meta["version"] = ver
    if ver == 1:
        meta["checksum"] = None if meta["crc32"] is None else "crc32"
        meta["crc"] = meta["crc32"]
    elif meta["checksum"] not in (None, "crc32c"):
        raise CorruptEntry(f"{path}: unknown checksum algorithm {meta['checksum']!r} in the header")
    return meta


def _read_entry(f: Any, buf: Any, offset: int, key: str) -> None:
    """f.read_into whose error (EIO, a file shrunk underneath) also names the key."""
    try:
        f.read_into(buf, offset=offset)
    except (HaulerIOError, OutOfRange) as err:
        raise type(err)(f"TensorStore entry {key!r}: {err}") from err


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


INLINE_DEPTH = 256  # tasks of an inline ring in the kernel at once (a step's puts, without waiting)


class _PolledFuture(concurrent.futures.Future):
    """The future of an inline request: done(), result() and exception() drive its I/O."""

    def __init__(self, store: "TensorStore", op: "_Op"):
        super().__init__()
        self.set_running_or_notify_cancel()  # in the kernel already: cancel() is refused
        self._store, self._op = store, op

    def done(self) -> bool:
        if not super().done():
            self._store._poll()
        return super().done()

    def _drive(self, timeout: Optional[float]) -> None:
        op = self._op   # None once finished (then super() has, or is about to have, the outcome)
        if op is not None and not super().done() and not self._store._wait(op, timeout):
            raise concurrent.futures.TimeoutError(f"the TensorStore request did not finish within {timeout} s")

    def result(self, timeout: Optional[float] = None) -> Any:
        self._drive(timeout)
        return super().result()

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        self._drive(timeout)
        return super().exception()


class _Op:
    """An inline put or get in flight."""

    def __init__(self, store: "TensorStore", kind: str, key: str, rid: int, file: Any, keep: Any = None,
                 **kw: Any):
        self.kind, self.key, self.rid, self.file, self.keep = kind, key, rid, file, keep
        self.tmp = self.final = self.meta = self.result = self.finish = None
        self.file_bytes, self.pin = 0, False
        for k, v in kw.items():
            setattr(self, k, v)
        self.fut = _PolledFuture(store, self)


_STORES: "weakref.WeakSet[TensorStore]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._fresh_workers()


os.register_at_fork(after_in_child=_after_fork_in_child)


class TensorStore:
    """Tensors and numpy arrays on disk by key (see the module doc).

    ``directory`` is created if needed; entries already there are found again. ``capacity``:
    bytes (None: unlimited). ``threads``: puts/gets run at once. ``direct``: as for
    :class:`hauler.io.File` (None: O_DIRECT where the file system allows it). ``sync``: fsync
    each entry and the directory (durability; off for scratch data). ``checksum``: store a CRC-32C
    and verify it on read (on by default; hauler.offload turns it off for its scratch entries,
    sizes and headers are still checked). ``recycle``: bytes of memory of freed torch values
    that get keeps for later gets of the same size (0: none; hauler.offload keeps some).
    ``keep_files``: bytes of files of deleted entries kept (renamed aside) and overwritten by later
    puts: writing over allocated blocks takes half the time and a third of the CPU of a new file
    here (no block allocation, no io_uring worker hand-off); with a capacity they count against it
    and go before any entry is evicted. Gets and deletes of one key take
    its lock, so a file is never reused under a get still reading it.

    ``inline=True`` (needs ``sync`` and ``checksum`` off): a put or a get is submitted by the calling
    thread as one request on a polled io_uring and finished by whichever thread next calls the
    store or waits on a future (or, for futures nobody waits on, by a thread of the store's every
    DRIVE_S): no worker thread wakes per request. Such entries are padded to whole 4 KiB blocks
    (header version 3). Entries put another way, a get into ``out`` and a put or get of a key with
    a request in flight take the worker threads. Off by default: the I/O alone is faster and
    cheaper inline, but its submission runs on the calling thread, so with a core free the worker
    threads hide it better (see the README). ``io_path`` says which path puts take and why."""

    def __init__(self, directory: Any, capacity: Optional[int] = None, threads: int = 4,
                 direct: Optional[bool] = None, sync: bool = True, checksum: bool = True,
                 recycle: int = 0, keep_files: int = 0, inline: bool = False):
        self.directory = os.fspath(directory)
        try:
            os.makedirs(self.directory, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidArgument(f"TensorStore directory {self.directory!r}: it or a parent is a file, "
                                  f"not a directory") from None
        self.capacity = None if capacity is None else _buffers.as_int("capacity", capacity, 0)
        self._direct = direct
        self._sync = bool(sync)
        self._checksum = bool(checksum)
        self._recycle = _buffers.as_int("recycle", recycle, 0)
        self._keep_files = _buffers.as_int("keep_files", keep_files, 0)
        self._threads = _buffers.as_int("threads", threads, 1)
        if inline and (self._sync or self._checksum):
            raise InvalidArgument("inline=True needs sync=False and checksum=False (an fsync or a checksum "
                                  "per entry runs on the worker threads)")
        self._inline = bool(inline)
        self._entries: Dict[str, _Entry] = {}
        self._fresh_workers()
        self._scan()
        _STORES.add(self)

    def _fresh_workers(self) -> None:
        """Worker threads, locks and the bytes of puts in progress, new. Also run in a forked
        child: the parent's workers do not exist there (a submit would hang), its locks may have
        been held at fork(), and its puts in progress never finish there."""
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self._threads,
                                                           thread_name_prefix="hauler-ts")
        # deletions on their own thread: they never delay a get that backward waits for
        self._deleter = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hauler-ts-del")
        self._lock = threading.Lock()
        self._key_locks: Dict[str, threading.Lock] = {}
        self._deleting: Dict[str, Any] = {}  # key -> discard_later future not done yet
        self._putting: Dict[str, Any] = {}   # key -> put on the worker threads not done yet
        self._reserved = 0  # bytes of puts in progress
        self._recycler = _Recycler(self._recycle)  # its lock too
        # (path, bytes) of spare files; a forked child starts without (the parent reuses them)
        self._spares: List[Any] = []
        self._spare_bytes = 0
        # inline requests (the parent's never finish in a forked child: they are dropped)
        self._entry_io: Any = None
        self._inline_why = "" if self._inline else "inline=False"
        self._ops_lock = threading.Lock()
        self._ops: Dict[int, _Op] = {}        # request id -> op, until finished
        self._inflight: Dict[str, _Op] = {}   # key -> its inline op
        self._driver: Optional[threading.Thread] = None
        self._wake = threading.Event()        # set by close(): the polling thread ends at once

    # -- bookkeeping
    def _path(self, key: str) -> str:
        return os.path.join(self.directory, hashlib.sha1(key.encode()).hexdigest() + SUFFIX)

    def _scan(self) -> None:
        for name in os.listdir(self.directory):
            p = os.path.join(self.directory, name)
            if (".tmp." in name and name.endswith(SUFFIX)) or name.endswith(SPARE):
                try:
                    os.unlink(p)  # an interrupted put (the previous value, if any, is intact) or a spare
                except OSError:
                    pass
                continue
            if not name.endswith(SUFFIX):
                continue
            try:
                with open(p, "rb") as f:
                    meta = _parse_header(f.read(HEADER), p)
                size = os.path.getsize(p)
            except (OSError, CorruptEntry):
                continue  # reported when read by key
            self._entries[meta["key"]] = _Entry(meta["key"], size, False, time.monotonic(),
                                                meta if meta["version"] == PADDED else None)

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            lk = self._key_locks.get(key)
            if lk is None:
                lk = self._key_locks[key] = threading.Lock()
            return lk

    @property
    def used_bytes(self) -> int:
        """Bytes the stored entries take (headers included)."""
        self._poll()
        with self._lock:
            return sum(e.file_bytes for e in self._entries.values())

    def keys(self) -> List[str]:
        self._poll()
        with self._lock:
            return list(self._entries)

    def __contains__(self, key: str) -> bool:
        self._poll()
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        self._poll()
        with self._lock:
            return len(self._entries)

    def pin(self, key: str, pinned: bool = True) -> None:
        with self._lock:
            if key not in self._entries:
                raise KeyError(key)
            self._entries[key].pinned = bool(pinned)

    def unpin(self, key: str) -> None:
        self.pin(key, False)

    def _reserve(self, key: str, nbytes: int, pin: bool) -> List[str]:
        """Makes room for nbytes (dropping spare files first, then evicting LRU unpinned
        entries); returns the keys evicted."""
        if self.capacity is None:
            return []
        with self._lock:
            old = self._entries.get(key)
            used = sum(e.file_bytes for e in self._entries.values()) + self._reserved + self._spare_bytes
            need = used - (old.file_bytes if old else 0) + nbytes - self.capacity
            victims, dropped = [], []
            while need > 0 and self._spares:   # spare files count against capacity; they go first
                dropped.append(self._spares.pop())
                self._spare_bytes -= dropped[-1][1]
                need -= dropped[-1][1]
            if need > 0:
                cands = sorted((e for e in self._entries.values() if not e.pinned and e.key != key),
                               key=lambda e: e.last_use)
                freed = 0
                for e in cands:
                    if freed >= need:
                        break
                    victims.append(e)
                    freed += e.file_bytes
                if freed < need:
                    raise CapacityExceeded(
                        f"put of {key!r} ({nbytes} bytes) does not fit: capacity {self.capacity}, "
                        f"{used} used, {sum(e.file_bytes for e in self._entries.values() if e.pinned)} "
                        f"pinned; nothing was stored")
                for e in victims:
                    del self._entries[e.key]
            self._reserved += nbytes
        for path in [sp[0] for sp in dropped] + [self._path(e.key) for e in victims]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return [e.key for e in victims]

    # -- put
    def put(self, key: str, value: Any, pin: bool = False) -> "concurrent.futures.Future":
        """Stores ``value`` (numpy array or torch CPU tensor) under ``key``, asynchronously. The
        value must not be modified until the future is done; the future gives None or raises."""
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"key must be a non-empty string, got {key!r}")
        arr, meta = self._describe(key, value)
        self._poll()
        with self._lock:
            deleting = self._deleting.get(key)
        if deleting is None and self._inline_claim(key):
            return self._put_inline(key, arr, meta, bool(pin), value)
        fut = self._pool.submit(self._put, key, arr, meta, bool(pin), value, deleting)
        self._track(self._putting, key, fut)
        return fut

    def _track(self, table: Dict[str, Any], key: str, fut: Any) -> None:
        """table[key] = fut until it is done (a later request of key's waits for it)."""
        with self._lock:
            table[key] = fut

        def forget(f: Any) -> None:
            with self._lock:
                if table.get(key) is f:
                    del table[key]
        fut.add_done_callback(forget)

    def _describe(self, key: str, value: Any):
        if _buffers.is_torch_tensor(value):
            if value.is_cuda:
                raise InvalidArgument("TensorStore.put takes CPU tensors; move it with .cpu() first")
            t = value.detach()
            if not t.is_contiguous():
                t = t.contiguous()
            arr = _buffers.torch_as_numpy(t, False, "value")
            kind, dtype, shape = "torch", str(t.dtype).replace("torch.", ""), list(t.shape)
        else:
            a = np.asarray(value)
            if a.dtype.hasobject:
                raise InvalidArgument("object arrays cannot be stored")
            arr = np.ascontiguousarray(a)
            kind, dtype, shape = "numpy", arr.dtype.str, list(arr.shape)
        flat = arr.reshape(-1).view(np.uint8) if arr.size else np.zeros(0, np.uint8)
        meta = {"key": key, "kind": kind, "dtype": dtype, "shape": shape, "nbytes": int(flat.nbytes)}
        return flat, meta

    def _put(self, key: str, flat: np.ndarray, meta: Dict[str, Any], pin: bool, keep: Any,
             deleting: Any = None) -> None:
        from .io import File
        if deleting is not None:
            deleting.result()   # a discard_later of this key submitted before this put
        self._settle(key)
        data_off = _data_offset(flat)
        meta = dict(meta, checksum="crc32c" if self._checksum else None, offset=data_off,
                    crc=_checksum("crc32c", flat) if self._checksum else None)
        file_bytes = data_off + flat.nbytes
        with self._key_lock(key):
            spare = self._take_spare(file_bytes)   # before _reserve: it becomes this put's bytes
            try:
                self._reserve(key, file_bytes, pin)
            except BaseException:
                if spare is not None:
                    with self._lock:
                        self._spares.append(spare)
                        self._spare_bytes += spare[1]
                raise
            final = self._path(key)
            tmp = f"{final[:-len(SUFFIX)]}.tmp.{uuid.uuid4().hex[:8]}{SUFFIX}"
            ok = False
            try:
                with self._file_for(tmp, file_bytes, spare) as f:
                    f.write(_header(meta), offset=0)
                    if flat.nbytes:
                        f.write(flat, offset=data_off)
                    if self._sync:
                        f.sync()
                os.replace(tmp, final)
                ok = True
                if self._sync:
                    dfd = os.open(self.directory, os.O_RDONLY)
                    try:
                        os.fsync(dfd)
                    finally:
                        os.close(dfd)
            finally:
                if not ok:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass
                with self._lock:
                    self._reserved -= file_bytes
                    if ok:
                        old = self._entries.get(key)
                        self._entries[key] = _Entry(key, file_bytes, pin or bool(old and old.pinned),
                                                    time.monotonic())
        del keep

    def _take_spare(self, file_bytes: int) -> Any:
        """The spare file (path, bytes) a put of file_bytes overwrites, taken off the list; or None."""
        with self._lock:
            spare = min((sp for sp in self._spares if sp[1] >= file_bytes), key=lambda sp: sp[1], default=None)
            if spare is None and self._spares:
                spare = max(self._spares, key=lambda sp: sp[1])  # fewer blocks to allocate
            if spare is not None:
                self._spares.remove(spare)
                self._spare_bytes -= spare[1]
        return spare

    def _file_for(self, tmp: str, file_bytes: int, spare: Any) -> Any:
        """A new file at tmp, or the spare file renamed there, cut to file_bytes if longer."""
        from .io import File
        if spare is not None:
            try:
                os.rename(spare[0], tmp)
            except FileNotFoundError:
                pass   # taken by a forked child or a closing store: a new file then
            else:
                f = File(tmp, "r+", direct=self._direct)
                if spare[1] > file_bytes:
                    f.truncate(file_bytes)
                return f
        return File(tmp, "x", direct=self._direct)

    def _retire(self, path: str) -> None:
        """Removes a deleted entry's file: kept as a spare while keep_files allows, else unlinked."""
        if self._keep_files:
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:
                return
            with self._lock:
                keep = self._spare_bytes + size <= self._keep_files and (
                    self.capacity is None or sum(e.file_bytes for e in self._entries.values()) + self._reserved
                    + self._spare_bytes + size <= self.capacity)
                if keep:
                    self._spare_bytes += size
            if keep:
                spare = f"{path[:-len(SUFFIX)]}.{uuid.uuid4().hex[:8]}{SPARE}"
                try:
                    os.rename(path, spare)
                except FileNotFoundError:
                    with self._lock:
                        self._spare_bytes -= size
                    return
                with self._lock:
                    self._spares.append((spare, size))
                return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    # -- get
    def get(self, key: str, out: Any = None) -> "concurrent.futures.Future":
        """Reads ``key`` back, asynchronously: the future gives a new numpy array or torch tensor
        (as stored), or ``out`` filled (same dtype size and byte count). Raises KeyError for a
        missing key, CorruptEntry when the header, size or checksum does not match."""
        self._poll()
        with self._lock:
            putting = self._putting.get(key)
        if putting is not None:   # read your writes: after the put of key submitted before
            return self._pool.submit(self._get_after, putting, key, out)
        if out is None and self._inline_claim(key):
            with self._lock:   # read under the claim: no put or delete of key can change it now
                e = self._entries.get(key)
                meta = e.meta if e is not None else None
            if meta is not None:
                return self._get_inline(key, meta)
            self._key_lock(key).release()
        return self._pool.submit(self._get, key, out)

    def _get_after(self, putting: Any, key: str, out: Any) -> Any:
        putting.exception()   # submitted earlier to the same FIFO pool: running already, or done
        return self._get(key, out)

    def get_now(self, key: str, out: Any = None) -> Any:
        return self._get(key, out)

    def _get(self, key: str, out: Any = None) -> Any:
        self._settle(key)
        with self._key_lock(key):  # a delete waits: the file may be reused once deleted
            return self._get_locked(key, out)

    def _get_locked(self, key: str, out: Any) -> Any:
        from .io import File
        path = self._path(key)
        with self._lock:
            e = self._entries.get(key)
            if e is not None:
                e.last_use = time.monotonic()
        try:
            f = File(path, "r", direct=self._direct)
        except HaulerIOError as err:
            if not os.path.exists(path):
                raise KeyError(key) from None
            raise err
        with f:
            size = f.size()
            if size < HEADER:
                raise CorruptEntry(f"{path}: {size} bytes, shorter than the {HEADER}-byte header (key {key!r})")
            h = _aligned_empty(HEADER)
            _read_entry(f, h, 0, key)
            meta = _parse_header(h.tobytes(), path)
            if meta["key"] != key:
                raise CorruptEntry(f"{path}: holds key {meta['key']!r}, not {key!r}")
            nbytes = int(meta["nbytes"])
            data_off = int(meta.get("offset", HEADER))  # entries from before "offset" start at HEADER
            if not HEADER <= data_off < 2 * HEADER:
                raise CorruptEntry(f"{path}: bad data offset {data_off} in the header (key {key!r})")
            want = data_off + nbytes if meta["version"] != PADDED else _entry_io.padded(data_off + nbytes)
            if size != want:
                raise CorruptEntry(f"{path}: {size} bytes on disk, the header says {want} "
                                   f"(key {key!r}; truncated or appended to)")
            result, flat = self._allocate(meta, out, path, data_off % HEADER)
            if nbytes:
                _read_entry(f, flat, data_off, key)
        algorithm = meta["checksum"]
        if algorithm is None:  # stored by a store with checksum=False
            return result
        crc = _checksum(algorithm, flat)
        if crc != int(meta["crc"]):
            raise CorruptEntry(f"{path}: checksum mismatch for key {key!r} ({algorithm} {crc:#010x} on disk, "
                               f"{int(meta['crc']):#010x} when written)")
        return result

    def _allocate(self, meta: Dict[str, Any], out: Any, path: str, phase: int):
        nbytes = int(meta["nbytes"])
        shape = tuple(int(s) for s in meta["shape"])
        if meta["kind"] == "torch":
            import torch
            dtype = getattr(torch, meta["dtype"], None)
            if not isinstance(dtype, torch.dtype):
                raise CorruptEntry(f"{path}: unknown torch dtype {meta['dtype']!r}")
            if out is not None:
                if not (_buffers.is_torch_tensor(out) and out.dtype == dtype and tuple(out.shape) == shape
                        and out.is_contiguous()):
                    raise InvalidArgument(f"out must be a contiguous {dtype} tensor of shape {shape}")
                flat = _buffers.torch_as_numpy(out, True, "out").reshape(-1).view(np.uint8)
                return out, flat
            # the file's phase (no bounce), unless that would misalign the elements
            flat = self._recycler.take(nbytes, phase if phase % dtype.itemsize == 0 else 0)
            t = torch.from_numpy(flat)
            t = t.view(dtype).reshape(shape) if nbytes else torch.empty(shape, dtype=dtype)
            return t, flat
        try:
            dtype = np.dtype(meta["dtype"])
        except TypeError:
            raise CorruptEntry(f"{path}: unknown numpy dtype {meta['dtype']!r}") from None
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != nbytes:
            raise CorruptEntry(f"{path}: shape {shape} x {dtype} does not make {nbytes} bytes")
        if out is not None:
            o = np.asarray(out)
            if o.dtype != dtype or o.shape != shape or not o.flags.c_contiguous or not o.flags.writeable:
                raise InvalidArgument(f"out must be a writable C-contiguous {dtype} array of shape {shape}")
            return o, o.reshape(-1).view(np.uint8)
        flat = _aligned_empty(nbytes, phase if phase % dtype.alignment == 0 else 0)
        return flat.view(dtype).reshape(shape), flat

    # -- inline requests (see the class doc)
    @property
    def io_path(self) -> str:
        """How puts go: "inline io_uring (polled by the calling threads)", or "worker threads: <why>"."""
        if self._inline and self._io() is not None:
            return "inline io_uring (polled by the calling threads)"
        return f"worker threads: {self._inline_why}"

    def _io(self) -> Any:
        """The polled ring, made at first use; None when inline I/O cannot run (the reason kept)."""
        if self._entry_io is None and not self._inline_why:
            from . import io as hio
            if hio.backend() != "io_uring":
                self._inline_why = f"no io_uring ({hio.backend_description()})"
            else:
                try:
                    self._entry_io = _entry_io.EntryIO(INLINE_DEPTH)
                except HaulerIOError as e:
                    self._inline_why = f"io_uring poller: {e}"
        return self._entry_io

    def _inline_free(self, key: str) -> bool:
        """True when a request on key may go inline now: inline I/O runs, nothing of key's is in
        flight inline and no worker holds its lock."""
        if not self._inline or self._io() is None or key in self._inflight or key in self._putting:
            return False
        lk = self._key_locks.get(key)
        return lk is None or not lk.locked()

    def _inline_claim(self, key: str) -> bool:
        """Takes key's lock for an inline request when one may go now (see _inline_free), without
        waiting: held until _finish (or a failure before _start) releases it, so no other request,
        put, get or delete of key, inline or on the workers, overlaps it (a deleted entry's file
        can be reused by the next put while a get still reads it). False: take the worker path."""
        if not self._inline_free(key):
            return False
        if not self._key_lock(key).acquire(blocking=False):
            return False
        if key in self._inflight or key in self._putting:  # claimed or submitted meanwhile
            self._key_lock(key).release()
            return False
        return True

    def _refused(self, key: str, error: BaseException) -> "concurrent.futures.Future":
        """The future of an inline request that failed before it started: it carries the error, as
        one from a worker would, and key's lock (taken by _inline_claim) goes back."""
        self._key_lock(key).release()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        fut.set_exception(error)
        return fut

    def _start(self, op: "_Op") -> "_PolledFuture":
        with self._ops_lock:
            self._ops[op.rid] = op
            self._inflight[op.key] = op
            if self._driver is None:
                # not a daemon: at exit it finishes what is in flight (a daemon thread stopped by
                # interpreter shutdown inside a GIL-releasing call would abort the process)
                self._driver = threading.Thread(target=self._drive_loop, name="hauler-ts-poll")
                self._driver.start()
        return op.fut

    def _put_inline(self, key: str, flat: np.ndarray, meta: Dict[str, Any], pin: bool, keep: Any) -> Any:
        data_off = HEADER + flat.ctypes.data % HEADER
        meta = dict(meta, checksum=None, offset=data_off, crc=None)
        try:
            header = _header(meta, PADDED)   # a key too long for the header: refused here
        except BaseException as e:  # noqa: BLE001 - the future carries it, as from a worker
            return self._refused(key, e)
        file_bytes = _entry_io.padded(data_off + flat.nbytes)
        spare = self._take_spare(file_bytes)
        try:
            self._reserve(key, file_bytes, pin)
        except BaseException as e:  # noqa: BLE001 - the future carries it, as from a worker
            if spare is not None:
                with self._lock:
                    self._spares.append(spare)
                    self._spare_bytes += spare[1]
            return self._refused(key, e)
        final = self._path(key)
        tmp = f"{final[:-len(SUFFIX)]}.tmp.{uuid.uuid4().hex[:8]}{SUFFIX}"
        f = None
        try:
            f = self._file_for(tmp, file_bytes, spare)
            rid, bufs = self._entry_io.write(f.fileno(), header, flat, data_off, repr(tmp))
        except BaseException as e:  # noqa: BLE001
            if f is not None:
                f.close()
            _unlink(tmp)
            with self._lock:
                self._reserved -= file_bytes
            return self._refused(key, e)
        meta["version"] = PADDED
        return self._start(_Op(self, "put", key, rid, f, keep=(bufs, keep), tmp=tmp, final=final,
                               file_bytes=file_bytes, pin=pin, meta=meta))

    def _get_inline(self, key: str, meta: Dict[str, Any]) -> Any:
        from .io import File
        path = self._path(key)
        with self._lock:
            e = self._entries.get(key)
            if e is not None:
                e.last_use = time.monotonic()
        data_off = int(meta["offset"])
        f = None
        try:
            try:
                f = File(path, "r", direct=self._direct)
            except HaulerIOError:
                if not os.path.exists(path):
                    raise KeyError(key) from None
                raise
            size, want = f.size(), _entry_io.padded(data_off + int(meta["nbytes"]))
            if size != want:
                raise CorruptEntry(f"{path}: {size} bytes on disk, the header says {want} "
                                   f"(key {key!r}; truncated or appended to)")
            result, flat = self._allocate(meta, None, path, data_off % HEADER)
            if not _entry_io.phase_matches(flat, data_off):  # an element alignment the phase breaks
                f.close()
                self._key_lock(key).release()
                return self._pool.submit(self._get, key, None)
            rid, finish = self._entry_io.read(f.fileno(), flat, data_off, repr(path))
        except BaseException as err:  # noqa: BLE001
            if f is not None:
                f.close()
            return self._refused(key, err)
        return self._start(_Op(self, "get", key, rid, f, keep=flat, meta=meta, result=result, finish=finish))

    def _finish(self, op: "_Op") -> None:
        """Completes op (its request has finished): renames a put into place, checks a get's header."""
        try:
            self._entry_io.poller.take(op.rid)
        except BaseException as err:  # noqa: BLE001
            error: Optional[BaseException] = type(err)(f"TensorStore entry {op.key!r}: {err}") \
                if isinstance(err, (HaulerIOError, OutOfRange)) else err
        else:
            error = None
        try:
            op.file.close()
        except HaulerIOError as err:
            error = error or err
        if op.kind == "put":
            if error is None:
                try:
                    os.replace(op.tmp, op.final)
                except OSError as err:
                    error = HaulerIOError(f"TensorStore put of {op.key!r}: rename into place failed: {err}")
            if error is not None:
                _unlink(op.tmp)
            with self._lock:
                self._reserved -= op.file_bytes
                if error is None:
                    old = self._entries.get(op.key)
                    self._entries[op.key] = _Entry(op.key, op.file_bytes, op.pin or bool(old and old.pinned),
                                                   time.monotonic(), op.meta)
        elif error is None:
            path = self._path(op.key)
            try:
                got = _parse_header(op.finish(), path)
                if got["key"] != op.key or int(got["nbytes"]) != int(op.meta["nbytes"]) or \
                        int(got["offset"]) != int(op.meta["offset"]) or got["version"] != PADDED:
                    raise CorruptEntry(f"{path}: its header (key {got['key']!r}, {got['nbytes']} bytes at "
                                       f"{got['offset']}) is not the one stored for key {op.key!r}")
            except CorruptEntry as err:
                error = err
            except (KeyError, ValueError, TypeError) as err:  # a header missing a field
                error = CorruptEntry(f"{path}: header does not parse ({err!r})")
        with self._ops_lock:
            if self._inflight.get(op.key) is op:
                del self._inflight[op.key]
        self._key_lock(op.key).release()  # taken by _inline_claim; before the future's callbacks run
        fut, result = op.fut, op.result
        # no cycle op <-> future: a get's memory must go back (to the recycler) when its tensor
        # dies, not when the cyclic garbage collector runs
        op.keep = op.result = op.finish = op.fut = fut._op = None
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def _claim(self, op: "_Op") -> bool:
        """Takes op off the list of unfinished ones; True for the one caller that finishes it."""
        with self._ops_lock:
            return self._ops.pop(op.rid, None) is op

    def _poll(self) -> None:
        """Finishes every inline request whose I/O is over (never sleeps)."""
        if not self._ops:
            return
        io = self._entry_io
        with self._ops_lock:
            ops = list(self._ops.values())
        for op in ops:
            if io.poller.done(op.rid) and self._claim(op):
                self._finish(op)

    def _wait(self, op: "_Op", timeout: Optional[float]) -> bool:
        """Waits up to timeout for op's I/O and finishes it (or lets the thread that claimed it,
        and super().result() waits for that one); False when the time ran out."""
        if not self._entry_io.poller.wait(op.rid, -1.0 if timeout is None else max(0.0, timeout)):
            return False
        if self._claim(op):
            self._finish(op)
        return True

    def _settle(self, key: str) -> None:
        """Waits until key has no inline request in flight."""
        op = self._inflight.get(key)
        fut = op.fut if op is not None else None
        if fut is not None:
            fut.exception()

    def _settle_all(self) -> None:
        with self._ops_lock:
            ops = list(self._ops.values())
        for fut in [op.fut for op in ops]:
            if fut is not None:
                fut.exception()

    def _drive_loop(self) -> None:
        # finishes requests nobody waits for (their futures' callbacks, concurrent.futures.wait)
        while True:
            self._wake.wait(DRIVE_S)
            with self._ops_lock:
                if not self._ops:
                    self._driver = None
                    return
            try:
                self._poll()
            except Exception:  # noqa: BLE001 - a request's error belongs to its future
                pass

    # -- delete / close
    def delete(self, key: str) -> None:
        """Removes ``key`` (KeyError if absent)."""
        self._settle(key)
        with self._key_lock(key):
            with self._lock:
                if key not in self._entries:
                    raise KeyError(key)
                del self._entries[key]
            self._retire(self._path(key))

    def discard(self, key: str) -> None:
        """Removes ``key`` if present."""
        try:
            self.delete(key)
        except KeyError:
            pass

    def discard_later(self, key: str) -> "concurrent.futures.Future":
        """discard(key) on a thread of the store's own (unlinking a large file can take
        milliseconds: hauler.offload frees its entries this way, off the backward pass). A put of
        the same key submitted after it runs after it; close() waits for it. In an inline store with
        keep_files and nothing in flight on the key, the entry is set aside here and now (a rename:
        cheaper than waking the deleting thread)."""
        if self._keep_files and self._inline_free(key):
            with self._lock:
                idle = key not in self._deleting
            if idle:
                fut = concurrent.futures.Future()
                try:
                    self.discard(key)
                except BaseException as e:  # noqa: BLE001 - carried by the future, as on the thread
                    fut.set_exception(e)
                else:
                    fut.set_result(None)
                return fut
        fut = self._deleter.submit(self.discard, key)
        self._track(self._deleting, key, fut)
        return fut

    def close(self) -> None:
        """Waits for pending puts/gets/deletions, stops the worker threads, removes spare files."""
        self._settle_all()
        with self._ops_lock:
            driver = self._driver
        if driver is not None:
            self._wake.set()
            driver.join()
            self._wake.clear()
        self._pool.shutdown(wait=True)
        self._deleter.shutdown(wait=True)
        with self._lock:
            spares, self._spares, self._spare_bytes = self._spares, [], 0
        for path, _ in spares:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "TensorStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
