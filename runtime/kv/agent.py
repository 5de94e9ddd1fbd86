"""hauler.kv.Agent: move KV-cache blocks between serving processes, pull (read) or push (write).

One Agent per process. ``register(layout)`` exposes a KV cache and returns metadata bytes that
travel out of band (a file, a socket, an MPI broadcast: ``exchange_metadata`` in
hauler.kv.transport_mpi); ``connect(metadata)`` checks the peer's cache against ours and makes it
usable. ``read``/``write`` build (or reuse) a part-1 plan between the two layouts and return a
:class:`Transfer`. Data moves one-sided where the kernel allows it (cross-memory attach); each
agent also listens on a Unix socket (abstract namespace, peers of other users refused by
SO_PEERCRED) for notifications, lease releases and the staging-ring fallback.

Leases: ``lease(blocks, seconds)`` on the owner returns a Lease whose id the reader passes to
``read(..., lease=id)``. The lease table lives in a shared page (see csrc/kv/cma.hpp for why the
reader's before/after check cannot accept stale bytes); a notification from a leased read releases
the lease. The owner reuses a block only when it is under no live lease (``leases()``).
"""
import concurrent.futures
import glob
import itertools
import json
import math
import mmap
import os
import random
import re
import socket
import sys
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from ..errors import HaulerError, InvalidArgument, NoDevice, OutOfRange
from .transport import (CmaTransport, LeaseExpired, PeerLost, ShmTransport, TransferCancelled, TransferError,
                        TransferTimeout, TransportRefused, b64, close_rings, recv_frame, send_frame, serve_stage,
                        shm_prefix, unb64)
from .transport_ipc import IpcMapping, IpcTransport, device_ordinal, export_handles

__all__ = ["Agent", "Peer", "Transfer", "Lease", "TransferError", "PeerLost", "TransferTimeout", "LeaseExpired",
           "TransferCancelled", "TransportRefused"]

_MAGIC = b"HKVAGENT1\n"
_TRANSPORTS = ("auto", "cma", "shm", "mpi", "mpi2")
_PLAN_CACHE = 256
_GROUPS = 32  # a request is planned as up to this many groups of consecutive blocks (see _plan)
_banners = set()


def _core():
    from .. import _require_core
    return _require_core()


def _addr(a):
    return a.__array_interface__["data"][0]


def _node_id():
    """(boot id, pid namespace): two processes can attach each other's memory by pid only when
    both match (same kernel boot, same pid numbering)."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    except OSError:
        boot = socket.gethostname()
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pidns = 0
    return boot, pidns


def _blocks(blocks, what):
    try:
        a = np.asarray(blocks.cpu() if hasattr(blocks, "cpu") else blocks)
    except Exception as e:  # noqa: BLE001 -- anything not array-like
        raise InvalidArgument(f"{what} must be an integer array-like, got {type(blocks).__name__}: {e}") from None
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise InvalidArgument(f"{what} must be one-dimensional, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise InvalidArgument(f"{what} must hold integers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _check_range(blocks, num_blocks, what):
    bad = np.flatnonzero((blocks < 0) | (blocks >= num_blocks))
    if len(bad):
        i = int(bad[0])
        raise OutOfRange(f"{what}[{i}] = {int(blocks[i])} is outside the layout's {num_blocks} blocks")


def _banner(key, text):
    """Once per process: a fallback figure must never pass for the fast path."""
    if key not in _banners:
        _banners.add(key)
        warnings.warn(text, RuntimeWarning, stacklevel=4)


class Lease:
    """Blocks of one registered layout that a reader may read until ``deadline`` (time.monotonic)."""

    def __init__(self, agent, reg, lease_id, blocks, deadline):
        self.id, self.blocks, self.deadline = lease_id, blocks, deadline
        self._agent, self._reg, self.released = agent, reg, False

    @property
    def live(self):
        return not self.released and time.monotonic() < self.deadline

    def __repr__(self):
        state = "released" if self.released else ("live" if self.live else "expired")
        return f"Lease(id={self.id}, blocks={len(self.blocks)}, {state})"


_MADV_HUGEPAGE, _MADV_COLLAPSE, _HUGE = 14, 25, 2 << 20


def advise_huge_pages(regions, collapse=True):
    """Asks for transparent huge pages over the 2 MiB-aligned interior of each region (and, where
    the kernel has MADV_COLLAPSE, 6.1+, collapses what is already there; contents are kept).
    Cross-memory attach pins the peer's memory page by page: on 4 KiB pages it ran at 1/4 of
    memcpy, on huge pages near it. Returns how many bytes were advised; failures are ignored
    (THP off, old kernel: the moves stay correct, only slower)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    for addr, n in regions:
        lo, hi = -(-addr // _HUGE) * _HUGE, (addr + n) // _HUGE * _HUGE
        if hi <= lo:
            continue
        if libc.madvise(lo, hi - lo, _MADV_HUGEPAGE) == 0:
            done += hi - lo
            if collapse:
                libc.madvise(lo, hi - lo, _MADV_COLLAPSE)
    return done


def _page_spans(regions):
    """regions rounded out to whole pages and merged where they touch: [(address, nbytes)]."""
    out = []
    for a, n in sorted(regions):
        lo, hi = a // mmap.PAGESIZE * mmap.PAGESIZE, -(-(a + n) // mmap.PAGESIZE) * mmap.PAGESIZE
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi - lo) for lo, hi in out]


class _Registration:
    def __init__(self, index, layout, agent_tag, huge_pages):
        self.index, self.layout = index, layout
        self.regions = [(int(a), int(n)) for a, n in layout.regions()]
        self.huge_bytes = advise_huge_pages(self.regions) if huge_pages else 0
        entry = _core().kv_lease_entry_bytes
        self.lease_path = f"{shm_prefix()}{agent_tag}-{index}.lease"
        size = max(entry * layout.num_blocks, 1)
        fd = os.open(self.lease_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self.lease_map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.lease_view = np.frombuffer(self.lease_map, dtype=np.uint8)
        self.pinned = None

    def pin(self):
        """Host memory paired with a peer's device memory: kernels reach it only pinned and mapped."""
        if self.pinned is None and self.layout.device is None:
            done = []
            try:
                for a, n in _page_spans(self.regions):  # registered whole pages: regions may share one
                    _core().host_register(a, n, False)
                    done.append(a)
            except BaseException:
                for a in done:
                    _core().host_unregister(a)
                raise
            self.pinned = done

    def close(self):
        for a in self.pinned or ():
            _core().host_unregister(a)
        self.pinned = None
        self.lease_view = None
        try:
            self.lease_map.close()
        except BufferError:
            pass
        try:
            os.unlink(self.lease_path)
        except FileNotFoundError:
            pass


class Peer:
    """A connected peer: its layout, how bytes move to it, its control connection."""

    def __init__(self, agent, meta, layout, local):
        self.name, self.pid, self.layout = meta["name"], int(meta["pid"]), layout
        self.key = f"{self.name}:{self.pid}:{meta['tag']}"
        self.address, self.reg_index = meta["control"], int(meta["layout_index"])
        self.regions = [tuple(r) for r in meta["regions"]]
        self.local, self.timeout, self._agent = local, agent.timeout, agent
        self.transport = None
        self.pidfd = -1
        self.ipc = None  # IpcMapping of a device cache on this node
        self.lease_path = meta.get("lease_table")
        self._sock, self._sock_lock = None, threading.Lock()
        self._plans = OrderedDict()
        self._lease_map = self._lease_view = None
        self.same_node = (meta["boot_id"], int(meta["pidns"])) == _node_id()
        if self.same_node:
            try:
                self.pidfd = os.pidfd_open(self.pid)
            except (OSError, AttributeError):  # gone already, or no pidfd here: moves check ESRCH only
                self.pidfd = -1
            try:
                fd = os.open(meta["lease_table"], os.O_RDONLY)
                try:
                    size = os.fstat(fd).st_size
                    self._lease_map = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None
                finally:
                    os.close(fd)
                self._lease_view = np.frombuffer(self._lease_map, dtype=np.uint8) if self._lease_map else None
            except OSError:
                self._lease_map = None

    @property
    def transport_name(self):
        return self.transport.name if self.transport else None

    def _connect_socket(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.address)
        except OSError as e:
            s.close()
            raise PeerLost(f"cannot reach peer {self.name!r} (pid {self.pid}) on its control socket: {e}") from None
        return s

    @contextmanager
    def channel(self):
        """The control connection, exclusively; dropped after an error so the stream never
        desynchronizes (the next use reconnects)."""
        with self._sock_lock:
            if self._sock is None:
                self._sock = self._connect_socket()
            try:
                yield self._sock
            except BaseException as e:
                if not isinstance(e, TransferCancelled):
                    self._drop()
                raise

    def _drop(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def lease_table(self):
        if self._lease_view is None:
            raise InvalidArgument(f"peer {self.name!r} is on another node (or its lease table is not reachable): "
                                  "leased reads need the same node")
        return _addr(self._lease_view)

    def close(self):
        with self._sock_lock:
            self._drop()
        if self.ipc is not None:
            self.ipc.close()  # waits for a kernel running on the mapping
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self._lease_view = None
        if self._lease_map is not None:
            try:
                self._lease_map.close()
            except BufferError:
                pass
            self._lease_map = None

    def __repr__(self):
        return f"Peer({self.name!r}, pid={self.pid}, transport={self.transport_name!r})"


class Transfer:
    """One read or write in flight. ``future`` is the concurrent.futures.Future underneath (its
    result is this Transfer). ``wait`` returns self or raises the transfer's TransferError (with
    arrived/missing blocks); a transfer can be waited on to completion once."""

    def __init__(self, kind, peer, nbytes, dst_blocks, progress):
        self.kind, self.peer, self.nbytes = kind, peer, int(nbytes)
        self.dst_blocks = dst_blocks
        self._progress = progress
        self.future = None
        self._waited = False
        self.arrived_blocks = None
        self.missing_blocks = None

    @property
    def bytes_done(self):
        return int(self._progress.bytes_done)

    def done(self):
        return self.future.done()

    def cancel(self):
        """Stops the transfer at its next batch; True when it had not finished."""
        if self.future.done():
            return False
        self._progress.cancel()
        self.future.cancel()
        return True

    def wait(self, timeout=None):
        if self._waited:
            raise InvalidArgument(f"this {self.kind} with peer {self.peer.name!r} was already waited on "
                                  "(its outcome was delivered once)")
        try:
            self.future.result(timeout)
        except TransferError as e:  # first: TransferTimeout is also a TimeoutError
            self._waited = True
            self.arrived_blocks, self.missing_blocks = e.arrived_blocks, e.missing_blocks
            raise
        except concurrent.futures.TimeoutError:
            raise TransferTimeout(f"{self.kind} with peer {self.peer.name!r} not done after {timeout} s "
                                  f"({self.bytes_done} of {self.nbytes} bytes landed); it continues: wait again "
                                  "or cancel()", self.bytes_done) from None
        except concurrent.futures.CancelledError:
            self._waited = True
            self.arrived_blocks = self.dst_blocks[:0]
            self.missing_blocks = self.dst_blocks
            raise TransferCancelled(f"{self.kind} with peer {self.peer.name!r} was cancelled before it started",
                                    0, self.arrived_blocks, self.missing_blocks) from None
        self._waited = True
        return self

    def __repr__(self):
        state = "done" if self.future.done() else "running"
        return f"Transfer({self.kind}, peer={self.peer.name!r}, {self.bytes_done}/{self.nbytes} bytes, {state})"


class Agent:
    """One per process; see the module docstring. transport: "auto" (cross-memory attach, falling
    back to the staging ring where the kernel refuses it), "cma", "shm", "mpi" (one-sided, falling
    back to two-sided where the library refuses it) or "mpi2" (two-sided, packed by hauler); the
    MPI ones need an MPI job: every rank of comm, default COMM_WORLD, creates its agent together
    and closes it together (see hauler.kv.transport_mpi). timeout: seconds a control exchange or
    MPI wait with a peer may take before the transfer fails with TransferTimeout."""

    def __init__(self, name, transport="auto", timeout=10.0, max_workers=4, comm=None):
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"agent name must be a non-empty string, got {name!r}")
        if transport not in _TRANSPORTS:
            raise InvalidArgument(f"transport {transport!r} is not one of {', '.join(_TRANSPORTS)}")
        if not timeout or timeout <= 0:
            raise InvalidArgument(f"timeout must be positive seconds, got {timeout!r}")
        self.name, self.requested, self.timeout = name, transport, float(timeout)
        self._tag = uuid.uuid4().hex[:12]
        self._lock = threading.RLock()
        self._closed = False
        self._regs, self._peers = [], {}
        self._notifs, self._notif_cv = [], threading.Condition()
        self._leases = {}
        self._lease_ids = itertools.count(random.getrandbits(40) + 1)
        self._cma, self._shm, self._ipc, self._mpi = CmaTransport(), ShmTransport(), IpcTransport(), None
        if transport in ("mpi", "mpi2"):
            from .transport_mpi import MpiTransport
            self._mpi = MpiTransport(comm, one_sided=transport == "mpi", timeout=self.timeout)
        _sweep_stale_files()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.address = f"\0hauler-kv-{os.getpid()}-{self._tag}"
        self._listener.bind(self.address)
        self._listener.listen(64)
        self._conns = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix=f"hauler-kv-{name}")
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"hauler-kv-{name}-accept",
                                               daemon=True)
        self._accept_thread.start()

    # ---- registration and connection ----

    def _check_open(self):
        if self._closed:
            raise InvalidArgument(f"agent {self.name!r} is closed")

    def register(self, layout, huge_pages=True):
        """Exposes layout's memory to peers; returns the metadata bytes to hand them. huge_pages:
        advise (and collapse) transparent huge pages over its regions (see advise_huge_pages)."""
        self._check_open()
        for attr in ("to_bytes", "regions", "num_blocks", "dtype"):
            if not hasattr(layout, attr):
                raise InvalidArgument(f"register() takes a hauler.kv.KVLayout, got {type(layout).__name__}")
        device = getattr(layout, "device", None) is not None  # this side drives: staged through host memory
        with self._lock:
            reg = _Registration(len(self._regs), layout, self._tag, huge_pages and not device)
            self._regs.append(reg)
        boot, pidns = _node_id()
        meta = {"name": self.name, "pid": os.getpid(), "tag": self._tag, "control": self.address,
                "boot_id": boot, "pidns": pidns, "host": socket.gethostname(), "layout_index": reg.index,
                "layout": b64(layout.to_bytes()), "regions": reg.regions, "lease_table": reg.lease_path}
        if self._mpi is not None:
            meta["mpi"] = self._mpi.register(reg)
        if device:
            try:
                meta["ipc"] = export_handles(reg.regions)
            except HaulerError as e:  # not exportable: this side still drives its transfers (staged)
                meta["ipc_error"] = str(e)
        return _MAGIC + json.dumps(meta).encode()

    def _local(self, layout):
        if not self._regs:
            raise InvalidArgument(f"agent {self.name!r} has no registered layout: call register(layout) first")
        if layout is None:
            return self._regs[0]
        for r in self._regs:
            if r.layout is layout:
                return r
        raise InvalidArgument(f"that layout is not registered with agent {self.name!r}; register() it first")

    def connect(self, metadata, layout=None):
        """Makes the peer described by metadata usable; checks its layout against ours (layout:
        which of ours, default the first registered) before any byte moves."""
        self._check_open()
        from .layout import KVLayout
        if not isinstance(metadata, (bytes, bytearray, memoryview)) or not bytes(metadata).startswith(_MAGIC):
            raise InvalidArgument("metadata is not what Agent.register() returned (bad magic)")
        try:
            meta = json.loads(bytes(metadata)[len(_MAGIC):])
            remote = KVLayout.from_bytes(unb64(meta["layout"]))
        except (ValueError, KeyError) as e:
            raise InvalidArgument(f"metadata is corrupt: {e}") from None
        local = self._local(layout)
        check_compatible(local.layout, remote, self.name, meta["name"])
        if meta["pid"] == os.getpid() and meta["tag"] == self._tag:
            raise InvalidArgument(f"agent {self.name!r} cannot connect to itself")
        peer = Peer(self, meta, remote, local)
        try:
            peer.transport = self._choose_ipc(peer, meta) if remote.device is not None else self._choose(peer, meta)
        except BaseException:
            peer.close()
            raise
        with self._lock:
            old = self._peers.pop(peer.key, None)
            if old is not None:
                old.close()
            self._peers[peer.key] = peer
        return peer

    def _choose(self, peer, meta):
        want = self.requested
        if want in ("mpi", "mpi2"):
            t = self._mpi.connect(peer, meta)
            if want == "mpi" and t is not self._mpi:
                _banner(("mpi2", peer.key), f"hauler.kv: agent {self.name!r} moves bytes with peer {peer.name!r} "
                        "by two-sided messages packed by hauler, not one-sided MPI: "
                        + (self._mpi.refused or "the peer has no one-sided window"))
            return t
        if not peer.same_node:
            raise InvalidArgument(f"peer {peer.name!r} is on another node ({meta['host']}) or in another pid "
                                  f"namespace: transport {want!r} needs one node; use transport='mpi'")
        if want == "shm":
            return self._shm
        err = self._probe_cma(peer)
        if err is None:
            return self._cma
        if want == "cma":
            raise err
        _banner(("shm", peer.key), f"hauler.kv: agent {self.name!r} moves bytes with peer {peer.name!r} through "
                "the shared-memory staging ring (two copies), not cross-memory attach: " + str(err))
        return self._shm

    def _choose_ipc(self, peer, meta):
        """A peer's device cache: mapped here through CUDA IPC handles (one node only)."""
        where = f"peer {peer.name!r} registered device memory ({peer.layout.device})"
        if self.requested in ("mpi", "mpi2"):
            raise NoDevice(f"{where}: transport {self.requested!r} moves host memory only; the side with the "
                           "device cache drives the transfer (its read/write stage through host memory)")
        if not peer.same_node:
            raise NoDevice(f"{where} on another node, boot or pid namespace ({meta['host']}): CUDA IPC handles are "
                           "valid on one node only; the side with the device cache drives the transfer (its "
                           "read/write stage through host memory)")
        if "ipc" not in meta:
            raise NoDevice(f"{where} but could not export it through CUDA IPC: {meta.get('ipc_error')}")
        if peer.local.layout.device is None:
            peer.local.pin()
        peer.ipc = IpcMapping(peer.name, meta["ipc"], device_ordinal(peer.local.layout.device),
                              same_process=int(meta["pid"]) == os.getpid())
        return self._ipc

    def _probe_cma(self, peer):
        """None when process_vm_readv of the peer's first registered byte works, else the error."""
        if not peer.regions:
            return None
        probe = np.zeros(1, dtype=np.uint8)
        segs = np.array([[peer.regions[0][0], _addr(probe), 1]], dtype=np.int64)
        try:
            self._cma.move(peer, segs, False, _core().KvXferProgress())
        except TransferError as e:
            return e
        return None

    @property
    def transport_name(self):
        """Which transport moves bytes: one name when every peer uses the same (before any connect,
        the one that would be tried first), else "mixed: peer=name, ..."."""
        with self._lock:
            names = {p.name: p.transport_name for p in self._peers.values()}
        kinds = set(names.values())
        if not kinds:
            return "cma" if self.requested == "auto" else self.requested
        if len(kinds) == 1:
            return kinds.pop()
        return "mixed: " + ", ".join(f"{k}={v}" for k, v in sorted(names.items()))

    def peers(self):
        with self._lock:
            return list(self._peers.values())

    # ---- transfers ----

    def read(self, peer, local_blocks, remote_blocks, notify=None, lease=None, layers=None, heads=None,
             dst_heads=None, num_tokens=None):
        """Pulls the peer's remote_blocks into our local_blocks (tokens in list order regroup
        when block sizes differ; heads=(h0, h1) of the peer's heads land at dst_heads of ours).
        notify: bytes the peer receives (agent.notifications()) after every byte landed here.
        lease: the id of the peer's Lease on remote_blocks; the read then fails with LeaseExpired
        instead of returning bytes the peer may have reused."""
        return self._start("read", peer, local_blocks, remote_blocks, notify, lease, layers, heads, dst_heads,
                           num_tokens)

    def write(self, peer, local_blocks, remote_blocks, notify=None, lease=None, layers=None, heads=None,
              dst_heads=None, num_tokens=None):
        """Pushes our local_blocks into the peer's remote_blocks (heads: of ours, landing at
        dst_heads of the peer's); notify reaches the peer after every byte landed there."""
        return self._start("write", peer, local_blocks, remote_blocks, notify, lease, layers, heads, dst_heads,
                           num_tokens)

    def _start(self, kind, peer, local_blocks, remote_blocks, notify, lease, layers, heads, dst_heads, num_tokens):
        self._check_open()
        if not isinstance(peer, Peer) or peer._agent is not self:
            raise InvalidArgument(f"peer must be a Peer returned by this agent's connect(), got {peer!r}")
        with self._lock:
            if self._peers.get(peer.key) is not peer:
                raise InvalidArgument(f"peer {peer.name!r} is no longer connected to agent {self.name!r}")
        if notify is not None and not isinstance(notify, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"notify must be bytes, got {type(notify).__name__}")
        lb, rb = _blocks(local_blocks, "local_blocks"), _blocks(remote_blocks, "remote_blocks")
        _check_range(lb, peer.local.layout.num_blocks, "local_blocks")
        _check_range(rb, peer.layout.num_blocks, "remote_blocks")
        write = kind == "write"
        src_l, src_b, dst_l, dst_b = ((peer.local.layout, lb, peer.layout, rb) if write
                                      else (peer.layout, rb, peer.local.layout, lb))
        if len(np.unique(dst_b)) != len(dst_b):
            raise InvalidArgument(f"{'remote' if write else 'local'}_blocks (the destination) repeats a block")
        if peer.local.layout.device is not None and peer.transport is not self._ipc:
            stage = _Staging(kind, peer.local.layout, lb, peer.layout, rb, layers, heads, dst_heads, num_tokens)
            segs = stage.segs
        else:
            stage = None
            segs = self._plan(peer, kind, src_l, src_b, dst_l, dst_b, layers, heads, dst_heads, num_tokens)
        lease_ctx = self._lease_snapshot(peer, rb, lease) if lease is not None else None
        progress = _core().KvXferProgress()
        t = Transfer(kind, peer, int(segs[:, 2].sum()), dst_b, progress)
        ctx = dict(dst_layout=dst_l, dst_blocks=dst_b, layers=layers, heads=heads, dst_heads=dst_heads)
        t.future = self._pool.submit(self._run, t, peer, segs, write, progress, lease_ctx, notify, lease, ctx, stage)
        return t

    def _plan(self, peer, kind, src_l, src_b, dst_l, dst_b, layers, heads, dst_heads, num_tokens):
        """The request's segments, cached per peer by the block lists and options. A plan runs
        layer by layer, so a transfer cut short would have whole blocks only at its very end: the
        request is planned in up to _GROUPS groups of consecutive blocks (whole token units of
        both block sizes) whose segments follow each other, so a partial transfer holds a prefix
        of whole groups (coalescing across groups is lost; random blocks rarely had it)."""
        from .plan import plan as make_plan
        key = (kind, src_b.tobytes(), dst_b.tobytes(), repr(layers), repr(heads), repr(dst_heads), num_tokens)
        with self._lock:
            p = peer._plans.get(key)
            if p is not None:
                peer._plans.move_to_end(key)
                return p
        bs_s, bs_d = src_l.block_size, dst_l.block_size
        unit = bs_s * bs_d // math.gcd(bs_s, bs_d)  # tokens that end on a block edge on both sides
        total = len(src_b) * bs_s if num_tokens is None else int(num_tokens)
        per = max(1, -(-total // unit // _GROUPS)) * unit
        if total <= per or not 0 <= total <= min(len(src_b) * bs_s, len(dst_b) * bs_d):
            bounds = None  # one plan, which also words any error about the sizes
        else:
            bounds = list(range(0, total, per)) + [total]
        parts = []
        for t0, t1 in zip(bounds[:-1], bounds[1:]) if bounds else [(None, None)]:
            if bounds is None:
                sb, db, nt = src_b, dst_b, num_tokens
            else:
                sb, db = src_b[t0 // bs_s:-(-t1 // bs_s)], dst_b[t0 // bs_d:-(-t1 // bs_d)]
                nt = t1 - t0 if t1 == total and num_tokens is not None else None
            parts.append(make_plan(src_l, sb, dst_l, db, layers=layers, heads=heads, dst_heads=dst_heads,
                                   num_tokens=nt).segments())
        segs = np.ascontiguousarray(np.concatenate(parts) if len(parts) > 1 else parts[0], dtype=np.int64)
        with self._lock:
            peer._plans[key] = segs
            while len(peer._plans) > _PLAN_CACHE:
                peer._plans.popitem(last=False)
        return segs

    def _lease_snapshot(self, peer, blocks, lease):
        lease_id = int(lease.id if isinstance(lease, Lease) else lease)
        table = peer.lease_table()
        gens = np.zeros(len(blocks), dtype=np.uint64)
        bad, min_deadline = _core().kv_lease_snapshot(table, peer.layout.num_blocks, _addr(blocks), len(blocks),
                                                      lease_id, _addr(gens))
        if bad >= 0:
            raise LeaseExpired(f"lease {lease_id} from peer {peer.name!r} does not cover block "
                               f"{int(blocks[bad])} now (expired, released, revoked or never granted): "
                               "nothing was read", 0, blocks[:0], blocks)
        return lease_id, table, blocks, gens, min_deadline

    def _run(self, t, peer, segs, write, progress, lease_ctx, notify, lease, ctx, stage=None):
        try:
            return self._run_staged(t, peer, segs, write, progress, lease_ctx, notify, ctx, stage)
        finally:
            if stage is not None:
                stage.close()

    def _run_staged(self, t, peer, segs, write, progress, lease_ctx, notify, ctx, stage):
        transport = peer.transport
        try:
            if stage is not None and write:
                stage.device_to_host()
            try:
                transport.move(peer, segs, write, progress, None)
            except TransportRefused as e:
                if progress.bytes_done or (self.requested, transport) not in (("auto", self._cma), ("mpi", self._mpi)):
                    raise
                if transport is self._mpi:
                    _banner(("mpi2", peer.key), f"hauler.kv: one-sided MPI with peer {peer.name!r} refused; "
                            f"falling back to two-sided messages packed by hauler: {e}")
                    peer.transport = transport = self._mpi.two_sided
                else:
                    _banner(("shm", peer.key), f"hauler.kv: cross-memory attach to peer {peer.name!r} refused; "
                            f"falling back to the shared-memory staging ring: {e}")
                    peer.transport = transport = self._shm
                transport.move(peer, segs, write, progress, None)
            if lease_ctx is not None:
                lease_id, table, blocks, gens, min_deadline = lease_ctx
                bad = _core().kv_lease_verify(table, peer.layout.num_blocks, _addr(blocks), len(blocks),
                                              _addr(gens), min_deadline)
                if bad >= 0:
                    why = ("expired during the copy" if bad == len(blocks) else
                           f"was released or revoked on block {int(blocks[bad])} during the copy")
                    raise LeaseExpired(f"lease {lease_id} from peer {peer.name!r} {why}: the bytes read may be "
                                       "stale and must not be used", progress.bytes_done, t.dst_blocks[:0],
                                       t.dst_blocks)
            if stage is not None and not write:
                stage.host_to_device()
            if notify is not None:
                self._notify(peer, bytes(notify), lease_ctx[0] if lease_ctx else None)
        except TransferError as e:
            if e.arrived_blocks is None and stage is not None:  # nothing reached the device blocks
                e.arrived_blocks, e.missing_blocks = t.dst_blocks[:0], t.dst_blocks
            if e.arrived_blocks is None:
                e.arrived_blocks, e.missing_blocks = arrived_split(segs, progress.bytes_done, **ctx)
            raise
        t.arrived_blocks, t.missing_blocks = t.dst_blocks, t.dst_blocks[:0]
        return t

    # ---- notifications ----

    def _notify(self, peer, msg, lease_id):
        if self._mpi is not None and peer.transport in (self._mpi, self._mpi.two_sided):
            self._mpi.notify(peer, self.name, msg, lease_id)
            return
        try:
            with peer.channel() as sock:
                send_frame(sock, {"op": "notify", "from": self.name, "lease": lease_id}, msg)
        except OSError as e:
            raise PeerLost(f"every byte landed but the notification to peer {peer.name!r} (pid {peer.pid}) could "
                           f"not be delivered: {e}", 0) from None

    def notify(self, peer, msg, lease=None):
        """Sends msg to the peer's notifications() without a transfer; lease: the id of the peer's
        Lease the message releases (reads of several transfers under one lease notify once)."""
        self._check_open()
        if not isinstance(msg, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"msg must be bytes, got {type(msg).__name__}")
        lease_id = None if lease is None else int(lease.id if isinstance(lease, Lease) else lease)
        self._notify(peer, bytes(msg), lease_id)

    def notifications(self, timeout=0.0):
        """The notifications received since the last call: a list of (peer name, bytes) in arrival
        order; waits up to timeout seconds for the first when there are none."""
        if self._mpi is not None:  # MPI notifications arrive only when polled
            end = time.monotonic() + (timeout or 0)
            while True:
                self._take_notes(self._mpi.poll())
                if self._notifs or time.monotonic() >= end:
                    break
                time.sleep(0.001)
        with self._notif_cv:
            if not self._notifs and timeout:
                self._notif_cv.wait_for(lambda: self._notifs or self._closed, timeout)
            out, self._notifs = self._notifs, []
        return out

    def _take_notes(self, notes):
        """notes: [(sender, bytes, lease id or None)]; a lease named by a notification is released."""
        for sender, msg, lease_id in notes:
            if lease_id is not None:
                self.release(lease_id)
            with self._notif_cv:
                self._notifs.append((sender, msg))
                self._notif_cv.notify_all()

    # ---- leases ----

    def lease(self, blocks, seconds, layout=None):
        """Grants a lease on blocks of a registered layout (default the first) for seconds; the
        reader passes lease.id to read(). Raises InvalidArgument when a block is under another
        live lease."""
        self._check_open()
        reg = self._local(layout)
        b = _blocks(blocks, "blocks")
        _check_range(b, reg.layout.num_blocks, "blocks")
        if not seconds or seconds <= 0:
            raise InvalidArgument(f"lease seconds must be positive, got {seconds!r}")
        with self._lock:
            lease_id = next(self._lease_ids)
            deadline_ns = _core().kv_monotonic_ns() + int(seconds * 1e9)
            bad = _core().kv_lease_grant(_addr(reg.lease_view), reg.layout.num_blocks, _addr(b), len(b), lease_id,
                                         deadline_ns)
            if bad >= 0:
                raise InvalidArgument(f"block {int(b[bad])} is under another live lease; release it first")
            ls = Lease(self, reg, lease_id, b, deadline_ns / 1e9)
            self._leases[lease_id] = ls
        return ls

    def release(self, lease):
        """Ends a lease now (revoke): a read still copying under it fails with LeaseExpired."""
        lease_id = int(lease.id if isinstance(lease, Lease) else lease)
        with self._lock:
            ls = self._leases.pop(lease_id, None)
            if ls is None or self._closed:
                return False
            _core().kv_lease_clear(_addr(ls._reg.lease_view), ls._reg.layout.num_blocks, _addr(ls.blocks),
                                   len(ls.blocks), lease_id)
            ls.released = True
        return True

    def leases(self):
        """The live leases; expired ones are cleared from the table as a side effect."""
        with self._lock:
            for ls in [x for x in self._leases.values() if not x.live]:
                self.release(ls)
            return list(self._leases.values())

    # ---- control thread ----

    def _accept_loop(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                uid = int.from_bytes(creds[4:8], sys.byteorder)
            except OSError:
                uid = -1
            if uid != os.getuid():
                conn.close()
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name=f"hauler-kv-{self.name}-conn").start()

    def _serve(self, conn):
        rings = {}
        try:
            while True:
                header, payload = recv_frame(conn)
                op = header.get("op")
                if op == "notify":
                    self._take_notes([(header.get("from"), payload, header.get("lease"))])
                elif op == "stage":
                    with self._lock:
                        regions = [r for reg in self._regs if reg.layout.device is None for r in reg.regions]
                    serve_stage(conn, header, payload, regions, rings)
                elif op == "abort":  # a read cancelled after its last chunk went out: nothing to stop
                    send_frame(conn, {"op": "aborted"})
        except (OSError, ValueError):
            pass  # peer gone or closed: its transfers fail on its side
        finally:
            close_rings(rings)
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    # ---- shutdown ----

    def close(self):
        """Stops the agent: transfers in flight are cancelled, peers dropped, the control socket and
        lease tables removed. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            peers, self._peers = list(self._peers.values()), {}
            conns = list(self._conns)
        with self._notif_cv:
            self._notif_cv.notify_all()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for p in peers:
            p.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._shm.close()
        if self._mpi is not None:
            self._mpi.close()
        for r in self._regs:
            r.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Agent({self.name!r}, transport={self.transport_name!r}, {'closed' if self._closed else 'open'})"


class _Staging:
    """A transfer whose local side is device memory: the bytes pass through a host buffer shaped as
    the contiguous layout of the request's blocks (pinned when a GPU is usable), one part-1 plan
    between it and the device blocks (one kernel launch) and the usual plan between it and the peer.
    A failed or cancelled read leaves the device blocks untouched."""

    def __init__(self, kind, dev, lb, remote, rb, layers, heads, dst_heads, num_tokens):
        from .layout import contiguous_layout_like
        from .plan import plan as make_plan
        from .. import cuda_available
        n = len(lb)
        if n == 0:
            raise InvalidArgument("local_blocks is empty: a device-side transfer needs at least one block")
        self.buf = np.empty(n * dev.block_bytes, dtype=np.uint8)
        self.pinned = False
        if cuda_available():
            _core().host_register(_addr(self.buf), self.buf.nbytes, False)
            self.pinned = True
        host = contiguous_layout_like(dev, n, self.buf)
        sb = np.arange(n, dtype=np.int64)
        if kind == "read":  # peer -> host buffer (as planned against our layout) -> device blocks
            self.segs = make_plan(remote, rb, host, sb, layers=layers, heads=heads, dst_heads=dst_heads,
                                  num_tokens=num_tokens).segments()
            tokens = len(rb) * remote.block_size if num_tokens is None else int(num_tokens)
            rng = _dst_range(heads, dst_heads, dev.num_heads)
            self.device_plan = make_plan(host, sb, dev, lb, layers=layers, heads=rng, dst_heads=rng,
                                         num_tokens=tokens)
        else:  # device blocks -> host buffer -> peer
            tokens = len(lb) * dev.block_size if num_tokens is None else int(num_tokens)
            self.device_plan = make_plan(dev, lb, host, sb, layers=layers, heads=heads, dst_heads=heads,
                                         num_tokens=tokens)
            self.segs = make_plan(host, sb, remote, rb, layers=layers, heads=heads, dst_heads=dst_heads,
                                  num_tokens=num_tokens).segments()
        self.segs = np.ascontiguousarray(self.segs, dtype=np.int64)

    def device_to_host(self):
        from .moves import run_plan
        run_plan(self.device_plan)

    host_to_device = device_to_host  # the plan's direction says which

    def close(self):
        if self.pinned:
            _core().host_unregister(_addr(self.buf))
            self.pinned = False


def _dst_range(heads, dst_heads, dst_num_heads):
    """Where a head slice lands on the destination (plan()'s default rule), None for all heads."""
    if heads is None:
        return None
    if dst_heads is not None:
        return tuple(dst_heads)
    h0, h1 = heads
    return (0, h1 - h0) if dst_num_heads == h1 - h0 else (h0, h1)


def check_compatible(local, remote, local_name, remote_name):
    """Raises InvalidArgument naming both sides' values when the two layouts cannot exchange blocks.
    Kinds are compared by family: every K/V kind (vLLM flash/cross-layer/legacy, SGLang, LMCache,
    either order) holds the same per-token K and V, so the plan converts between them; an MLA
    latent cache is another thing; contiguous and explicit layouts pair with anything."""
    for what in ("dtype", "head_size", "num_layers", "kind", "num_planes"):
        a, b = getattr(local, what), getattr(remote, what)
        if what == "kind":
            fa, fb = _kind_family(a), _kind_family(b)
            if fa == fb or "any" in (fa, fb):
                continue
        elif a == b:
            continue
        raise InvalidArgument(f"incompatible KV layouts: {what} is {a!r} on {local_name!r} but {b!r} on "
                              f"{remote_name!r}")


def _kind_family(kind):
    kind = str(kind).lower()
    if kind in ("contiguous", "explicit"):
        return "any"
    return "mla" if kind.startswith("mla") else "kv"


def arrived_split(segs, bytes_done, dst_layout, dst_blocks, layers, heads, dst_heads):
    """(arrived, missing) destination blocks of a transfer that stopped after bytes_done bytes of its
    segment stream: a block arrived when no segment that stopped short touches it. The blocks'
    byte ranges come from a plan of each block onto itself (the same layers and head range)."""
    from .plan import plan as make_plan
    if not len(dst_blocks):
        return dst_blocks, dst_blocks
    ends = np.cumsum(segs[:, 2])
    first_short = int(np.searchsorted(ends, bytes_done, side="right"))
    if first_short >= len(segs):
        return dst_blocks, dst_blocks[:0]
    rng = _dst_range(heads, dst_heads, dst_layout.num_heads)
    starts_l, ends_l, owner = [], [], []
    for i, b in enumerate(dst_blocks):
        s = make_plan(dst_layout, [int(b)], dst_layout, [int(b)], layers=layers, heads=rng).segments()
        starts_l.append(s[:, 1])
        ends_l.append(s[:, 1] + s[:, 2])
        owner.append(np.full(len(s), i))
    starts, stops, owner = np.concatenate(starts_l), np.concatenate(ends_l), np.concatenate(owner)
    order = np.argsort(starts)
    starts, stops, owner = starts[order], stops[order], owner[order]
    short = segs[first_short:]
    lo = np.searchsorted(stops, short[:, 1], side="right")  # first range ending after the segment start
    hi = np.searchsorted(starts, short[:, 1] + short[:, 2], side="left")  # ranges starting before its end
    diff = np.zeros(len(starts) + 1, dtype=np.int64)
    np.add.at(diff, lo, 1)
    np.add.at(diff, hi, -1)
    touched = np.cumsum(diff[:-1]) > 0
    missing = np.zeros(len(dst_blocks), dtype=bool)
    missing[owner[touched]] = True
    return dst_blocks[~missing], dst_blocks[missing]


def _sweep_stale_files():
    """Lease tables and rings of processes that died without close() (SIGKILL) are removed."""
    mine = shm_prefix(0)[:-2]  # /dev/shm/hauler-kv-<our pid namespace>-
    for path in glob.glob(mine + "*"):
        m = re.match(re.escape(mine) + r"(\d+)-", path)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            try:
                os.unlink(path)
            except OSError:
                pass
