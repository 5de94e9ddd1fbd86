"""TensorStore's inline path: puts and gets submitted by the calling thread on a polled io_uring
and finished by whichever thread next calls the store or waits on a future (see TensorStore's doc).
"""
from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Any, Dict, Optional

import numpy as np

from . import _entry_io
from ._store_format import (HEADER, PADDED, CorruptEntry, check_size, entry_file_size, header, keyed, parse_header,
                            unlink_quietly)
from .errors import HaulerIOError

DRIVE_S = 0.05    # how often a thread of the store's polls inline requests nobody waits for
INLINE_DEPTH = 256  # tasks of an inline ring in the kernel at once (a step's puts, without waiting)


class PolledFuture(concurrent.futures.Future):
    """The future of an inline request: done(), result() and exception() drive its I/O."""

    def __init__(self, store: "TensorStore", op: "Op"):
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


class Op:
    """An inline put or get in flight."""

    def __init__(self, store: "TensorStore", kind: str, key: str, rid: int, file: Any, keep: Any = None,
                 **kw: Any):
        self.kind, self.key, self.rid, self.file, self.keep = kind, key, rid, file, keep
        self.tmp = self.final = self.meta = self.result = self.finish = None
        self.file_bytes, self.pin = 0, False
        for k, v in kw.items():
            setattr(self, k, v)
        self.fut = PolledFuture(store, self)


class InlineRequests:
    """The inline half of TensorStore (a mixin: the state it uses is set up by TensorStore)."""

    @property
    def io_path(self) -> str:
        """How puts go: "inline io_uring (polled by the calling threads)", or "worker threads: <why>"."""
        if self._inline and self._io() is not None:
            return "inline io_uring (polled by the calling threads)"
        return f"worker threads: {self._inline_why}"

    def _io(self) -> Any:
        """The polled ring, made at first use; None when inline I/O cannot run (the reason kept)."""
        if self._entry_io is None and not self._inline_why:
            # one ring per store: two threads making one each would submit on a ring that the
            # store then forgets, and their requests could never be taken
            with self._ops_lock:
                if self._entry_io is None and not self._inline_why:
                    from . import _fileio as hio
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

    def _start(self, op: "Op") -> "PolledFuture":
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
        file_bytes = _entry_io.padded(data_off + flat.nbytes)
        try:
            head = header(meta, PADDED)   # a key too long for the header: refused here
            spare = self._reserve_with_spare(key, file_bytes, pin)
        except BaseException as e:  # noqa: BLE001 - the future carries it, as from a worker
            return self._refused(key, e)
        final = self._path(key)
        tmp = self._tmp_path(final)
        f = None
        try:
            f = self._file_for(tmp, file_bytes, spare)
            rid, bufs = self._entry_io.write(f.fileno(), head, flat, data_off, repr(tmp))
        except BaseException as e:  # noqa: BLE001
            if f is not None:
                f.close()
            unlink_quietly(tmp)
            self._put_done(key, file_bytes, pin, False)
            return self._refused(key, e)
        meta["version"] = PADDED
        return self._start(Op(self, "put", key, rid, f, keep=(bufs, keep), tmp=tmp, final=final,
                              file_bytes=file_bytes, pin=pin, meta=meta))

    def _get_inline(self, key: str, meta: Dict[str, Any]) -> Any:
        path = self._path(key)
        data_off = int(meta["offset"])
        f = None
        try:
            f = self._open_entry(key)
            check_size(path, key, f.size(), entry_file_size(meta))
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
        return self._start(Op(self, "get", key, rid, f, keep=flat, meta=meta, result=result, finish=finish))

    def _finish(self, op: "Op") -> None:
        """Completes op (its request has finished): renames a put into place, checks a get's header."""
        try:
            self._entry_io.poller.take(op.rid)
        except BaseException as err:  # noqa: BLE001
            error: Optional[BaseException] = keyed(err, op.key)
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
                unlink_quietly(op.tmp)
            self._put_done(op.key, op.file_bytes, op.pin, error is None, op.meta)
        elif error is None:
            path = self._path(op.key)
            try:
                got = parse_header(op.finish(), path)
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

    def _claim(self, op: "Op") -> bool:
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

    def _wait(self, op: "Op", timeout: Optional[float]) -> bool:
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
