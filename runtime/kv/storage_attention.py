"""Decode attention next to SSD-resident KV (after InstInfer): ``hauler.kv.StorageAttention``.

    with kv.StorageAttention("/nvme/drive", bandwidth=2e9) as sa:   # an emulated 2 GB/s link
        sa.put("req7", k, v)                        # [layers, tokens, kv_heads, head_size] each
        out = sa.attend(q, ["req7"], layer=0)       # q [batch, q_heads, head_size] -> same shape
        sa.counters["to_drive_bytes"], sa.counters["from_drive_bytes"]

No computational drive exists here, so one is emulated: a separate process (hauler.kv._drive)
owns the KV files in a directory on the SSD, reads them with hauler.io and computes each query's
attention over them, streaming a request's layer once, chunk by chunk, with an online softmax.
The host sends queries and gets outputs back through a shared-memory area; only those bytes (and
small control messages) cross the host<->drive boundary, which a token bucket per direction can
throttle to a given bandwidth (an emulated PCIe link). ``attend_on_host`` is the FlexGen-style
alternative over the same files and link: load the layer's KV to the host, then compute there.
"""
from __future__ import annotations

import contextlib
import math
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Hashable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .. import _buffers
from ..errors import BufferTooSmall, HaulerError, HaulerIOError, InvalidArgument, OutOfRange
from . import _drive
from ._drive import DATA_OFF, KV_DTYPES, Geometry
from ..tensorstore import CorruptEntry
from .swap import UnknownRequest

__all__ = ["StorageAttention", "DriveLost", "DriveTimeout", "Link"]


# not `-m hauler.kv._drive`: the package imports _drive first, which runpy warns about
_DRIVE_MAIN = "import sys; from hauler.kv._drive import main; sys.exit(main(sys.argv[1:]))"


class DriveLost(HaulerIOError):
    """The drive process is gone (it died or was stopped after a timeout); nothing it held is reachable."""


class DriveTimeout(DriveLost, TimeoutError):
    """The drive did not answer within the timeout; it was stopped (later calls raise DriveLost)."""


class Link:
    """The host<->drive boundary: bytes counted per direction and kind, each direction throttled
    by a token bucket to ``bandwidth`` bytes/s (None: unthrottled). The bucket holds at most
    ``burst`` bytes; a transfer larger than what it holds waits for the rest at the rate."""

    def __init__(self, bandwidth: Optional[float] = None, burst: int = 64 << 10):
        self._lock = threading.Lock()
        self.burst = _buffers.as_int("burst", burst, 1)
        self.counters: Dict[str, float] = {}
        self.bandwidth = bandwidth
        self.reset()

    @property
    def bandwidth(self) -> Optional[float]:
        return self._rate

    @bandwidth.setter
    def bandwidth(self, value: Optional[float]) -> None:
        if value is not None:
            try:
                ok = float(value) > 0 and math.isfinite(float(value))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise InvalidArgument(f"bandwidth must be a positive number of bytes/s or None, got {value!r}")
        with self._lock:
            self._rate = None if value is None else float(value)
            now = time.monotonic()
            self._buckets = {"to_drive": [float(self.burst), now], "from_drive": [float(self.burst), now]}

    def reset(self) -> None:
        with self._lock:
            self.counters = dict.fromkeys(("to_drive_bytes", "from_drive_bytes", "query_bytes", "output_bytes",
                                           "control_bytes", "kv_put_bytes", "kv_load_bytes", "messages"), 0)
            self.counters["wait_s"] = 0.0

    def cross(self, direction: str, kind: str, nbytes: int) -> None:
        """Counts nbytes of kind crossing in direction ("to_drive" or "from_drive") and waits
        until the bucket lets them through."""
        wait = 0.0
        with self._lock:
            self.counters[f"{direction}_bytes"] += nbytes
            self.counters[f"{kind}_bytes"] += nbytes
            if self._rate is not None:
                b = self._buckets[direction]
                now = time.monotonic()
                b[0] = min(float(self.burst), b[0] + (now - b[1]) * self._rate) - nbytes
                b[1] = now
                if b[0] < 0:   # in debt: this transfer (and the next ones) wait until it is paid
                    wait = -b[0] / self._rate
                    self.counters["wait_s"] += wait
        if wait:
            time.sleep(wait)


class _Request:
    __slots__ = ("handle", "geo", "path", "file")

    def __init__(self, handle: int, geo: Geometry, path: str):
        self.handle, self.geo, self.path, self.file = handle, geo, path, None


_ERRORS = {c.__name__: c for c in (InvalidArgument, OutOfRange, BufferTooSmall, HaulerIOError, UnknownRequest,
                                    CorruptEntry)}


@contextlib.contextmanager
def _removed_on_error(path: str) -> Iterator[None]:
    """A request's file that must not outlive a failed put or adoption."""
    try:
        yield
    except BaseException:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        raise


def _tensor(x: Any, what: str) -> Any:
    """x as a CPU torch tensor (numpy arrays shared, not copied) and whether it came as numpy."""
    import torch
    if _buffers.is_torch_tensor(x):
        if x.device.type != "cpu":
            raise InvalidArgument(f"{what} is on {x.device}; the drive's link takes host memory")
        t, was_numpy = x.detach(), False
    elif isinstance(x, np.ndarray):
        if x.dtype.name not in KV_DTYPES:
            raise InvalidArgument(f"{what} has dtype {x.dtype}; use one of {sorted(KV_DTYPES)}")
        t, was_numpy = torch.from_numpy(np.ascontiguousarray(x)), True
    else:
        raise InvalidArgument(f"{what} must be a torch tensor or numpy array, got {type(x).__name__}")
    name = str(t.dtype).replace("torch.", "")
    if name not in KV_DTYPES:
        raise InvalidArgument(f"{what} has dtype {name}; use one of {sorted(KV_DTYPES)}")
    return t, was_numpy


class StorageAttention:
    """Decode attention computed by an emulated computational drive (see the module doc).

    ``path``: a directory on the SSD; the drive keeps its files in a fresh subdirectory removed by
    :meth:`close`. ``bandwidth``: the link's bytes/s per direction (None: unthrottled; settable
    later as ``sa.link.bandwidth``). ``timeout``: seconds a drive call may take before
    DriveTimeout. ``area_bytes``: the shared area's data part (a batch's queries and outputs must
    fit). ``threads``: the drive's compute threads. ``chunk_bytes``: the drive's read size.
    """

    def __init__(self, path: Any, bandwidth: Optional[float] = None, timeout: float = 120.0,
                 area_bytes: int = 16 << 20, threads: int = 1, chunk_bytes: int = 1 << 20,
                 start_timeout: float = 120.0):
        self._closed = True   # until the drive is up: close() and __del__ have nothing to undo
        self._pid = os.getpid()   # the drive answers this process only (a fork's copy must not talk to it)
        self.link = Link(bandwidth)
        self.timeout = self._seconds("timeout", timeout)
        start_timeout = self._seconds("start_timeout", start_timeout)
        area = _buffers.as_int("area_bytes", area_bytes, 4096)
        threads = _buffers.as_int("threads", threads, 1)
        chunk = _buffers.as_int("chunk_bytes", chunk_bytes, 4096)
        root = os.fspath(path)
        try:
            os.makedirs(root, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidArgument(f"drive path {root!r}: it or a parent is a file, not a directory") from None
        self._lock = threading.Lock()
        self._requests: Dict[Hashable, _Request] = {}
        self._next = 0
        self._seq = 0
        self._lost: Optional[str] = None
        self._host_buf: Optional[np.ndarray] = None
        self._drive_counters = {"kv_read_bytes": 0, "attends": 0, "adopted_bytes": 0}
        self._dir = tempfile.mkdtemp(prefix="hauler-drive-", dir=root)
        shm_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self._area_path = tempfile.mkstemp(prefix="hauler-drive-", suffix=".area", dir=shm_dir)
        drive_fds: List[int] = []
        host_fds: List[int] = []
        try:
            os.ftruncate(fd, DATA_OFF + area)
            self._mm = mmap.mmap(fd, DATA_OFF + area)
            req_r, self._req_w = os.pipe()
            drive_fds.append(req_r)
            host_fds.append(self._req_w)
            self._resp_r, resp_w = os.pipe()
            drive_fds.append(resp_w)
            host_fds.append(self._resp_r)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)   # the drive imports this hauler
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _DRIVE_MAIN, "--area", self._area_path, "--req-fd", str(req_r),
                 "--resp-fd", str(resp_w), "--threads", str(threads), "--chunk-bytes", str(chunk)],
                pass_fds=drive_fds, stdin=subprocess.DEVNULL, env=env, close_fds=True)
        except BaseException:
            for f in host_fds + [fd]:
                os.close(f)
            os.unlink(self._area_path)
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        finally:
            for f in drive_fds:   # the drive's ends: its exit closes them, so our reads see end of file
                os.close(f)
        os.close(fd)
        self._closed = False
        try:
            self._await(0, start_timeout, "starting")
        except BaseException:
            self.close()
            raise
        finally:
            os.unlink(self._area_path)   # mapped on both sides now: nothing to leak if either dies

    # -- public API ------------------------------------------------------------------------------
    def put(self, request: Hashable, k: Any, v: Any, block_size: int = 16) -> int:
        """Sends a request's KV to the drive: ``k`` and ``v`` [layers, tokens, kv_heads, head_size]
        (torch CPU or numpy; float32, float16 or bfloat16), kept in ``block_size``-token blocks.
        Replaces what the drive held for the request. Returns the bytes that crossed the link."""
        import torch
        self._check_open()
        kt, _ = _tensor(k, "k")
        vt, _ = _tensor(v, "v")
        if kt.dim() != 4:
            raise InvalidArgument(f"k has shape {tuple(kt.shape)}; expected [layers, tokens, kv_heads, head_size]")
        if tuple(kt.shape) != tuple(vt.shape) or kt.dtype != vt.dtype:
            raise InvalidArgument(f"k is {tuple(kt.shape)} {kt.dtype} but v is {tuple(vt.shape)} {vt.dtype}")
        layers, tokens, heads, hs = (int(n) for n in kt.shape)
        if min(layers, tokens, heads, hs) < 1:
            raise InvalidArgument(f"k has shape {tuple(kt.shape)}: every dimension must be at least 1")
        bs = _buffers.as_int("block_size", block_size, 1)
        geo = Geometry([str(kt.dtype).replace("torch.", ""), layers, bs, heads, hs], tokens)
        from .. import io
        raw = io.empty(geo.file_bytes)
        raw[:] = 0
        flat = torch.from_numpy(raw)
        full, tail = divmod(tokens, bs)
        for layer in range(layers):
            start = layer * geo.layer_stride
            dst = flat[start:start + geo.layer_bytes].view(kt.dtype).view(geo.nblocks, 2, bs, heads, hs)
            for plane, src in ((0, kt), (1, vt)):
                dst[:full, plane] = src[layer, :full * bs].reshape(full, bs, heads, hs)
                if tail:   # the last block's unused tokens stay zero
                    dst[full, plane, :tail] = src[layer, full * bs:]
        with self._lock:
            self._check_alive()
            handle, path = self._new_handle()
            self.link.cross("to_drive", "kv_put", raw.nbytes)
            with _removed_on_error(path):
                with io.File(path, "w") as f:
                    f.write(raw)
                reply = self._call({"op": "register", "handle": handle, "path": path, "sig": geo.sig, "tokens": tokens})
            self._adopt_reply(request, handle, geo, path, reply)
        return raw.nbytes

    def adopt(self, space: Any, request: Hashable, layout: Any, as_request: Any = None) -> int:
        """Takes over a request that a :class:`SwapSpace` holds on the SSD (``layout``: the cache
        it was swapped out from) without moving it across the link: the drive copies the SSD
        copy into its own layout. The space keeps its copy. Returns the bytes the drive copied."""
        self._check_open()
        from .swap import SwapSpace
        if not isinstance(space, SwapSpace):
            raise InvalidArgument(f"space must be a SwapSpace, got {type(space).__name__}")
        where = space.location(request)   # UnknownRequest when it holds none
        path = space.ssd_path(request)
        if "ssd" not in where or path is None:
            raise InvalidArgument(f"request {request!r} is in the swap space's {where or 'nothing'}, not on its SSD: "
                                  f"space.evict({request!r}).result() first")
        from .swap import _describe_sig, _signature
        with space._lock:   # the shape the copy was saved with: bytes alone cannot tell heads from head size
            saved = space._known(request).sig
        if _signature(layout) != saved:
            raise InvalidArgument(f"request {request!r} was swapped out from a cache of {_describe_sig(saved)}; "
                                  f"this layout is {_describe_sig(_signature(layout))}")
        if int(layout.num_planes) != 2 or str(layout.dtype) not in KV_DTYPES:
            raise InvalidArgument(f"the drive computes over K and V planes of {sorted(KV_DTYPES)}; this layout has "
                                  f"{layout.num_planes} plane(s) of {layout.dtype}")
        tokens = space.saved_tokens(request)
        if tokens < 1:
            raise InvalidArgument(f"request {request!r} holds no tokens")
        geo = Geometry([str(layout.dtype), int(layout.num_layers), int(layout.block_size), int(layout.num_heads),
                        int(layout.head_size)], tokens)
        name = request if as_request is None else as_request
        with self._lock:
            self._check_alive()
            handle, dest = self._new_handle()
            with _removed_on_error(dest):
                reply = self._call({"op": "adopt", "handle": handle, "src": path, "path": dest, "sig": geo.sig,
                                    "tokens": tokens})
            self._adopt_reply(name, handle, geo, dest, reply)
            self._drive_counters["adopted_bytes"] += int(reply["bytes"])
        return int(reply["bytes"])

    def attend(self, queries: Any, request_ids: Sequence[Hashable], layer: int, scale: Optional[float] = None) -> Any:
        """Outputs of one decode step's attention: ``queries`` [batch, q_heads, head_size] (one
        token per request; q_heads a multiple of the requests' kv_heads, query head h reading KV
        head h // (q_heads // kv_heads)), ``request_ids`` one per row, over ``layer`` of each
        request's KV; ``scale`` defaults to 1/sqrt(head_size). The result has the queries' shape,
        dtype and kind (torch or numpy)."""
        import torch
        q, was_numpy, reqs, layer, scale = self._check_batch(queries, request_ids, layer, scale)
        qb = _drive.as_bytes(q)
        if DATA_OFF + qb.nbytes > len(self._mm):
            raise BufferTooSmall(f"the batch's {qb.nbytes} bytes of queries do not fit in the "
                                 f"{len(self._mm) - DATA_OFF}-byte shared area: pass area_bytes= >= {qb.nbytes} or "
                                 "attend in smaller batches")
        meta = {"op": "attend", "handles": [r.handle for r in reqs], "layer": layer, "q_heads": int(q.shape[1]),
                "head_size": int(q.shape[2]), "q_dtype": str(q.dtype).replace("torch.", ""), "scale": scale}
        with self._lock:
            self._check_alive()
            self.link.cross("to_drive", "query", qb.nbytes)
            reply, data = self._call(meta, qb, want_data=True)
            self.link.cross("from_drive", "output", data.nbytes)
            self._drive_counters["kv_read_bytes"] += int(reply["kv_read_bytes"])
            self._drive_counters["attends"] += 1
        out = torch.from_numpy(data).view(q.dtype).view(q.shape)
        return out.numpy() if was_numpy else out

    def attend_on_host(self, queries: Any, request_ids: Sequence[Hashable], layer: int,
                       scale: Optional[float] = None) -> Any:
        """The FlexGen-style baseline over the same files and link: each request's layer of KV
        is read from the drive's file (counted and throttled as kv_load bytes from the drive),
        then the drive's attention math (torch, float32) runs on the host over the whole layer
        at once, with the host's torch threads. Arguments and result as for :meth:`attend`."""
        import torch
        from .. import io
        q, was_numpy, reqs, layer, scale = self._check_batch(queries, request_ids, layer, scale)
        outs = []
        for i, r in enumerate(reqs):
            g = r.geo
            with self._lock:
                self._check_alive()
                if r.file is None:
                    r.file = io.File(r.path, "r")
                if self._host_buf is None or self._host_buf.nbytes < g.layer_bytes:
                    self._host_buf = io.empty(g.layer_bytes)   # kept: loads reuse one page-aligned buffer
                buf = self._host_buf[:g.layer_bytes]
                r.file.read_into(buf, offset=layer * g.layer_stride)
                self.link.cross("from_drive", "kv_load", buf.nbytes)
                kvl = torch.from_numpy(buf).view(getattr(torch, g.dtype)).view(g.nblocks, 2, g.block_size, g.heads,
                                                                               g.head_size)
                # float32 copies: the buffer is the next load's
                k, v = (kvl[:, p].reshape(-1, g.heads, g.head_size)[:g.tokens].to(torch.float32, copy=True)
                        for p in (0, 1))
            # the drive's math over the whole layer at once: the contenders differ only in where it runs
            st = _drive.online_softmax_step(None, q[i].float().view(g.heads, -1, g.head_size), k, v,
                                            1.0 / math.sqrt(g.head_size) if scale is None else scale)
            outs.append(_drive.softmax_result(st, q.shape[1], q.shape[2]))
        out = torch.stack(outs).to(q.dtype)
        return out.numpy() if was_numpy else out

    def drop(self, request: Hashable) -> None:
        """Forgets a request and deletes its KV on the drive (UnknownRequest when not held)."""
        self._check_open()
        with self._lock:
            r = self._known(request)
            del self._requests[request]
            if r.file is not None:
                r.file.close()
            self._check_alive()
            self._call({"op": "drop", "handle": r.handle})

    def tokens(self, request: Hashable) -> int:
        with self._lock:
            return self._known(request).geo.tokens

    def requests(self) -> List[Hashable]:
        with self._lock:
            return list(self._requests)

    def __contains__(self, request: Hashable) -> bool:
        with self._lock:
            return request in self._requests

    @property
    def counters(self) -> Dict[str, float]:
        """The link's bytes by direction (to_drive_bytes, from_drive_bytes) and kind (query,
        output, control, kv_put, kv_load), messages, wait_s (the throttle's waits); the drive's
        kv_read_bytes (read inside the drive: they do not cross), attends and adopted_bytes."""
        with self._lock:
            d = dict(self.link.counters)
            d.update(self._drive_counters)
        return d

    def reset_counters(self) -> None:
        with self._lock:
            self.link.reset()
            self._drive_counters = dict.fromkeys(self._drive_counters, 0)

    @property
    def directory(self) -> str:
        """Where the drive's files are."""
        return self._dir

    @property
    def drive_pid(self) -> int:
        return int(self._proc.pid)

    def close(self) -> None:
        """Stops the drive (waiting for it at most the timeout, then killing it) and removes its files."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:   # a fork's copy: the drive and its files are the parent's
            return
        with self._lock:
            if self._lost is None:
                try:
                    self._call({"op": "stop"})
                except DriveLost:
                    pass
            for r in self._requests.values():
                if r.file is not None:
                    r.file.close()
            self._requests.clear()
            self._stop_process()
            for fd in (self._req_w, self._resp_r):
                os.close(fd)
            self._mm.close()
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "StorageAttention":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- the protocol ----------------------------------------------------------------------------
    def _call(self, meta: Dict[str, Any], data: Optional[np.ndarray] = None, want_data: bool = False) -> Any:
        """One request/response through the area (self._lock held). Raises the drive's error as
        the matching hauler error, DriveLost / DriveTimeout when it does not answer."""
        self._seq += 1
        seq = self._seq
        try:
            sent = _drive.write_message(self._mm, seq, 0, meta, data)
        except ValueError as e:
            raise BufferTooSmall(f"the shared area cannot take this request: {e}") from None
        self.link.cross("to_drive", "control", sent + _drive.HDR.size + 8)
        try:
            _drive.ring(self._req_w, seq)
        except BrokenPipeError:
            self._mark_lost("its request pipe is closed")
        self._await(seq, self.timeout, f"answering {meta['op']!r}")
        status, reply, dlen, mlen = _drive.read_message(self._mm, seq)
        self.link.cross("from_drive", "control", mlen + _drive.HDR.size + 8)
        self.link.counters["messages"] += 1
        if status:
            cls = _ERRORS.get(reply.get("error"), HaulerError)
            where = "" if cls is not HaulerError else f" ({reply.get('error')})"
            raise cls(f"the drive: {reply.get('message')}{where}")
        if want_data:
            return reply, np.frombuffer(self._mm, np.uint8, dlen, DATA_OFF).copy()
        return reply

    def _await(self, seq: int, timeout: float, doing: str) -> None:
        try:
            got = _drive.read_doorbell(self._resp_r, timeout)
        except TimeoutError:
            self._mark_lost(f"no answer within {timeout} s while {doing}", timeout=True)
        if got is None:
            self._mark_lost(f"it exited while {doing}")
        if got != seq:
            self._mark_lost(f"it answered message {got} while {doing} message {seq}")

    def _mark_lost(self, why: str, timeout: bool = False) -> None:
        self._stop_process(kill=timeout)   # a drive that hangs is stopped: it must not write the area later
        rc = self._proc.returncode
        self._lost = f"the drive (pid {self._proc.pid}) is gone: {why} (exit status {rc})"
        raise (DriveTimeout if timeout else DriveLost)(self._lost)

    def _stop_process(self, kill: bool = False) -> None:
        if kill:
            self._proc.kill()
        try:
            self._proc.wait(timeout=min(self.timeout, 10.0))
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    # -- bookkeeping -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument("this StorageAttention is closed")
        if os.getpid() != self._pid:
            raise InvalidArgument(f"this StorageAttention belongs to process {self._pid}; a forked child "
                                  "cannot use its drive (make one in the child)")

    def _check_alive(self) -> None:
        self._check_open()
        if self._lost is not None:
            raise DriveLost(self._lost)

    def _known(self, request: Hashable) -> _Request:
        r = self._requests.get(request)
        if r is None:
            raise UnknownRequest(f"request {request!r} is not on the drive (it holds {len(self._requests)} requests)")
        return r

    def _new_handle(self) -> Tuple[int, str]:
        self._next += 1
        return self._next, os.path.join(self._dir, f"{self._next}.kv")

    def _adopt_reply(self, request: Hashable, handle: int, geo: Geometry, path: str, reply: Any) -> None:
        """Records the drive's new request; the one it replaces is dropped on the drive."""
        old = self._requests.get(request)
        self._requests[request] = _Request(handle, geo, path)
        if old is not None:
            if old.file is not None:
                old.file.close()
            self._call({"op": "drop", "handle": old.handle})

    def _check_batch(self, queries: Any, request_ids: Any, layer: Any,
                     scale: Any) -> Tuple[Any, bool, List[_Request], int, Optional[float]]:
        self._check_open()
        if scale is not None:
            try:
                f = float(scale)
            except (TypeError, ValueError):
                f = float("nan")
            if not math.isfinite(f):
                raise InvalidArgument(f"scale must be a finite number or None, got {scale!r}")
            scale = f
        q, was_numpy = _tensor(queries, "queries")
        if q.dim() != 3:
            raise InvalidArgument(f"queries has shape {tuple(q.shape)}; expected [batch, q_heads, head_size]")
        if isinstance(request_ids, (str, bytes)) or not hasattr(request_ids, "__len__"):
            raise InvalidArgument(f"request_ids must be a sequence with one id per query row, got {request_ids!r}")
        ids = list(request_ids)
        if len(ids) != q.shape[0] or not ids:
            raise InvalidArgument(f"{len(ids)} request ids for a batch of {q.shape[0]} queries; give one per row "
                                  "(at least one)")
        layer = _buffers.as_int("layer", layer)
        hq, d = int(q.shape[1]), int(q.shape[2])
        with self._lock:
            reqs = [self._known(r) for r in ids]
        for r, g in zip(ids, (x.geo for x in reqs)):
            if not 0 <= layer < g.layers:
                raise OutOfRange(f"layer {layer} is outside request {r!r}'s {g.layers} layers")
            if d != g.head_size or hq % g.heads:
                raise InvalidArgument(f"queries have {hq} heads of {d}; request {r!r} holds {g.heads} KV heads of "
                                      f"{g.head_size} (q_heads must be a multiple of kv_heads, head sizes equal)")
        return q, was_numpy, reqs, layer, scale

    @staticmethod
    def _seconds(name: str, v: Any) -> float:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = float("nan")
        if not (f > 0 and math.isfinite(f)):
            raise InvalidArgument(f"{name} must be a positive number of seconds, got {v!r}")
        return f
