"""hauler.kv over MPI (Agent(name, transport="mpi" or "mpi2")): the node-spanning transports. MPI
is the network layer; nothing here opens a socket between nodes.

Every rank of the communicator creates its Agent together (MPI_Win_create_dynamic is collective)
and closes it together. The agent's own MPI calls are serialized by a lock, but its service thread
runs beside the application's: where the application calls MPI while an agent is open, initialize
with MPI_THREAD_MULTIPLE (MPICH over UCX asserts otherwise); SERIALIZED suffices when it does not.

- "mpi", one-sided: one dynamic window, locked (lock_all, passive target) for the agent's life;
  register() attaches the layout's regions to it. A transfer is ONE MPI_Rget (read) or MPI_Put
  (write): each side's pieces become one derived datatype (hindexed over absolute addresses, the
  plan's segments in order, so the type signatures match byte for byte).
- "mpi2", two-sided, packed by hauler: the side holding the bytes packs them with hauler.datatype
  (the plan's side type) into one contiguous message, the other side receives it into a staging
  buffer and unpacks it into its blocks. Each agent runs a service thread that answers its
  peers' requests (and, for one-sided, drives MPI progress, which osc/pt2pt needs). "mpi" falls
  back to it per peer, with a warning, when the library refuses the one-sided calls (Open MPI
  4's osc/rdma answers MPI_ERR_RMA_RANGE for dynamic windows without an RDMA network).

Timeouts: every wait is a test loop bounded by the agent's timeout, so a hung peer gives
TransferTimeout, never a hang. A staged receive that times out is cancelled and the late bytes,
if any, land in the staging buffer, never in the cache. A peer that dies is another matter: MPI
has no peer-lost error. With the default error handler (and under mpirun/mpiexec.hydra, which
kill the remaining ranks when one dies) the whole job aborts; a survivor sees neither an error
nor a partial result. Fault-tolerant MPI (ULFM) is not assumed.

A notification is a message on the agent's tag, sent after the bytes are at the target (after
MPI_Win_flush, or the target's acknowledgement of an unpack). Metadata travels with
``exchange_metadata(comm, metadata)`` (an allgather). Leases need the owner's shared lease page:
on one node they work as over CMA; across nodes read(lease=) is refused.
"""
import itertools
import threading
import time

import numpy as np

from ..errors import InvalidArgument
from .transport import TransferCancelled, TransferError, TransferTimeout, TransportRefused, segments_array

__all__ = ["MpiTransport", "exchange_metadata"]

_NOTIFY_TAG = 0x6B76  # "kv"
_REQ_TAG = 0x6B77     # two-sided requests: ("get" | "put", reply tag, [(address, nbytes)] of the target)
_REPLY_BASE = 0x1000  # per transfer: status on an even tag, data on the next one
_REPLY_SLOTS = 4096
_POLL_S = 0.0005
# A message moves only while its two sides call into MPI (a rendezvous, then fragment by fragment):
# waits spin (yielding the GIL) this long before they sleep between tests.
_SPIN_S = 0.005


def _pause(start):
    """Between two tests of a wait that began at `start`: a yield first, then _POLL_S sleeps."""
    time.sleep(0 if time.monotonic() - start < _SPIN_S else _POLL_S)


def _mpi():
    from mpi4py import MPI
    return MPI


def exchange_metadata(comm, metadata):
    """Every rank's Agent.register() metadata, indexed by rank (collective over comm)."""
    if not isinstance(metadata, (bytes, bytearray)):
        raise InvalidArgument(f"metadata must be bytes, got {type(metadata).__name__}")
    return comm.allgather(bytes(metadata))


def _byte_type(addrs, lens):
    """hauler Datatype of bytes at absolute addresses (origin 0, like MPI_BOTTOM)."""
    from .plan import _hindexed
    from ..datatype import BYTE
    return _hindexed(lens, addrs, BYTE)


def _span(addrs, lens):
    """A writable numpy view from address 0's point of view: the pack origin is -lo bytes into it."""
    lo, hi = int(addrs.min()), int((addrs + lens).max())
    return np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint8 * (hi - lo)).from_address(lo)), lo


def _pack(addrs, lens):
    buf, lo = _span(addrs, lens)
    return _byte_type(addrs, lens).pack(buf, offset=-lo)


def _unpack(packed, addrs, lens):
    buf, lo = _span(addrs, lens)
    _byte_type(addrs, lens).unpack(packed, buf, offset=-lo)


def _sides(segs, write):
    """(non-empty segments, their bytes, our column, the peer's column)."""
    segs = segments_array(segs)
    segs = segs[segs[:, 2] > 0]
    return (segs, int(segs[:, 2].sum()), *((0, 1) if write else (1, 0)))


class _TwoSided:
    """The "mpi2" face of an MpiTransport: same communicator, lock and service thread."""
    name = "mpi2"

    def __init__(self, base):
        self._base = base

    def move(self, peer, segs, write, progress, deadline=None):
        return self._base.move_two_sided(peer, segs, write, progress)

    def notify(self, peer, sender, msg, lease):
        self._base.notify(peer, sender, msg, lease)


class MpiTransport:
    name = "mpi"

    def __init__(self, comm=None, one_sided=True, timeout=10.0):
        MPI = _mpi()
        if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
            raise InvalidArgument("transport='mpi' moves from the agent's worker threads: initialize MPI with at "
                                  "least MPI_THREAD_SERIALIZED (mpi4py's default is MULTIPLE)")
        self.timeout = float(timeout)
        self.comm = (comm or MPI.COMM_WORLD).Dup()
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)
        self.two_sided = _TwoSided(self)
        self.win, self.refused = None, None
        if one_sided:
            try:
                self.win = MPI.Win.Create_dynamic(comm=self.comm)
                self.win.Set_errhandler(MPI.ERRORS_RETURN)
                self.win.Lock_all()
            except MPI.Exception as e:  # collective: every rank sees the same refusal
                self.win, self.refused = None, f"MPI_Win_create_dynamic/lock_all refused: {e}"
        self._lock = threading.Lock()  # one MPI call at a time from this agent (SERIALIZED suffices)
        self._attached = []
        self._regions = np.zeros((0, 2), dtype=np.int64)  # sorted (start, end) of registered memory
        self._seq = itertools.count()
        self._notes = []
        self._pending = []    # service side: [(request, buffers kept alive, on_done)]
        self._abandoned = []  # requests given up on by a timed-out transfer, with their buffers
        self._stop = threading.Event()
        self._service = threading.Thread(target=self._serve, name="hauler-kv-mpi-service", daemon=True)
        self._service.start()

    @property
    def one_sided(self):
        return self.win is not None

    def default(self):
        """The transport a new peer starts on."""
        return self if self.one_sided else self.two_sided

    def register(self, reg):
        MPI = _mpi()
        if reg.layout.device is not None:  # peers refuse a device cache at connect: nothing to expose
            return {"rank": self.comm.Get_rank(), "size": self.comm.Get_size(), "one_sided": self.one_sided}
        for addr, n in reg.regions:
            if self.win is not None:
                mem = MPI.buffer.fromaddress(addr, n)
                with self._lock:
                    self.win.Attach(mem)
                self._attached.append(mem)
        r = np.array([[a, a + n] for a, n in reg.regions], dtype=np.int64).reshape(-1, 2)
        with self._lock:
            allr = np.concatenate([self._regions, r])
            self._regions = allr[np.argsort(allr[:, 0], kind="stable")]
        return {"rank": self.comm.Get_rank(), "size": self.comm.Get_size(), "one_sided": self.one_sided}

    def connect(self, peer, meta):
        if "mpi" not in meta:
            raise InvalidArgument(f"peer {peer.name!r} did not register with transport='mpi' or 'mpi2'")
        if meta["mpi"]["size"] != self.comm.Get_size():
            raise InvalidArgument(f"peer {peer.name!r} is in a communicator of {meta['mpi']['size']} ranks, ours has "
                                  f"{self.comm.Get_size()}")
        peer.rank = int(meta["mpi"]["rank"])
        return self if self.one_sided and meta["mpi"].get("one_sided", True) else self.two_sided

    # ---- waiting without hanging ----

    def _wait(self, reqs, peer, what, progress, done_bytes, keep, cancel=True):
        """Tests reqs (under the lock, released between tests) until all complete; a request not
        complete within the agent's timeout, or a cancel, abandons them (kept alive with keep;
        point-to-point ones are cancelled: RMA requests cannot be)."""
        MPI = _mpi()
        start = time.monotonic()
        end = start + self.timeout
        while True:
            with self._lock:
                if MPI.Request.Testall(reqs):
                    return
            if progress.cancelled or time.monotonic() >= end:
                with self._lock:
                    for r in reqs if cancel else ():
                        if r != MPI.REQUEST_NULL:
                            try:
                                r.Cancel()
                            except MPI.Exception:
                                pass
                    self._abandoned.append((reqs, keep))
                if progress.cancelled:
                    raise TransferCancelled(f"transfer with rank {peer.rank} ({peer.name!r}) cancelled while "
                                            f"waiting for {what}", done_bytes)
                raise TransferTimeout(f"rank {peer.rank} ({peer.name!r}) did not complete {what} within "
                                      f"{self.timeout} s ({done_bytes} bytes landed)", done_bytes)
            _pause(start)

    # ---- one-sided ----

    @staticmethod
    def _mpi_type(addrs, lens):
        MPI = _mpi()
        return MPI.BYTE.Create_hindexed(lens.tolist(), addrs.tolist()).Commit()

    def move(self, peer, segs, write, progress, deadline=None):
        MPI = _mpi()
        segs, total, mine, theirs = _sides(segs, write)
        if not total:
            return 0
        lt, rt = self._mpi_type(segs[:, mine], segs[:, 2]), self._mpi_type(segs[:, theirs], segs[:, 2])
        op = "MPI_Put" if write else "MPI_Rget"
        try:
            with self._lock:
                if write:  # no request-based flush in MPI: the flush below is the one call that can block
                    self.win.Put([MPI.BOTTOM, 1, lt], peer.rank, [0, 1, rt])
                    self.win.Flush(peer.rank)
                    req = None
                else:
                    req = self.win.Rget([MPI.BOTTOM, 1, lt], peer.rank, [0, 1, rt])
            if req is not None:
                self._wait([req], peer, op, progress, 0, (lt, rt), cancel=False)
        except MPI.Exception as e:
            raise TransportRefused(f"{op} with rank {peer.rank} ({peer.name!r}) refused by the MPI library: "
                                   f"{e.Get_error_string()}", 0) from None
        except TransferError:
            lt = rt = None  # abandoned: the types stay alive with the request
            raise
        finally:
            if lt is not None:
                lt.Free()
                rt.Free()
        progress.set_done(total)
        return total

    # ---- two-sided, packed by hauler ----

    def move_two_sided(self, peer, segs, write, progress):
        MPI = _mpi()
        segs, total, mine, theirs = _sides(segs, write)
        if not total:
            return 0
        tag = _REPLY_BASE + 2 * (next(self._seq) % _REPLY_SLOTS)
        remote = np.ascontiguousarray(segs[:, [theirs, 2]])
        status = bytearray(1 << 12)
        if write:
            packed = _pack(segs[:, mine], segs[:, 2])
            with self._lock:
                reqs = [self.comm.isend(("put", tag, remote), dest=peer.rank, tag=_REQ_TAG),
                        self.comm.Isend([packed, MPI.BYTE], dest=peer.rank, tag=tag + 1),
                        self.comm.irecv(status, source=peer.rank, tag=tag)]
            self._wait(reqs[:2], peer, "the pushed message", progress, 0, (packed, status, reqs))
            answer = self._answer(reqs[2], peer, progress, 0, status)
        else:
            packed = np.empty(total, dtype=np.uint8)
            with self._lock:
                reqs = [self.comm.irecv(status, source=peer.rank, tag=tag),
                        self.comm.Irecv([packed, MPI.BYTE], source=peer.rank, tag=tag + 1),
                        self.comm.isend(("get", tag, remote), dest=peer.rank, tag=_REQ_TAG)]
            answer = self._answer(reqs[0], peer, progress, 0, status, (packed, reqs))
            if answer is None:
                self._wait([reqs[1], reqs[2]], peer, "the requested bytes", progress, 0, (packed, reqs))
                _unpack(packed, segs[:, mine], segs[:, 2])
            else:  # no data follows: withdraw the receive posted for it
                with self._lock:
                    reqs[1].Cancel()
                    self._abandoned.append((reqs[1:], packed))
        if answer is not None:
            raise TransferError(f"rank {peer.rank} ({peer.name!r}) refused the {'write' if write else 'read'}: "
                                f"{answer}", 0)
        progress.set_done(total)
        return total

    def _answer(self, req, peer, progress, done, status, keep=()):
        """The target's status: None (ok) or its error text."""
        holder = []
        MPI = _mpi()
        start = time.monotonic()
        end = start + self.timeout
        while True:
            with self._lock:
                flag, msg = req.test()
            if flag:
                return msg
            if progress.cancelled or time.monotonic() >= end:
                with self._lock:
                    try:
                        req.Cancel()
                    except MPI.Exception:
                        pass
                    self._abandoned.append(([req], (status, keep, holder)))
                if progress.cancelled:
                    raise TransferCancelled(f"transfer with rank {peer.rank} ({peer.name!r}) cancelled while "
                                            "waiting for its answer", done)
                raise TransferTimeout(f"rank {peer.rank} ({peer.name!r}) did not answer within {self.timeout} s",
                                      done)
            _pause(start)

    def _outside(self, remote):
        """Text naming the first requested piece outside our registered memory, else None."""
        starts, ends = remote[:, 0], remote[:, 0] + remote[:, 1]
        r = self._regions
        i = np.searchsorted(r[:, 0], starts, side="right") - 1
        ok = (i >= 0) & (ends <= r[np.maximum(i, 0), 1]) & (remote[:, 1] >= 0)
        if ok.all():
            return None
        k = int(np.flatnonzero(~ok)[0])
        return f"piece {k} [{int(starts[k]):#x}, +{int(remote[k, 1])}) is outside the registered memory"

    def _serve(self):
        """Answers peers' two-sided requests and completes what they left pending. Every MPI call is
        under the lock, held only for non-blocking calls."""
        MPI = _mpi()
        st = MPI.Status()
        idle, moved = _POLL_S, 0.0  # moved: when a request last started or completed
        while not self._stop.is_set():
            busy = False
            with self._lock:
                if self._stop.is_set():
                    return
                if self.comm.Iprobe(MPI.ANY_SOURCE, _REQ_TAG, st):
                    src = st.Get_source()
                    op, tag, remote = self.comm.recv(source=src, tag=_REQ_TAG)
                    self._start_request(src, op, tag, np.asarray(remote, dtype=np.int64).reshape(-1, 2))
                    busy = True
                still = []
                for reqs, keep, on_done in self._pending:
                    if MPI.Request.Testall(reqs):
                        if on_done is not None:
                            on_done()
                        busy = True
                    else:
                        still.append((reqs, keep, on_done))
                self._pending = still
                self._abandoned = [(r, k) for r, k in self._abandoned if not MPI.Request.Testall(r)]
                if self.win is not None and not busy:
                    self.comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)  # progress for passive-target RMA
            if busy:
                moved = time.monotonic()
            if self._pending and time.monotonic() - moved < _SPIN_S:  # in flight: moves only while we call MPI
                time.sleep(0)
                continue
            idle = _POLL_S if busy else min(idle * 2, 0.005)
            self._stop.wait(idle)

    def _start_request(self, src, op, tag, remote):
        """(lock held) A peer's get (pack and send) or put (receive, then unpack)."""
        MPI = _mpi()
        err = self._outside(remote)
        if op == "get":
            if err is not None:
                self._pending.append(([self.comm.isend(err, dest=src, tag=tag)], None, None))
                return
            packed = _pack(remote[:, 0], remote[:, 1])
            reqs = [self.comm.isend(None, dest=src, tag=tag), self.comm.Isend([packed, MPI.BYTE], dest=src, tag=tag + 1)]
            self._pending.append((reqs, packed, None))
            return
        packed = np.empty(int(remote[:, 1].sum()), dtype=np.uint8)

        def landed():
            if err is None:
                _unpack(packed, remote[:, 0], remote[:, 1])
            self._pending.append(([self.comm.isend(err, dest=src, tag=tag)], None, None))
        self._pending.append(([self.comm.Irecv([packed, MPI.BYTE], source=src, tag=tag + 1)], packed, landed))

    # ---- notifications ----

    def notify(self, peer, sender, msg, lease):
        with self._lock:
            req = self.comm.isend((sender, bytes(msg), lease), dest=peer.rank, tag=_NOTIFY_TAG)
        self._wait([req], peer, "the notification", _NoCancel, 0, None)

    def poll(self):
        """Notifications that arrived: [(sender name, bytes, lease id or None)]."""
        MPI = _mpi()
        out = []
        if not self._lock.acquire(timeout=self.timeout):  # a blocked flush: report none rather than hang
            return out
        try:
            st = MPI.Status()
            while self.comm.Iprobe(MPI.ANY_SOURCE, _NOTIFY_TAG, st):
                out.append(self.comm.recv(source=st.Get_source(), tag=_NOTIFY_TAG))
        finally:
            self._lock.release()
        return out

    def close(self):
        self._stop.set()
        self._service.join()
        with self._lock:
            if self.win is not None:
                for mem in self._attached:
                    self.win.Detach(mem)
                self.win.Unlock_all()
                self.win.Free()
            self._attached = []
            self.comm.Free()


class _NoCancel:
    cancelled = False
