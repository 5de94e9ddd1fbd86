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
CRC-32C (hauler's core: SSE4.2 where the CPU has it, with the GIL released); version-1 entries, written with zlib's crc32, still verify.

With ``capacity`` (bytes of data and headers), a put that would exceed it first evicts unpinned
entries, least recently used first; if that cannot make room the put raises
:class:`CapacityExceeded` and stores nothing. ``pin(key)`` protects an entry from eviction.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import threading
import re
import time
import uuid
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from . import _buffers
from ._fileio import File
from ._store_format import (HEADER, PADDED, SPARE, SUFFIX, CorruptEntry, aligned_empty, check_shape, check_size,
                            checksum, data_offset, entry_file_size, header, parse_header, read_entry, unlink_quietly)
from ._store_inline import InlineRequests, Op
from ._store_lock import MARK, StoreLock, StoreLocked, UnsafeDirectory, check_file_mode, private_dir
from ._store_recycler import Recycler
from .errors import HaulerIOError, InvalidArgument

__all__ = ["TensorStore", "CorruptEntry", "CapacityExceeded", "StoreLocked", "UnsafeDirectory"]

_ENTRY = re.compile(r"[0-9a-f]{40}" + re.escape(SUFFIX))


class CapacityExceeded(HaulerIOError):
    """A put that does not fit in the store's capacity even after evicting unpinned entries."""


@dataclass
class _Entry:
    key: str
    file_bytes: int
    pinned: bool = False
    last_use: float = 0.0
    meta: Optional[Dict[str, Any]] = None  # the header of a padded (version 3) entry: gets go inline


_STORES: "weakref.WeakSet[TensorStore]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._fresh_workers()


os.register_at_fork(after_in_child=_after_fork_in_child)


class TensorStore(InlineRequests):
    """Tensors and numpy arrays on disk by key (see the module doc).

    ``directory`` is created if needed; entries already there are found again. ``capacity``:
    bytes (None: unlimited). ``threads``: puts/gets run at once. ``direct``: as for
    :class:`hauler.io.File` (None: O_DIRECT where the file system allows it). ``sync``: fsync
    each entry and the directory (durability; off for scratch data). ``checksum``: store a CRC-32C
    and verify it on read (on by default; hauler.offload turns it off for its scratch entries,
    sizes and headers are still checked). ``recycle``: bytes of memory of freed torch values
    that get keeps for later gets of the same size (0: none; hauler.offload keeps some).
    ``keep_files``: bytes of files of deleted entries kept (renamed aside) and overwritten by later
    puts: writing over allocated blocks needs no block allocation and no io_uring worker hand-off;
    with a capacity they count against it and go before any entry is evicted. Gets and deletes of one key take
    its lock, so a file is never reused under a get still reading it.

    ``inline=True`` (needs ``sync`` and ``checksum`` off): a put or a get is submitted by the calling
    thread as one request on a polled io_uring and finished by whichever thread next calls the
    store or waits on a future (or, for futures nobody waits on, by a thread of the store's every
    DRIVE_S): no worker thread wakes per request. Such entries are padded to whole 4 KiB blocks
    (header version 3). Entries put another way, a get into ``out`` and a put or get of a key with
    a request in flight take the worker threads. Off by default: the I/O alone is faster and
    cheaper inline, but its submission runs on the calling thread, so with a core free the worker
    threads hide it better (see docs/io.md). ``io_path`` says which path puts take and why."""

    def __init__(self, directory: Any, capacity: Optional[int] = None, threads: int = 4,
                 direct: Optional[bool] = None, sync: bool = True, checksum: bool = True,
                 recycle: int = 0, keep_files: int = 0, inline: bool = False, *,
                 read_only: bool = False, file_mode: int = 0o600, repair: bool = False):
        self.directory = os.fspath(directory)
        self.file_mode = check_file_mode(file_mode)
        self.read_only = bool(read_only)
        if self.read_only and repair:
            raise InvalidArgument("repair=True deletes files: it needs a writing store, not read_only=True")
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
        self.untrusted: List[Any] = []   # (path, reason) of files the last open did not trust
        if self.read_only:
            if not os.path.isdir(self.directory):
                raise InvalidArgument(f"TensorStore directory {self.directory!r} does not exist (read_only=True "
                                      f"opens an existing store)")
        private_dir(self.directory, self.file_mode, "TensorStore directory")
        self._owner = StoreLock(self.directory, self.read_only, self.file_mode, "TensorStore")
        self._closed = False
        try:
            self._fresh_workers()
            self._scan(bool(repair))
        except BaseException:
            self._owner.release()
            raise
        weakref.finalize(self, self._owner.release)   # a store never closed lets go when collected
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
        self._recycler = Recycler(self._recycle)  # its lock too
        # (path, bytes) of spare files; a forked child starts without (the parent reuses them)
        self._spares: List[Any] = []
        self._spare_bytes = 0
        # inline requests (the parent's never finish in a forked child: they are dropped)
        self._entry_io: Any = None
        self._inline_why = "" if self._inline else "inline=False"
        self._ops_lock = threading.Lock()
        self._ops: Dict[int, Op] = {}        # request id -> op, until finished
        self._inflight: Dict[str, Op] = {}   # key -> its inline op
        self._driver: Optional[threading.Thread] = None
        self._wake = threading.Event()        # set by close(): the polling thread ends at once

    # -- bookkeeping
    def _path(self, key: str) -> str:
        return os.path.join(self.directory, hashlib.sha1(key.encode()).hexdigest() + SUFFIX)

    def _scan(self, repair: bool) -> None:
        mine = self._owner.id
        own_tmp = re.compile(r"[0-9a-f]{40}\.(tmp\.)?%s-[0-9a-f]{8}(%s|%s)" % (mine, re.escape(SUFFIX), re.escape(SPARE))) \
            if mine and not self.read_only else None
        for name in sorted(os.listdir(self.directory)):
            p = os.path.join(self.directory, name)
            if name == MARK or os.path.isdir(p):
                continue
            if own_tmp is not None and own_tmp.fullmatch(name) and (".tmp." in name) == name.endswith(SUFFIX):
                unlink_quietly(p)   # this store's interrupted put (the previous value is intact) or spare
                continue
            why = self._distrust(name, p)
            if why is None:
                continue
            if repair and (name.endswith(SUFFIX) or name.endswith(SPARE)):
                unlink_quietly(p)
                why += "; removed (repair=True)"
            self.untrusted.append((p, why))
        odd = [u for u in self.untrusted if u[0].endswith(SUFFIX) or u[0].endswith(SPARE)]
        if odd and not repair:   # files that look like a store's: other files are only listed
            warnings.warn(f"TensorStore {self.directory!r}: {len(odd)} file(s) named like entries are not entries "
                          f"of this store and were left alone (see store.untrusted; repair=True removes them): "
                          f"{odd[0][0]!r}: {odd[0][1]}", stacklevel=3)

    def _distrust(self, name: str, p: str) -> Optional[str]:
        """Records the entry at p and returns None, or says why p is not trusted as an entry."""
        if not _ENTRY.fullmatch(name):
            return "not named like an entry of this store (another store's temporary or spare file, or not hauler's)"
        try:
            with open(p, "rb") as f:
                meta = parse_header(f.read(HEADER), p)
            size = os.path.getsize(p)
        except (OSError, CorruptEntry) as e:
            return f"header unreadable ({e})"
        if not isinstance(meta["key"], str) or os.path.basename(self._path(meta["key"])) != name:
            return f"holds key {meta['key']!r}, whose entry has another name (copied or renamed)"
        try:
            want = entry_file_size(meta)
        except (TypeError, ValueError):
            return "header has a non-numeric size or offset"
        if size != want:
            return f"{size} bytes on disk, the header says {want}"
        self._entries[meta["key"]] = _Entry(meta["key"], size, False, time.monotonic(),
                                            meta if meta["version"] == PADDED else None)
        return None

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
        self._writing("put")
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
        if deleting is not None:
            deleting.result()   # a discard_later of this key submitted before this put
        self._settle(key)
        data_off = data_offset(flat)
        meta = dict(meta, checksum="crc32c" if self._checksum else None, offset=data_off,
                    crc=checksum("crc32c", flat) if self._checksum else None)
        file_bytes = data_off + flat.nbytes
        with self._key_lock(key):
            spare = self._reserve_with_spare(key, file_bytes, pin)
            final = self._path(key)
            tmp = self._tmp_path(final)
            ok = False
            try:
                with self._file_for(tmp, file_bytes, spare) as f:
                    f.write(header(meta), offset=0)
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
                    unlink_quietly(tmp)
                self._put_done(key, file_bytes, pin, ok)
        del keep

    def _tmp_path(self, final: str) -> str:
        """Where a put of the entry at final writes before it is renamed into place (the name
        carries the store's id: cleanup at open removes only its own)."""
        return f"{final[:-len(SUFFIX)]}.tmp.{self._owner.id}-{uuid.uuid4().hex[:8]}{SUFFIX}"

    def _reserve_with_spare(self, key: str, file_bytes: int, pin: bool) -> Any:
        """Takes a spare file for the put (or None) and reserves its bytes; when the put does not
        fit, the spare goes back and CapacityExceeded is raised."""
        spare = self._take_spare(file_bytes)   # before _reserve: it becomes this put's bytes
        try:
            self._reserve(key, file_bytes, pin)
        except BaseException:
            if spare is not None:
                with self._lock:
                    self._spares.append(spare)
                    self._spare_bytes += spare[1]
            raise
        return spare

    def _put_done(self, key: str, file_bytes: int, pin: bool, ok: bool, meta: Any = None) -> None:
        """Releases a finished put's reservation and, when it succeeded, records the entry (pinned
        when this put or the value it replaced asked so)."""
        with self._lock:
            self._reserved -= file_bytes
            if ok:
                old = self._entries.get(key)
                self._entries[key] = _Entry(key, file_bytes, pin or bool(old and old.pinned),
                                            time.monotonic(), meta)

    def _open_entry(self, key: str) -> Any:
        """key's entry file, open for reading (its last use noted); KeyError when there is none."""
        path = self._path(key)
        with self._lock:
            e = self._entries.get(key)
            if e is not None:
                e.last_use = time.monotonic()
        try:
            return File(path, "r", direct=self._direct)
        except HaulerIOError:
            if not os.path.exists(path):
                raise KeyError(key) from None
            raise

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
        f = File(tmp, "x", direct=self._direct)
        os.chmod(tmp, self.file_mode)   # whatever the umask; made just now (O_EXCL) in a directory of ours
        return f

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
                spare = f"{path[:-len(SUFFIX)]}.{self._owner.id}-{uuid.uuid4().hex[:8]}{SPARE}"
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

    def _get(self, key: str, out: Any = None) -> Any:
        self._settle(key)
        with self._key_lock(key):  # a delete waits: the file may be reused once deleted
            return self._get_locked(key, out)

    def _get_locked(self, key: str, out: Any) -> Any:
        path = self._path(key)
        with self._open_entry(key) as f:
            size = f.size()
            if size < HEADER:
                raise CorruptEntry(f"{path}: {size} bytes, shorter than the {HEADER}-byte header (key {key!r})")
            h = aligned_empty(HEADER)
            read_entry(f, h, 0, key)
            meta = parse_header(h.tobytes(), path)
            if meta["key"] != key:
                raise CorruptEntry(f"{path}: holds key {meta['key']!r}, not {key!r}")
            data_off = int(meta.get("offset", HEADER))  # entries from before "offset" start at HEADER
            if not HEADER <= data_off < 2 * HEADER:
                raise CorruptEntry(f"{path}: bad data offset {data_off} in the header (key {key!r})")
            check_size(path, key, size, entry_file_size(meta))
            result, flat = self._allocate(meta, out, path, data_off % HEADER)
            if flat.nbytes:
                read_entry(f, flat, data_off, key)
        algorithm = meta["checksum"]
        if algorithm is None:  # stored by a store with checksum=False
            return result
        crc = checksum(algorithm, flat)
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
            check_shape(path, shape, dtype.itemsize, nbytes, dtype)
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
        except (TypeError, ValueError, SyntaxError):
            raise CorruptEntry(f"{path}: unknown numpy dtype {meta['dtype']!r}") from None
        if dtype.hasobject or dtype.itemsize == 0:
            raise CorruptEntry(f"{path}: dtype {meta['dtype']!r} holds Python objects or no bytes; a put never "
                               f"writes one")
        check_shape(path, shape, dtype.itemsize, nbytes, dtype)
        if out is not None:
            o = np.asarray(out)
            if o.dtype != dtype or o.shape != shape or not o.flags.c_contiguous or not o.flags.writeable:
                raise InvalidArgument(f"out must be a writable C-contiguous {dtype} array of shape {shape}")
            return o, o.reshape(-1).view(np.uint8)
        flat = aligned_empty(nbytes, phase if phase % dtype.alignment == 0 else 0)
        return flat.view(dtype).reshape(shape), flat

    # -- delete / close
    def delete(self, key: str) -> None:
        """Removes ``key`` (KeyError if absent)."""
        self._writing("delete")
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

    def _writing(self, what: str) -> None:
        if self.read_only:
            raise InvalidArgument(f"TensorStore {self.directory!r} is open read_only=True: no {what}")

    def close(self) -> None:
        """Waits for pending puts/gets/deletions, stops the worker threads, removes spare files,
        releases the directory's lock."""
        if self._closed:
            return
        self._closed = True
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
        self._owner.release()

    def __enter__(self) -> "TensorStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
