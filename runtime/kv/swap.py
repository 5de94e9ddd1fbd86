"""Swap tiers for paged KV cache: ``hauler.kv.SwapSpace``.

    space = kv.SwapSpace(host_bytes=8 << 30, path="/nvme/swap", ssd_bytes=64 << 30)
    space.swap_out("req7", layout, blocks, num_tokens=1000).result()   # live cache -> host
    ...                                                                # the blocks are reused
    space.swap_in("req7", layout, new_blocks).result()                 # host (or SSD) -> live cache

A request's blocks are kept as one block group per tier (FastSwitch): one contiguous host region
(page-aligned; registered with the GPU when the live cache is on one) holding the blocks in the
request's order, each block contiguous over all layers and planes (so the blocks added by a later
turn append to the region and the blocks already saved stay where they are), and one TensorStore
entry on the SSD (atomic replace, capacity; a CRC-32C the space computes while the write runs and
checks after every read). Moves between the live cache and the region
are single ``kv.copy_blocks`` plans over the whole group.

Multi-turn reuse: KV paging is append-only, so the space remembers how many tokens of a request
it holds; a later swap-out writes only the blocks from the one holding the first new token on,
plus the positions named in ``dirty=``. A swap-in of a request whose copy is in host memory never
touches the SSD, and the copies stay after a swap-in (``release=True`` drops them), so the next
swap-out of the same request writes only what is new.

Host memory is bounded by ``host_bytes``: room is made by moving the least recently used copies
to the SSD (unless their SSD copy is already current); when neither tier has room the operation
raises :class:`SwapSpaceFull` and changes nothing. Operations return real
``concurrent.futures.Future`` objects; operations on one request run in the order they were
called, operations on different requests overlap.
"""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Hashable, Iterable, List, Optional, Tuple

import numpy as np

from .. import _buffers
from ..errors import BufferTooSmall, HaulerError, HaulerIOError, InvalidArgument, OutOfRange
from ..tensorstore import CorruptEntry

__all__ = ["SwapSpace", "SwapSpaceFull", "UnknownRequest"]

PAGE = 4096
ALL = np.zeros(0, np.int64)   # dirty="all": every block rewritten


class SwapSpaceFull(HaulerIOError):
    """Neither the host tier nor the SSD tier has room for a block group; nothing was changed."""


class UnknownRequest(HaulerError, KeyError):
    """A request the swap space holds no copy of."""

    def __str__(self) -> str:   # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def _signature(layout: Any) -> Tuple[Any, ...]:
    """What the block group's bytes depend on: the same signature reads back into any layout."""
    return (str(layout.dtype), int(layout.elem_size), int(layout.num_layers), int(layout.num_planes),
            int(layout.block_size), int(layout.num_heads), int(layout.head_size))


def _describe_sig(sig: Tuple[Any, ...]) -> str:
    dtype, _, layers, planes, bs, heads, hs = sig
    return f"{dtype}, {layers} layers x {planes} planes, {bs}-token blocks, {heads} heads x {hs}"


def _aligned(nbytes: int) -> np.ndarray:
    """nbytes (rounded up to whole pages) of page-aligned memory."""
    n = max(PAGE, -(-nbytes // PAGE) * PAGE)
    raw = np.empty(n + PAGE, dtype=np.uint8)
    start = (-raw.ctypes.data) % PAGE
    return raw[start:start + n]


def _block_ids(blocks: Any, num_blocks: int, what: str, within: str = "the cache's") -> np.ndarray:
    """blocks as int64, every id in [0, num_blocks) (OutOfRange naming the first bad one)."""
    if _buffers.is_torch_tensor(blocks):
        blocks = blocks.detach().cpu().numpy()
    try:
        a = np.asarray(blocks)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{what} must be a sequence of block ids: {e}") from None
    if a.ndim != 1:
        raise InvalidArgument(f"{what} must be one-dimensional, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise InvalidArgument(f"{what} must hold integers, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    bad = np.flatnonzero((a < 0) | (a >= num_blocks))
    if bad.size:
        i = int(bad[0])
        raise OutOfRange(f"{what}[{i}] = {int(a[i])} is outside {within} {num_blocks} blocks")
    return a


@dataclass
class _Copy:
    """One request's swapped block group."""
    request: Hashable
    key: str                       # its TensorStore key
    sig: Tuple[Any, ...]
    block_bytes: int
    nblocks: int = 0               # blocks of the group
    tokens: int = 0                # tokens the group holds (the dirty-tracking mark)
    host: Optional[np.ndarray] = None   # the host region (capacity >= nblocks * block_bytes)
    host_ptr: Optional[int] = None      # the region's device mapping when registered with the GPU
    ssd_blocks: int = 0            # blocks of the SSD entry (0: none)
    ssd_current: bool = False      # the SSD entry holds the same bytes as the group
    crc: Optional[List[int]] = None   # CRC-32C of each CRC_CHUNK of the SSD entry's bytes
    last_use: float = 0.0
    pinned: bool = False           # its regions are registered with the GPU (a device cache)
    valid: bool = False            # a swap-out completed (False while the first one runs)
    error: Optional[BaseException] = None   # why the last swap-out left no copy
    tail: Optional[concurrent.futures.Future] = None   # the last operation submitted on it

    def __post_init__(self) -> None:
        self.lock = threading.Lock()   # held by whoever moves its bytes (operations, eviction)

    @property
    def nbytes(self) -> int:
        return self.nblocks * self.block_bytes

    @property
    def host_capacity(self) -> int:
        return 0 if self.host is None else int(self.host.nbytes)


class SwapSpace:
    """Swap-out and swap-in of requests' KV blocks between a live cache and host memory and SSD.

    ``host_bytes``: the host tier's budget (block group regions, page-rounded). ``path``: a
    directory on the SSD (None: no SSD tier); the space keeps its files in a fresh subdirectory
    removed by :meth:`close`. ``ssd_bytes``: the SSD tier's budget (None: the file system's room).
    ``threads``: operations running at once. ``direct``, ``checksum``: as for
    :class:`hauler.io.TensorStore`. ``sync``: fsync each SSD copy (off: swap files do not outlive
    the process, atomic replacement still holds). ``keep_files``: bytes of dropped SSD copies'
    files kept and overwritten by later ones (no block allocation; they count against
    ``ssd_bytes`` and go first when room is needed). Freed host regions are kept within
    ``host_bytes`` for later groups of the same size (no page faults, no new GPU registration).
    """

    def __init__(self, host_bytes: int, path: Any = None, ssd_bytes: Optional[int] = None,
                 threads: int = 2, direct: Optional[bool] = None, checksum: bool = True, sync: bool = False,
                 keep_files: int = 1 << 30):
        self.host_bytes = _buffers.as_int("host_bytes", host_bytes, 0)
        self.ssd_bytes = None if ssd_bytes is None else _buffers.as_int("ssd_bytes", ssd_bytes, 0)
        if path is None and ssd_bytes:
            raise InvalidArgument(f"ssd_bytes={ssd_bytes} needs path= (a directory on the SSD)")
        self._threads = _buffers.as_int("threads", threads, 1)
        self._store = None
        self._dir: Optional[str] = None
        if path is not None:
            from ..tensorstore import TensorStore
            root = os.fspath(path)
            try:
                os.makedirs(root, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise InvalidArgument(f"swap path {root!r}: it or a parent is a file, not a directory") from None
            self._dir = tempfile.mkdtemp(prefix="hauler-kvswap-", dir=root)
            # the checksum is the space's own (kept in memory: the files die with it), computed while
            # the store writes instead of before, and verified after each read
            self._store = TensorStore(self._dir, capacity=self.ssd_bytes, threads=self._threads, direct=direct,
                                      sync=sync, checksum=False, keep_files=keep_files)
        self._checksum = bool(checksum)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self._threads,
                                                           thread_name_prefix="hauler-kvswap")
        self._crc_pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                                                               thread_name_prefix="hauler-kvswap-crc")
        self._lock = threading.RLock()   # the table, the budget, the counters (reentrant: a done callback may run inside)
        self._copies: Dict[Hashable, _Copy] = {}
        self._host_used = 0                    # bytes of host regions in use, reservations included
        # freed regions by size, kept within the budget for the next ones of that size (no page
        # faults, no new GPU registration); dropped when new memory needs their room
        self._free: Dict[int, List[Tuple[np.ndarray, Optional[int]]]] = {}
        self._free_bytes = 0
        self._serial = 0
        self._closed = False
        self._counters: Dict[str, int] = dict.fromkeys(
            ("swap_outs", "swap_ins", "out_bytes", "out_blocks", "out_skipped_bytes", "in_bytes", "in_blocks",
             "host_hits", "ssd_hits", "ssd_write_bytes", "ssd_writes", "ssd_read_bytes", "ssd_reads",
             "evictions", "evictions_clean", "prefetches", "prefetch_hits", "host_copy_bytes"), 0)

    # -- public API ------------------------------------------------------------------------------
    def swap_out(self, request: Hashable, layout: Any, blocks: Any, num_tokens: Optional[int] = None,
                 dirty: Any = None) -> "concurrent.futures.Future":
        """Saves the request's blocks (``blocks``: its live block ids in token order) to the host
        tier. ``num_tokens``: tokens the blocks hold (default: all of them full); the blocks must
        be exactly the ones holding them. ``dirty``: None (write the blocks holding tokens not
        saved before), "all" (rewrite everything), or positions in ``blocks`` rewritten as well.
        The live blocks must not change until the future is done; it gives the bytes copied out of
        the live cache. Bad arguments raise here, before anything moves."""
        self._check_open()
        ids = _block_ids(blocks, int(layout.num_blocks), "blocks")
        bs = int(layout.block_size)
        tokens = ids.size * bs if num_tokens is None else _buffers.as_int("num_tokens", num_tokens, 0)
        if -(-tokens // bs) != ids.size:
            raise InvalidArgument(f"num_tokens={tokens} fills {-(-tokens // bs)} blocks of {bs} tokens, "
                                  f"but {ids.size} blocks were given")
        extra = self._dirty_positions(dirty, ids.size)
        sig = _signature(layout)
        with self._lock:
            c = self._copies.get(request)
            if c is None:
                self._serial += 1
                c = self._copies[request] = _Copy(request, f"kv{self._serial}", sig, int(layout.block_bytes))
            elif c.sig != sig:
                raise InvalidArgument(f"request {request!r} was swapped out from a cache of {_describe_sig(c.sig)}; "
                                      f"this layout is {_describe_sig(sig)}")
            return self._submit(c, self._swap_out, c, layout, ids, tokens, extra)

    def swap_in(self, request: Hashable, layout: Any, blocks: Any, release: bool = False) -> "concurrent.futures.Future":
        """Writes the request's saved blocks into the live cache's ``blocks`` (its new block ids, in
        token order; at least as many as it has saved). From host memory when the copy is there,
        else read from the SSD into host memory first. ``release``: drop the copies afterwards
        (otherwise they stay for the next swap-out of the request). The future gives the bytes
        copied into the live cache."""
        self._check_open()
        ids = _block_ids(blocks, int(layout.num_blocks), "blocks")
        sig = _signature(layout)
        with self._lock:
            c = self._known(request)
            if c.sig != sig:
                raise InvalidArgument(f"request {request!r} was swapped out from a cache of {_describe_sig(c.sig)}; "
                                      f"this layout is {_describe_sig(sig)}")
            return self._submit(c, self._swap_in, c, layout, ids, bool(release))

    def prefetch(self, request: Hashable) -> "concurrent.futures.Future":
        """Brings the request's copy from the SSD into host memory ahead of its swap-in (nothing
        when it is there already). The future gives the bytes read from the SSD."""
        self._check_open()
        with self._lock:
            c = self._known(request)
            return self._submit(c, self._prefetch, c)

    def evict(self, request: Hashable) -> "concurrent.futures.Future":
        """Moves the request's copy from host memory to the SSD now (frees its host region). The
        future gives the bytes written to the SSD (0 when its SSD copy was current)."""
        self._check_open()
        if self._store is None:
            raise InvalidArgument("this SwapSpace has no SSD tier (path=None)")
        with self._lock:
            c = self._known(request)
            return self._submit(c, self._evict_op, c)

    def discard(self, request: Hashable) -> None:
        """Drops every copy of the request (after its operations in flight); KeyError-compatible
        UnknownRequest when there is none."""
        with self._lock:
            c = self._known(request)
            tail = c.tail
        if tail is not None:
            concurrent.futures.wait([tail])
        with c.lock:
            self._drop(c)
            with self._lock:
                if self._copies.get(request) is c:
                    del self._copies[request]

    def location(self, request: Hashable) -> str:
        """"host", "ssd", "host+ssd" (both current) or "pending" (its first swap-out runs)."""
        with self._lock:
            c = self._known(request)
            if not c.valid:
                return "pending"
            where = (["host"] if c.host is not None else []) + (["ssd"] if c.ssd_current else [])
            return "+".join(where)

    def ssd_path(self, request: Hashable) -> Optional[str]:
        """The file of the request's SSD copy (None when it has none)."""
        with self._lock:
            c = self._known(request)
            return self._store._path(c.key) if c.ssd_blocks and self._store is not None else None

    def saved_tokens(self, request: Hashable) -> int:
        with self._lock:
            return self._known(request).tokens

    def requests(self) -> List[Hashable]:
        with self._lock:
            return list(self._copies)

    def __contains__(self, request: Hashable) -> bool:
        with self._lock:
            return request in self._copies

    @property
    def counters(self) -> Dict[str, int]:
        """Operations, bytes and blocks moved per tier, hits; host_used_bytes and ssd_used_bytes."""
        with self._lock:
            d = dict(self._counters)
            d["host_used_bytes"] = self._host_used
            d["host_free_bytes"] = self._free_bytes
        d["ssd_used_bytes"] = self._store.used_bytes if self._store is not None else 0
        return d

    @property
    def directory(self) -> Optional[str]:
        """Where the SSD copies are (None: no SSD tier)."""
        return self._dir

    def close(self) -> None:
        """Waits for the operations in flight, frees the host regions and removes the SSD files."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        self._crc_pool.shutdown(wait=True)
        with self._lock:
            copies = list(self._copies.values())
            self._copies.clear()
        for c in copies:
            self._set_host(c, None, None)
        with self._lock:
            self._drop_free(self.host_bytes + 1)
        if self._store is not None:
            self._store.close()
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "SwapSpace":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- bookkeeping -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument("this SwapSpace is closed")

    def _known(self, request: Hashable) -> _Copy:
        c = self._copies.get(request)
        if c is None:
            raise UnknownRequest(f"request {request!r} has no swapped copy (known: {len(self._copies)} requests)")
        return c

    @staticmethod
    def _dirty_positions(dirty: Any, n: int) -> Optional[np.ndarray]:
        """None (tracked), or the positions to rewrite (all of them for "all")."""
        if dirty is None:
            return None
        if isinstance(dirty, str):
            if dirty != "all":
                raise InvalidArgument(f"dirty must be None, 'all' or block positions, got {dirty!r}")
            return ALL
        return np.unique(_block_ids(sorted(dirty) if isinstance(dirty, (set, frozenset)) else dirty, n, "dirty",
                                    "the request's"))

    def _submit(self, c: _Copy, fn: Any, *args: Any) -> "concurrent.futures.Future":
        """Runs fn(*args) after the operations submitted before on the same request (self._lock held)."""
        box: List[Any] = []
        fut = self._pool.submit(self._run, c.tail, box, c, fn, args)
        box.append(fut)   # before _run's last step: it takes self._lock, held here
        c.tail = fut
        return fut

    def _run(self, prev: Any, box: List[Any], c: _Copy, fn: Any, args: Tuple[Any, ...]) -> Any:
        if prev is not None:
            # submitted earlier to the same FIFO pool: it runs already or is done
            concurrent.futures.wait([prev])
        try:
            with c.lock:
                try:
                    return fn(*args)
                except BaseException as e:
                    if not c.valid:
                        c.error = e
                    raise
        finally:
            # a request left without a copy (its first swap-out failed, a release) and nothing
            # submitted after: unknown again, before the future says done
            with self._lock:
                if not c.valid and c.tail is box[0] and self._copies.get(c.request) is c:
                    del self._copies[c.request]

    def _crcs(self, buf: np.ndarray) -> List[int]:
        """The CRC-32C of each CRC_CHUNK of buf, the chunks spread over the cores (GIL released)."""
        chunks = [buf[i:i + CRC_CHUNK] for i in range(0, buf.nbytes, CRC_CHUNK)] or [buf]
        if len(chunks) == 1:
            return [_crc(chunks[0])]
        return list(self._crc_pool.map(_crc, chunks))

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                self._counters[k] += v

    # -- host tier -------------------------------------------------------------------------------
    def _take_region(self, c: _Copy, size: int) -> Tuple[np.ndarray, Optional[int]]:
        """A page-aligned region of size bytes counted against the host budget: a freed one of that
        size when there is one (no page faults, no new GPU registration), else new memory, making
        room first (SwapSpaceFull when none can be made)."""
        with self._lock:
            free = self._free.get(size)
            reused = bool(free)
            if reused:
                region, ptr = free.pop()
                if not free:
                    del self._free[size]
                self._free_bytes -= size
                self._host_used += size
        if not reused:
            self._reserve_host(c, size)
            region, ptr = _aligned(size), None
        if ptr is None and c.pinned:
            from .. import _require_core, cuda_available
            if cuda_available():   # pinned: the device copies it as one DMA per plan
                ptr = int(_require_core().host_register(region.ctypes.data, region.nbytes, False))
        return region, ptr

    def _give_region(self, region: np.ndarray, ptr: Optional[int]) -> None:
        """Back to the free regions; its bytes leave the budget's used part."""
        with self._lock:
            self._host_used -= region.nbytes
            self._free_bytes += region.nbytes
            self._free.setdefault(region.nbytes, []).append((region, ptr))

    def _drop_free(self, nbytes: int) -> None:
        """Frees free regions until nbytes more fit in the budget (self._lock held)."""
        while self._free_bytes and self._host_used + self._free_bytes + nbytes > self.host_bytes:
            size = max(self._free)
            region, ptr = self._free[size].pop()
            if not self._free[size]:
                del self._free[size]
            self._free_bytes -= size
            if ptr is not None:
                from .. import _require_core
                _require_core().host_unregister(region.ctypes.data)

    def _reserve_host(self, c: _Copy, nbytes: int) -> None:
        """Reserves nbytes more of the host budget for c, moving other requests' copies (least
        recently used first) to the SSD while it does not fit; SwapSpaceFull when nothing can go."""
        with self._lock:
            movable = 0 if self._store is None else sum(
                o.host_capacity for o in self._copies.values() if o is not c and o.host is not None)
            if self._host_used - movable + nbytes > self.host_bytes:
                raise SwapSpaceFull(
                    f"request {c.request!r} needs {nbytes} bytes of host memory: host tier {self._host_used} of "
                    f"{self.host_bytes} bytes used, {movable} of them movable to the SSD"
                    f"{'' if self._store is not None else ' (no SSD tier: path=None)'}; nothing was changed")
        tried: set = set()
        while True:
            with self._lock:
                self._drop_free(nbytes)
                if self._host_used + self._free_bytes + nbytes <= self.host_bytes:
                    self._host_used += nbytes
                    return
                cands = [] if self._store is None else sorted(
                    (o for o in self._copies.values() if o is not c and o.host is not None and id(o) not in tried),
                    key=lambda o: o.last_use)
                used = self._host_used
            victim = next((o for o in cands if o.lock.acquire(blocking=False)), None)
            if victim is None:
                why = "no SSD tier (path=None)" if self._store is None else "no other copy can move to the SSD now"
                raise SwapSpaceFull(f"request {c.request!r} needs {nbytes} bytes of host memory: host tier {used} of "
                                    f"{self.host_bytes} bytes used, {why}; nothing was changed")
            tried.add(id(victim))
            try:
                if victim.host is not None:
                    self._to_ssd(victim, need_for=c)
            finally:
                victim.lock.release()

    def _set_host(self, c: _Copy, region: Optional[np.ndarray], ptr: Optional[int]) -> None:
        """Replaces c's host region (the old one goes to the free regions)."""
        if c.host is not None:
            self._give_region(c.host, c.host_ptr)
        c.host, c.host_ptr = region, ptr

    def _region_layout(self, c: _Copy, region: np.ndarray) -> Any:
        """The block group as a layout: block b, layer l, plane p at b*block_bytes + (l*planes+p)
        * piece, tokens, heads and dims packed inside (one block contiguous over all layers)."""
        from . import KVLayout
        dtype, es, layers, planes, bs, heads, hs = c.sig
        piece = bs * heads * hs * es
        base = int(region.ctypes.data)
        bases = [[base + (l * planes + p) * piece for p in range(planes)] for l in range(layers)]
        return KVLayout.explicit(dtype, layers, planes, max(1, region.nbytes // c.block_bytes), bs, heads, hs,
                                 bases, {"block": c.block_bytes, "token": heads * hs * es, "head": hs * es, "dim": es})

    # -- SSD tier --------------------------------------------------------------------------------
    def _to_ssd(self, c: _Copy, need_for: Optional[_Copy] = None) -> int:
        """Moves c's host copy to the SSD (c.lock held); returns the bytes written. Raises
        SwapSpaceFull when the SSD tier has no room, HaulerIOError when the write fails: the host
        copy stays then."""
        written = 0
        if not c.ssd_current:
            from ..tensorstore import CapacityExceeded
            try:
                # pinned: the store must never evict a request's only copy to make room
                fut = self._store.put(c.key, c.host[:c.nbytes], pin=True)
                try:
                    crc = self._crcs(c.host[:c.nbytes]) if self._checksum else None
                finally:
                    fut.result()
            except CapacityExceeded as e:
                who = f" (to make room for request {need_for.request!r})" if need_for is not None else ""
                raise SwapSpaceFull(f"moving request {c.request!r} ({c.nbytes} bytes) to the SSD tier{who}: "
                                    f"{e}; host tier {self._host_used} of {self.host_bytes} bytes used") from e
            except HaulerIOError as e:
                raise type(e)(f"moving request {c.request!r} to the SSD tier: {e}") from e
            c.ssd_blocks, c.ssd_current, c.crc = c.nblocks, True, crc
            written = c.nbytes
            self._count(ssd_write_bytes=written, ssd_writes=1, evictions=1)
        else:
            self._count(evictions=1, evictions_clean=1)
        self._set_host(c, None, None)
        return written

    def _read_ssd(self, c: _Copy, region: np.ndarray) -> int:
        """Reads c's SSD copy into the front of region; returns the bytes read."""
        n = c.ssd_blocks * c.block_bytes
        try:
            self._store.get(c.key, out=region[:n]).result()
        except KeyError:
            raise HaulerIOError(f"request {c.request!r}: its SSD copy {self._store._path(c.key)} is gone") from None
        except HaulerIOError as e:
            raise type(e)(f"request {c.request!r}: reading its SSD copy: {e}") from e
        if c.crc is not None:
            got = self._crcs(region[:n])
            bad = [i for i, (a, b) in enumerate(zip(got, c.crc)) if a != b]
            if bad:
                i = bad[0]
                raise CorruptEntry(f"{self._store._path(c.key)}: checksum mismatch for request {c.request!r} (crc32c "
                                   f"{got[i]:#010x} read, {c.crc[i]:#010x} written, bytes {i * CRC_CHUNK}.."
                                   f"{min(n, (i + 1) * CRC_CHUNK)} of the group); its SSD copy is damaged")
        self._count(ssd_read_bytes=n, ssd_reads=1)
        return n

    def _from_ssd(self, c: _Copy) -> int:
        """Reads c's SSD copy into a new host region (c.lock held); returns the bytes read."""
        region, ptr = self._take_region(c, _aligned_size(c.nbytes))
        try:
            n = self._read_ssd(c, region)
        except BaseException:
            self._give_region(region, ptr)
            raise
        c.host, c.host_ptr = region, ptr
        return n

    def _drop_ssd(self, c: _Copy) -> None:
        if c.ssd_blocks and self._store is not None:
            self._store.discard(c.key)
        c.ssd_blocks, c.ssd_current = 0, False

    def _drop(self, c: _Copy) -> None:
        self._set_host(c, None, None)
        self._drop_ssd(c)
        c.nblocks = c.tokens = 0
        c.valid = False

    # -- operations (run on the pool, c.lock held) ----------------------------------------------
    def _swap_out(self, c: _Copy, layout: Any, ids: np.ndarray, tokens: int, extra: Optional[np.ndarray]) -> int:
        from . import copy_blocks
        n, bb = int(ids.size), c.block_bytes
        # leading blocks of the saved group that stay valid: those before the one holding the
        # first new token (paged KV is append-only); all of them when no token is new
        keep = 0 if not c.valid or extra is ALL else \
            min(n if tokens <= c.tokens else c.tokens // int(layout.block_size), c.nblocks)
        region, ptr, grow = c.host, c.host_ptr, c.host is None or c.host.nbytes < n * bb
        if grow:
            c.pinned = c.pinned or bool(getattr(layout, "device", None))
            size = _aligned_size(n * bb)
            if c.host is not None:
                # a group growing turn after turn: room for the next turns (when the budget has it
                # without evicting), so they append in place instead of copying the group again
                roomy = _aligned_size(max(n * bb, c.host.nbytes * 3 // 2))
                with self._lock:
                    if self._host_used + roomy <= self.host_bytes:
                        size = roomy
            region, ptr = self._take_region(c, size)
        try:
            if grow:
                # the kept prefix comes from the old region, or from the SSD copy when only that exists
                if keep and c.host is not None:
                    region[:keep * bb] = c.host[:keep * bb]
                    self._count(host_copy_bytes=keep * bb)
                elif keep and c.ssd_current and c.ssd_blocks <= n:
                    self._read_ssd(c, region)
                else:
                    keep = 0
            write = np.arange(keep, n, dtype=np.int64)
            if extra is not None and extra is not ALL:
                write = np.union1d(write, extra[extra < keep])
            if write.size:
                copy_blocks(layout, self._region_layout(c, region), np.stack([ids[write], write], axis=1))
        except BaseException:
            if grow:
                self._give_region(region, ptr)
            raise
        if grow:
            self._set_host(c, region, ptr)
        if c.ssd_blocks and (write.size or n != c.ssd_blocks):
            self._drop_ssd(c)   # stale now: the host copy is the only one
        c.nblocks, c.tokens, c.valid, c.error = n, tokens, True, None
        c.last_use = time.monotonic()
        moved = int(write.size) * bb
        self._count(swap_outs=1, out_bytes=moved, out_blocks=int(write.size), out_skipped_bytes=n * bb - moved)
        return moved

    def _swap_in(self, c: _Copy, layout: Any, ids: np.ndarray, release: bool) -> int:
        from . import copy_blocks
        self._require_valid(c)
        if ids.size < c.nblocks:
            raise BufferTooSmall(f"request {c.request!r} has {c.nblocks} blocks saved ({c.tokens} tokens); "
                                 f"{ids.size} destination blocks were given")
        if c.host is not None:
            self._count(host_hits=1)
        else:
            self._from_ssd(c)
            self._count(ssd_hits=1)
        if c.nblocks:
            mapping = np.stack([np.arange(c.nblocks, dtype=np.int64), ids[:c.nblocks]], axis=1)
            copy_blocks(self._region_layout(c, c.host), layout, mapping)
        c.last_use = time.monotonic()
        moved = c.nbytes
        self._count(swap_ins=1, in_bytes=moved, in_blocks=c.nblocks)
        if release:
            self._drop(c)
        return moved

    def _prefetch(self, c: _Copy) -> int:
        self._require_valid(c)
        self._count(prefetches=1)
        if c.host is not None:
            self._count(prefetch_hits=1)
            return 0
        return self._from_ssd(c)

    def _evict_op(self, c: _Copy) -> int:
        self._require_valid(c)
        return 0 if c.host is None else self._to_ssd(c)

    @staticmethod
    def _require_valid(c: _Copy) -> None:
        if not c.valid:
            raise UnknownRequest(f"request {c.request!r} has no swapped copy"
                                 + (f" (its swap-out failed: {c.error})" if c.error is not None else ""))


CRC_CHUNK = 8 << 20   # a CRC-32C per piece of this size: the pieces are checked on several cores


def _crc(buf: np.ndarray) -> int:
    from .. import _require_core
    return int(_require_core().crc32c(buf))


def _aligned_size(nbytes: int) -> int:
    return max(PAGE, -(-nbytes // PAGE) * PAGE)
