"""hauler.kv over MPI one-sided communication (Agent(name, transport="mpi")): the node-spanning
transport. MPI is the network layer; nothing here opens a socket between nodes.

Every rank of the communicator creates its Agent together (MPI_Win_create_dynamic is collective)
and keeps one dynamic window locked (lock_all, passive target) for the agent's life; register()
attaches the layout's regions to it. A transfer is ONE MPI_Get (read) or MPI_Put (write): both
sides' pieces become one derived datatype each (hindexed over absolute addresses, the plan's
segments in order, so the type signatures match byte for byte), then MPI_Win_flush. A
notification is a message on the agent's tag, sent after the flush returned (the bytes are then
at the target); the target picks it up in notifications().

Metadata travels with ``exchange_metadata(comm, metadata)`` (an allgather). Leases need the
owner's shared lease page: on one node they work as over CMA; across nodes read(lease=) is refused.
"""
import threading

from ..errors import InvalidArgument
from .transport import TransferError, segments_array

__all__ = ["MpiTransport", "exchange_metadata"]

_NOTIFY_TAG = 0x6B76  # "kv"


def _mpi():
    from mpi4py import MPI
    return MPI


def exchange_metadata(comm, metadata):
    """Every rank's Agent.register() metadata, indexed by rank (collective over comm)."""
    if not isinstance(metadata, (bytes, bytearray)):
        raise InvalidArgument(f"metadata must be bytes, got {type(metadata).__name__}")
    return comm.allgather(bytes(metadata))


class MpiTransport:
    name = "mpi"

    def __init__(self, comm=None):
        MPI = _mpi()
        if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
            raise InvalidArgument("transport='mpi' moves from the agent's worker threads: initialize MPI with at "
                                  "least MPI_THREAD_SERIALIZED (mpi4py's default is MULTIPLE)")
        self.comm = (comm or MPI.COMM_WORLD).Dup()
        self.win = MPI.Win.Create_dynamic(comm=self.comm)
        self.win.Lock_all()
        self._lock = threading.Lock()  # one MPI call at a time from this agent (SERIALIZED suffices)
        self._attached = []

    def register(self, reg):
        MPI = _mpi()
        for addr, n in reg.regions:
            mem = MPI.buffer.fromaddress(addr, n)
            with self._lock:
                self.win.Attach(mem)
            self._attached.append(mem)
        return {"rank": self.comm.Get_rank(), "size": self.comm.Get_size()}

    def connect(self, peer, meta):
        if "mpi" not in meta:
            raise InvalidArgument(f"peer {peer.name!r} did not register with transport='mpi'")
        if meta["mpi"]["size"] != self.comm.Get_size():
            raise InvalidArgument(f"peer {peer.name!r} is in a communicator of {meta['mpi']['size']} ranks, ours has "
                                  f"{self.comm.Get_size()}")
        peer.rank = int(meta["mpi"]["rank"])
        return self

    @staticmethod
    def _type(addrs, lens):
        MPI = _mpi()
        return MPI.BYTE.Create_hindexed(lens.tolist(), addrs.tolist()).Commit()

    def move(self, peer, segs, write, progress, deadline=None):
        MPI = _mpi()
        segs = segments_array(segs)
        segs = segs[segs[:, 2] > 0]
        total = int(segs[:, 2].sum())
        if not len(segs):
            return 0
        mine, theirs = (0, 1) if write else (1, 0)
        lt, rt = self._type(segs[:, mine], segs[:, 2]), self._type(segs[:, theirs], segs[:, 2])
        try:
            with self._lock:
                if write:
                    self.win.Put([MPI.BOTTOM, 1, lt], peer.rank, [0, 1, rt])
                else:
                    self.win.Get([MPI.BOTTOM, 1, lt], peer.rank, [0, 1, rt])
                self.win.Flush(peer.rank)
        except MPI.Exception as e:
            raise TransferError(f"MPI {'Put' if write else 'Get'} with rank {peer.rank} failed: {e}", 0) from None
        finally:
            lt.Free()
            rt.Free()
        progress.set_done(total)
        return total

    def notify(self, peer, sender, msg, lease):
        with self._lock:
            self.comm.send((sender, bytes(msg), lease), dest=peer.rank, tag=_NOTIFY_TAG)

    def poll(self):
        """Notifications that arrived: [(sender name, bytes, lease id or None)]."""
        MPI = _mpi()
        out = []
        with self._lock:
            st = MPI.Status()
            while self.comm.Iprobe(MPI.ANY_SOURCE, _NOTIFY_TAG, st):
                out.append(self.comm.recv(source=st.Get_source(), tag=_NOTIFY_TAG))
        return out

    def close(self):
        with self._lock:
            for mem in self._attached:
                self.win.Detach(mem)
            self._attached = []
            self.win.Unlock_all()
            self.win.Free()
            self.comm.Free()
