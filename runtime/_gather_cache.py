"""hauler.gather's feature cache: rows of a file table kept in host memory in front of the file,
after LSM-GNN (a hybrid static/dynamic eviction policy, a victim buffer, prefetch of the next
batch). ``FeatureStore.add(name, path, backend="file", cache_bytes=..., policy=...)`` makes one.

Where a gather finds each distinct row, in this order: the cache (``hits``), a row loaded by
``prefetch`` (``prefetch_used``), the victim buffer (``victim_hits``), else the file
(``misses``: the blocks holding them, coalesced, one request, as an uncached file table). Every
row not found in the cache is then a candidate for it: the policy ranks the candidates against
the cached rows the gather did not ask for, and the best ``slots`` rows stay; evicted rows go to
the victim buffer (a ring, oldest overwritten first). The per-batch work is a few numpy passes
over the batch's distinct rows plus one partition over the cached rows' priorities.

Policies (priority of a row; the lowest are evicted, a candidate below every cached row is not
admitted):
    lru     the gather count when the row was last asked for;
    static  ``scores[row]`` (the caller's, e.g. the node's degree), divided by the largest score;
    hybrid  ``w_static * e(row) + w_dynamic * (f(row) + a(row))``, each term a share of gathers:
            ``e`` = min(1, scores[row] * R / sum(scores)) with R the mean count of distinct rows
            per gather so far (the chance a gather asks for the row if that chance is
            proportional to the score); ``f`` the share of recent gathers that asked for it (a
            count of the gathers asking for it, halved every ``half_life`` gathers, times
            1 - 2**(-1/half_life): 1.0 for a row every gather asks for); ``a`` = 1 while a
            prefetch has announced the row and no gather has asked for it since (at most
            PREFETCH_DEPTH gathers). The scores rank rows before any gather has run; the counts
            correct them where the batches disagree; the announcements keep the rows the next
            batches need.

Scatter into a writable cached table is write-through: the file is updated first (the file
table's read-modify-write, all or nothing), then the copies of the touched rows held in the
cache, the victim buffer and loaded prefetches; a scatter does not admit rows. The cache is one
process's: forked DataLoader workers start with a copy of it, spawned ones with an empty one,
and a scatter in one process does not reach another's copies (so writable="shared" refuses a
cache). Gathers, prefetches and scatters on one table take its lock (gathers on one cached table
do not overlap within a process); a prefetch's file read runs on a thread of this module,
outside the lock.
"""
from __future__ import annotations

import concurrent.futures
import math
import os
import threading
import warnings
import weakref
from typing import Any, List, Optional, Tuple

import numpy as np

from . import _buffers
from ._fileio import empty as _aligned_empty
from ._gather_file import _check_indices, _FileTable
from ._gather_table import _addr, _core
from .errors import InvalidArgument

POLICIES = ("lru", "static", "hybrid")
PREFETCH_DEPTH = 4          # a prefetch's rows wait this many gathers; at most this many prefetches wait
DEFAULT_WEIGHTS = (1.0, 1.0)
DEFAULT_HALF_LIFE = 256.0   # gathers

_live: "weakref.WeakSet[_CachedFileTable]" = weakref.WeakSet()
_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
_pool_lock = threading.Lock()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="hauler-prefetch")
        return _pool


def _after_fork() -> None:
    # the prefetch threads and any lock they held are gone in a child: fresh ones, and the
    # prefetches still in flight are dropped (the child never sees their rows)
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()
    for t in list(_live):
        t._after_fork()


os.register_at_fork(after_in_child=_after_fork)


class _Prefetch:
    """Rows `rows` (sorted) loaded into `buf` (one row each), by `future` when read from the file."""

    def __init__(self, rows: np.ndarray, buf: np.ndarray, born: int):
        self.rows, self.buf, self.born = rows, buf, born
        self.used = np.zeros(rows.size, bool)
        self.future: Optional[concurrent.futures.Future] = None

    def ready(self) -> bool:
        """Waits for the file read; False when it failed (its rows are then read again)."""
        if self.future is None:
            return True
        try:
            self.future.result()
        except Exception:  # noqa: BLE001 - the gather reads these rows itself and raises if it fails too
            return False
        return True

    def find(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(mask over `rows` of those held here, their positions in self.rows)."""
        pos = np.searchsorted(self.rows, rows)
        pos[pos >= self.rows.size] = 0
        found = self.rows[pos] == rows if self.rows.size else np.zeros(rows.size, bool)
        return found, pos[found]


def _number(what: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InvalidArgument(f"{what} must be a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f) or f < 0:
        raise InvalidArgument(f"{what} must be finite and >= 0, got {v!r}")
    return f


class _CachedFileTable(_FileTable):
    """A file table with a cache of rows in host memory in front of it (see the module help)."""

    CACHE_COUNTERS = ("hits", "misses", "victim_hits", "prefetch_rows", "prefetch_used", "prefetch_wasted",
                      "prefetch_failed", "bytes_read_prefetch", "evictions", "admitted", "gathers")

    def __init__(self, name: str, path: str, shape: Tuple[int, ...], dtype: np.dtype, offset: int,
                 direct: Optional[bool] = None, writable: Any = False, lock: bool = True, *,
                 cache_bytes: Any = None, policy: Any = "lru", scores: Any = None, weights: Any = None,
                 victim_bytes: Any = 0, half_life: Any = None):
        if writable == "shared":
            raise InvalidArgument(f"table {name!r}: a cache is one process's, so writable='shared' (scatters from "
                                  "several processes) would leave the other processes' cached rows stale; use "
                                  "writable=True or no cache")
        super().__init__(name, path, shape, dtype, offset, direct, writable, lock)
        try:
            self._options = self._setup(cache_bytes, policy, scores, weights, victim_bytes, half_life)
        except BaseException:
            self.close()
            raise
        _live.add(self)

    def _setup(self, cache_bytes: Any, policy: Any, scores: Any, weights: Any, victim_bytes: Any,
               half_life: Any) -> dict:
        rb, rows, name = self.row_bytes, self.rows, self.name
        cache_bytes = _buffers.as_int("cache_bytes", cache_bytes, minimum=0)
        if cache_bytes < rb:
            raise InvalidArgument(f"table {name!r}: cache_bytes={cache_bytes} holds no row of {rb} bytes")
        if policy not in POLICIES:
            raise InvalidArgument(f"table {name!r}: policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        victim_bytes = _buffers.as_int("victim_bytes", victim_bytes, minimum=0)
        if 0 < victim_bytes < rb:
            raise InvalidArgument(f"table {name!r}: victim_bytes={victim_bytes} holds no row of {rb} bytes "
                                  "(0: no victim buffer)")
        if policy == "lru" and scores is not None:
            raise InvalidArgument(f"table {name!r}: scores= ranks rows for policy 'static' or 'hybrid', not 'lru'")
        if policy != "hybrid" and (weights is not None or half_life is not None):
            raise InvalidArgument(f"table {name!r}: weights= and half_life= apply to policy 'hybrid' only")
        self.policy = policy
        self.slots = min(cache_bytes // rb, rows)
        self.victim_slots = min(victim_bytes // rb, rows)
        # row -> where its bytes are: slot s >= 0 of the cache, -2 - v for slot v of the victim buffer, -1 nowhere
        self._map = np.full(rows, -1, np.int32 if rows < (1 << 31) - 2 else np.int64)
        self._cache = _aligned_empty((self.slots, rb), np.uint8)
        self._slot_row = np.full(self.slots, -1, np.int64)
        self._victim = _aligned_empty((self.victim_slots, rb), np.uint8)
        self._vrow = np.full(self.victim_slots, -1, np.int64)
        self._vhead = 0
        self._clock = 0
        self._last = np.zeros(self.slots, np.int64) if policy == "lru" else None
        self._score = None if policy == "lru" else self._scores(scores)
        self._weights, self._half_life = DEFAULT_WEIGHTS, DEFAULT_HALF_LIFE
        if policy == "hybrid":
            self._weights = self._check_weights(weights)
            if half_life is not None:
                self._half_life = _number("half_life", half_life)
                if self._half_life == 0:
                    raise InvalidArgument(f"table {name!r}: half_life must be > 0 gathers, got {half_life!r}")
            self._freq = np.zeros(rows, np.float32)   # decayed count of gathers asking for the row ...
            self._ftime = np.zeros(rows, np.int64)    # ... as of this gather count
            self._due = np.zeros(rows, np.int64)      # announced by a prefetch: until this gather count
            self._score_sum = float(self._score.sum())
            self._asked = 0                            # distinct rows over all gathers
        self._lock = threading.RLock()
        self._pending: List[_Prefetch] = []
        self._pins: Optional[weakref.finalize] = None
        from . import cuda_available
        if cuda_available():
            try:
                self.register()
            except Exception as e:  # noqa: BLE001 - the cache works unpinned; say so
                warnings.warn(f"hauler.gather: table {name!r}: the cache could not be pinned ({e}); device "
                              "gathers copy from pageable memory", RuntimeWarning, stacklevel=4)
        return {"cache_bytes": cache_bytes, "policy": policy, "scores": self._score,   # normalized: the same ranks
                "weights": weights, "victim_bytes": victim_bytes, "half_life": half_life}

    def _scores(self, scores: Any) -> np.ndarray:
        name, rows = self.name, self.rows
        if scores is None:
            raise InvalidArgument(f"table {name!r}: policy {self.policy!r} needs scores= (one number per row, "
                                  "e.g. the node's degree)")
        if _buffers.is_torch_tensor(scores):
            scores = scores.detach().cpu().numpy()
        try:
            s = np.asarray(scores)
        except Exception as e:  # noqa: BLE001 - any conversion failure is a bad argument
            raise InvalidArgument(f"table {name!r}: scores= is not an array of numbers: {e}") from None
        if s.dtype.kind not in "iuf":
            raise InvalidArgument(f"table {name!r}: scores= must hold numbers, got dtype {s.dtype}")
        if s.shape != (rows,):
            raise InvalidArgument(f"table {name!r}: scores= has shape {s.shape}, the table has {rows} rows: "
                                  f"give one score per row, shape ({rows},)")
        s = s.astype(np.float64)
        bad = ~np.isfinite(s) | (s < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidArgument(f"table {name!r}: scores[{i}] = {s[i]} is not a finite number >= 0")
        top = s.max() if s.size else 0.0
        return s / top if top > 0 else s

    def _check_weights(self, weights: Any) -> Tuple[float, float]:
        if weights is None:
            return DEFAULT_WEIGHTS
        try:
            ws, wd = weights
        except (TypeError, ValueError):
            raise InvalidArgument(f"table {self.name!r}: weights= must be (w_static, w_dynamic), "
                                  f"got {weights!r}") from None
        w = (_number("weights[0] (static)", ws), _number("weights[1] (dynamic)", wd))
        if w[0] + w[1] == 0:
            raise InvalidArgument(f"table {self.name!r}: weights= {weights!r} are both 0; give at least one > 0")
        return w

    # -- counters
    def reset_counters(self) -> None:
        super().reset_counters()
        for k in _CachedFileTable.CACHE_COUNTERS:
            setattr(self, k, 0)

    def stats(self) -> dict:
        s = super().stats()
        s.update({k: getattr(self, k) for k in _CachedFileTable.CACHE_COUNTERS})
        s.update(policy=self.policy, slots=self.slots, cached_rows=int((self._slot_row >= 0).sum()),
                 victim_slots=self.victim_slots, pending_prefetches=len(self._pending))
        return s

    # -- priorities
    def _dynamic(self, rows: np.ndarray) -> np.ndarray:
        """The decayed count of gathers asking for `rows`, as of now."""
        age = (self._clock - self._ftime[rows]).astype(np.float64)
        return self._freq[rows] * np.exp2(-age / self._half_life)

    def _touch(self, rows: np.ndarray) -> None:
        if self.policy == "hybrid":
            self._asked += int(rows.size)
            self._freq[rows] = self._dynamic(rows) + 1.0
            self._ftime[rows] = self._clock
            self._due[rows] = 0   # the announced use came

    def _announce(self, rows: np.ndarray) -> None:
        if self.policy == "hybrid":
            self._due[rows] = self._clock + PREFETCH_DEPTH

    def _row_priority(self, rows: np.ndarray) -> np.ndarray:
        if self.policy == "static":
            return self._score[rows]
        ws, wd = self._weights
        share = self._dynamic(rows) * -math.expm1(-math.log(2) / self._half_life)
        # the scores as an expected share of gathers too: if a row's chance to be asked is
        # proportional to its score, a gather of R distinct rows asks for it with probability
        # score * R / sum(scores)
        per_gather = self._asked / max(self._clock, 1)   # (the counters may be reset; the clock is not)
        expected = np.minimum(self._score[rows] * (per_gather / self._score_sum), 1.0) if self._score_sum else 0.0
        return ws * expected + wd * (share + (self._due[rows] > self._clock))

    def _slot_priority(self, slots: np.ndarray) -> np.ndarray:
        if self.policy == "lru":
            return self._last[slots].astype(np.float64)
        return self._row_priority(self._slot_row[slots])

    # -- gather
    def gather_into(self, idx: np.ndarray, out: np.ndarray, threads: int, stream: int) -> None:
        flat = idx.reshape(-1)
        _check_indices(flat, self.rows)
        if flat.size == 0:
            return
        rb = self.row_bytes
        with self._lock:
            self._clock += 1
            self.gathers += 1
            u, inv = np.unique(flat, return_inverse=True)
            where = self._map[u]
            hit = where >= 0
            self._touch(u)
            if self.policy == "lru":
                self._last[where[hit]] = self._clock
            if hit.all():  # every row cached: one gather from the cache
                self.hits += int(u.size)
                slots = np.ascontiguousarray(where[inv.reshape(-1)])
                _core().gather_host(_addr(self._cache), self.slots, rb, rb, _addr(slots), slots.size,
                                    slots.itemsize, _addr(out), out.nbytes, threads, stream, -1)
                self._retire()
                return
            ubuf = np.empty((u.size, rb), np.uint8)   # each distinct row once, then spread into out
            h = np.flatnonzero(hit)
            ubuf[h] = self._cache[where[h]]
            self.hits += int(h.size)
            rest = np.flatnonzero(~hit)
            rest = self._from_prefetches(u, rest, ubuf)
            vic = where[rest] <= -2
            v = rest[vic]
            ubuf[v] = self._victim[-2 - where[v]]
            self.victim_hits += int(v.size)
            miss = rest[~vic]
            if miss.size:
                window, pos = self._read_blocks(u[miss])[3:]   # one request; an error leaves no row admitted
                ubuf[miss] = window[pos]
                self.misses += int(miss.size)
            inv = np.ascontiguousarray(inv.reshape(-1), dtype=np.int64)
            _core().gather_host(_addr(ubuf), u.size, rb, rb, _addr(inv), inv.size, 8, _addr(out), out.nbytes,
                                threads, stream, -1)
            cand = np.flatnonzero(~hit)
            self._admit(u[cand], ubuf[cand], where[h])
            self._retire()

    def _from_prefetches(self, u: np.ndarray, rest: np.ndarray, ubuf: np.ndarray) -> np.ndarray:
        """Copies rows u[rest] that prefetches loaded into ubuf; returns the rest still missing."""
        for p in list(self._pending):
            if rest.size == 0:
                break
            found, pos = p.find(u[rest])
            if not found.any():
                continue
            if not p.ready():
                self.prefetch_failed += int(p.rows.size)
                self._pending.remove(p)
                continue
            ubuf[rest[found]] = p.buf[pos]
            p.used[pos] = True
            self.prefetch_used += int(found.sum())
            rest = rest[~found]
        return rest

    def _retire(self) -> None:
        """Drops the prefetches whose rows were all used or which waited PREFETCH_DEPTH gathers
        (their rows no gather used count as wasted)."""
        keep = []
        for p in self._pending:
            if p.used.all() or self._clock - p.born >= PREFETCH_DEPTH:
                self.prefetch_wasted += int((~p.used).sum())
            else:
                keep.append(p)
        self._pending = keep

    def _admit(self, rows: np.ndarray, data: np.ndarray, protect: np.ndarray) -> None:
        """Candidates `rows` (distinct, none cached; their bytes `data`) against the cached rows
        this gather did not ask for (`protect`: the slots it did): the best `slots` rows stay."""
        k = rows.size
        if k == 0:
            return
        free = np.flatnonzero(self._slot_row < 0)
        if k <= free.size:
            self._place(free[:k], rows, data)
            return
        busy = self._slot_row >= 0
        busy[protect] = False
        res = np.flatnonzero(busy)
        m = min(res.size, k)      # at most k cached rows can lose their place: the m lowest
        prio = self._slot_priority(res)
        if m and m < res.size:
            low = np.argpartition(prio, m - 1)[:m]
            res, prio = res[low], prio[low]
        pool = np.concatenate((prio,
                               np.full(k, float(self._clock)) if self.policy == "lru" else self._row_priority(rows)))
        chosen = np.argsort(-pool, kind="stable")[:free.size + m]   # cached rows first on ties: no churn
        kept = np.zeros(m, bool)
        kept[chosen[chosen < m]] = True
        new = chosen[chosen >= m] - m
        out = res[~kept]
        self._evict(out)
        self._place(np.concatenate((free, out))[:new.size], rows[new], data[new])

    def _place(self, slots: np.ndarray, rows: np.ndarray, data: np.ndarray) -> None:
        self._cache[slots] = data
        self._slot_row[slots] = rows
        self._map[rows] = slots
        if self._last is not None:
            self._last[slots] = self._clock
        self.admitted += int(slots.size)

    def _evict(self, slots: np.ndarray) -> None:
        """Moves the rows of cache `slots` into the victim ring (the oldest there overwritten)."""
        if slots.size == 0:
            return
        rows = self._slot_row[slots]
        self._slot_row[slots] = -1
        self.evictions += int(slots.size)
        V = self.victim_slots
        if slots.size > V:
            self._map[rows[:slots.size - V]] = -1
            rows, slots = rows[slots.size - V:], slots[slots.size - V:]
        if V == 0:
            return
        pos = (self._vhead + np.arange(rows.size)) % V
        old = self._vrow[pos]
        held = old >= 0
        gone = held.copy()
        gone[held] = self._map[old[held]] == -2 - pos[held]   # still that row's place (not re-admitted since)
        self._map[old[gone]] = -1
        self._victim[pos] = self._cache[slots]
        self._vrow[pos] = rows
        self._map[rows] = -2 - pos
        self._vhead = int((self._vhead + rows.size) % V)

    # -- prefetch
    def prefetch(self, idx: np.ndarray) -> None:
        """Loads the rows of `idx` (a coming gather's index) that are not cached: from the victim
        buffer now, from the file on a prefetch thread (one request), so that gather finds them."""
        flat = idx.reshape(-1)
        _check_indices(flat, self.rows)
        if flat.size == 0:
            return
        with self._lock:
            u = np.unique(flat)
            self._announce(u)
            u = u[self._map[u] < 0]
            for p in self._pending:
                if u.size:
                    u = u[~p.find(u)[0]]
            if u.size == 0:
                return
            p = _Prefetch(u, np.empty((u.size, self.row_bytes), np.uint8), self._clock)
            where = self._map[u]
            v = np.flatnonzero(where <= -2)
            p.buf[v] = self._victim[-2 - where[v]]
            f = np.flatnonzero(where == -1)
            if f.size:
                plan = self._plan(u[f])
                self._count_read(*plan)
                self.bytes_read_prefetch += sum(plan[2])
                p.future = _executor().submit(self._load, u[f], p.buf, f, plan)
            self.prefetch_rows += int(u.size)
            self._pending.append(p)
            if len(self._pending) > PREFETCH_DEPTH:
                old = self._pending.pop(0)
                self.prefetch_wasted += int((~old.used).sum())

    def _load(self, rows: np.ndarray, buf: np.ndarray, at: np.ndarray, plan: Any) -> None:
        _, window, pos = self._fetch(rows, *plan)
        buf[at] = window[pos]

    def _after_fork(self) -> None:
        self._lock = threading.RLock()
        self._pending = [p for p in self._pending if p.future is None or p.future.done()]

    # -- scatter: write-through
    def scatter_from(self, idx: np.ndarray, src: np.ndarray, reduce: str,
                     threads: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        with self._lock:
            for p in self._pending:
                p.ready()   # a read in flight must not return the rows as they were before this scatter
            done = super().scatter_from(idx, src, reduce, threads)
            if done is None:
                return None
            rows, data = done
            where = self._map[rows]
            c = where >= 0
            self._cache[where[c]] = data[c]
            v = where <= -2
            self._victim[-2 - where[v]] = data[v]
            for p in self._pending:
                found, pos = p.find(rows)
                p.buf[pos] = data[found]
            return done

    # -- GPU: the cache's memory is registered (cudaHostRegister), so GPU threads can read it in place
    def register(self) -> None:
        if self._pins is None:
            arrays = [a for a in (self._cache, self._victim) if a.size]
            for i, a in enumerate(arrays):
                try:
                    _core().host_register(_addr(a), a.nbytes, False)
                except BaseException:
                    for b in arrays[:i]:
                        _core().host_unregister(_addr(b))
                    raise
            self._pins = weakref.finalize(self, _unregister, arrays)

    def unregister(self) -> None:
        if self._pins is not None:
            pins, self._pins = self._pins, None
            pins()

    def close(self) -> None:
        for p in getattr(self, "_pending", ()):
            p.ready()
        super().close()

    def __getstate__(self):
        state = super().__getstate__()
        state["cache"] = self._options
        return state

    def __setstate__(self, state):
        cache = dict(state["cache"])
        _CachedFileTable.__init__(self, state["name"], state["path"], tuple(state["shape"]), np.dtype(state["dtype"]),
                                  state["offset"], state["direct"], state.get("writable", False), lock=False, **cache)


def _unregister(arrays: List[np.ndarray]) -> None:
    for a in arrays:
        try:
            _core().host_unregister(_addr(a))
        except Exception:  # noqa: BLE001 - teardown: the pages go with the array either way
            pass
