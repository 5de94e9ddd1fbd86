"""hauler.kv transports: how the bytes of one transfer move between two agents on one node.

A transport moves a segment list (``Plan.segments()``: rows of (src, dst, nbytes), absolute
addresses, one side the peer's) and reports how far it got, so a partial transfer can say which
blocks arrived:

* ``cma``: cross-memory attach. The initiator alone calls process_vm_readv/writev on the peer's
  registered memory (one copy, one-sided: the peer's threads are not involved, so a busy or hung
  peer does not slow it). The kernel refuses it under a strict ptrace scope or across containers.
* ``shm``: a shared-memory staging ring for where CMA is refused. The peer's control thread packs
  (or unpacks) its side into a ring of two slots in /dev/shm while the initiator drains (or fills)
  the other: two copies, and the peer's process must be alive and responsive.

Errors are TransferError subclasses carrying bytes_done and, once the agent fills them in, the
destination blocks that arrived and those that did not.
"""
import base64
import errno
import json
import mmap
import os
import socket
import struct
import threading
import uuid

import numpy as np

from ..errors import HaulerError, InvalidArgument

__all__ = ["TransferError", "PeerLost", "TransferTimeout", "LeaseExpired", "TransferCancelled",
           "TransportRefused", "PeerMemoryError", "CmaTransport", "ShmTransport"]


class TransferError(HaulerError):
    """A transfer that did not complete. ``bytes_done``: leading bytes of the plan's stream that
    landed; ``arrived_blocks`` / ``missing_blocks``: destination block ids whose bytes all landed
    / did not (numpy int64; a block counts as arrived only when every byte of it did)."""

    def __init__(self, message, bytes_done=0, arrived_blocks=None, missing_blocks=None):
        super().__init__(message)
        self.bytes_done = int(bytes_done)
        self.arrived_blocks = arrived_blocks
        self.missing_blocks = missing_blocks


class PeerLost(TransferError, ConnectionError):
    """The peer process exited (or closed its agent) before the transfer finished."""


class TransferTimeout(TransferError, TimeoutError):
    """The transfer (or the peer's answer) did not come within the timeout."""


class LeaseExpired(TransferError):
    """The lease the read relied on expired, was released or revoked before the copy ended:
    the bytes that landed may be stale and must not be used."""


class TransferCancelled(TransferError):
    """The transfer was cancelled; the blocks reported as arrived are whole."""


class TransportRefused(TransferError, PermissionError):
    """The kernel refused the transport (process_vm_readv: EPERM under ptrace scope or across
    containers); with transport="auto" the agent falls back instead of raising this."""


class PeerMemoryError(TransferError):
    """A segment was outside the peer's mapped/registered memory (EFAULT)."""


def _core():
    from .. import _require_core
    return _require_core()


def _addr(a):
    return a.__array_interface__["data"][0]


def segments_array(segs):
    """The (n, 3) C-contiguous int64 array the C++ core reads."""
    a = np.ascontiguousarray(segs, dtype=np.int64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise InvalidArgument(f"segments must be an (n, 3) array of (src, dst, nbytes), got shape {a.shape}")
    return a


class CmaTransport:
    """process_vm_readv / process_vm_writev, batched (see csrc/kv/cma.cpp)."""

    name = "cma"
    # Bytes per system call: bounds how long a cancel or a peer's exit goes unnoticed.
    max_call_bytes = 64 << 20

    def move(self, peer, segs, write, progress, deadline=None):
        """Moves segs with the peer (read: column 0 is the peer's, write: column 1). Returns
        bytes_done; raises a TransferError subclass (bytes_done set) when it stops early."""
        segs = segments_array(segs)
        done, _, err, _ = _core().kv_cma_move(peer.pid, peer.pidfd, bool(write), _addr(segs), len(segs),
                                             self.max_call_bytes, progress)
        if err:
            raise cma_error(err, peer, write, done)
        return done


def cma_error(err, peer, write, done):
    call = "process_vm_writev" if write else "process_vm_readv"
    who = f"peer {peer.name!r} (pid {peer.pid})"
    if err == errno.ESRCH:
        return PeerLost(f"{who} exited during the transfer ({call}: ESRCH) after {done} bytes", done)
    if err == errno.EPERM:
        return TransportRefused(f"{call} to {who} refused (EPERM): the kernel's ptrace scope "
                                "(/proc/sys/kernel/yama/ptrace_scope) or a container forbids cross-memory "
                                "attach; use transport='shm' or 'auto'", done)
    if err == errno.EFAULT:
        return PeerMemoryError(f"{call} to {who} hit memory outside its mapped registered regions (EFAULT) "
                               f"after {done} bytes: the peer freed or unregistered its KV cache", done)
    if err == errno.ECANCELED:
        return TransferCancelled(f"transfer with {who} cancelled after {done} bytes", done)
    return TransferError(f"{call} to {who} failed after {done} bytes: {os.strerror(err)} "
                         f"({errno.errorcode.get(err, err)})", done)


# ---- control channel framing: u32 header length, u64 payload length, JSON header, payload ----

_FRAME = struct.Struct("<IQ")


def send_frame(sock, header, payload=b""):
    h = json.dumps(header).encode()
    sock.sendall(_FRAME.pack(len(h), len(payload)) + h + bytes(payload))


def _recv_exact(sock, n):
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionResetError("control connection closed by the other side")
        got += k
    return bytes(buf)


def recv_frame(sock):
    hl, pl = _FRAME.unpack(_recv_exact(sock, _FRAME.size))
    if hl > 1 << 20 or pl > 1 << 34:
        raise ConnectionError(f"malformed control frame (header {hl} bytes, payload {pl} bytes)")
    header = json.loads(_recv_exact(sock, hl))
    return header, (_recv_exact(sock, pl) if pl else b"")


def b64(b):
    return base64.b64encode(bytes(b)).decode()


def unb64(s):
    return base64.b64decode(s)


class ShmTransport:
    """The staging ring: a /dev/shm file of two slots per peer connection, created by the
    initiator; the peer's control thread packs (read) or unpacks (write) its side chunk by chunk
    while the initiator does the other side of the other slot."""

    name = "shm"
    slot_bytes = 4 << 20

    def __init__(self):
        self._rings = {}  # peer key -> (path, mmap, numpy view)
        self._lock = threading.Lock()

    def _ring(self, peer):
        with self._lock:
            r = self._rings.get(peer.key)
            if r is None:
                path = f"{shm_prefix()}{uuid.uuid4().hex[:12]}.ring"
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.ftruncate(fd, 2 * self.slot_bytes)
                    mm = mmap.mmap(fd, 2 * self.slot_bytes)
                finally:
                    os.close(fd)
                r = self._rings[peer.key] = (path, mm, np.frombuffer(mm, dtype=np.uint8))
            return r

    def close(self):
        with self._lock:
            for path, mm, view in self._rings.values():
                del view
                try:
                    mm.close()
                except BufferError:  # a transfer still holds a view; the file goes anyway
                    pass
                _unlink(path)
            self._rings.clear()

    def move(self, peer, segs, write, progress, deadline=None):
        segs = segments_array(segs)
        total = int(segs[:, 2].sum())
        path, _, view = self._ring(peer)
        base, slot, core = _addr(view), self.slot_bytes, _core()
        nchunks = -(-total // slot)
        done = 0
        with peer.channel() as sock:
            send_frame(sock, {"op": "stage", "ring": path, "write": bool(write), "slot": slot,
                              "total": total}, segs.tobytes())
            try:
                for k in range(nchunks):
                    off, n = k * slot, min(slot, total - k * slot)
                    buf = base + (k % 2) * slot
                    if progress.cancelled:
                        send_frame(sock, {"op": "abort"})
                        while recv_frame(sock)[0].get("op") != "aborted":  # drop frames in flight
                            pass
                        raise TransferCancelled(f"transfer with peer {peer.name!r} cancelled after {done} bytes",
                                                done)
                    if write:  # refill a slot once the peer drained it (two in flight)
                        if k >= 2:
                            _expect(sock, "credit", peer, done)
                            done += min(slot, total - (k - 2) * slot)
                            progress_set(progress, done)
                        core.kv_segments_stage(_addr(segs), len(segs), 0, off, buf, n, True)
                        send_frame(sock, {"op": "chunk", "k": k})
                        continue
                    else:  # the peer filled the slot; drain it and give it back if it refills it
                        _expect(sock, "chunk", peer, done)
                        core.kv_segments_stage(_addr(segs), len(segs), 1, off, buf, n, False)
                        if k + 2 < nchunks:
                            send_frame(sock, {"op": "credit", "k": k})
                    done += n
                    progress_set(progress, done)
                if write:
                    for k in range(max(0, nchunks - 2), nchunks):
                        _expect(sock, "credit", peer, done)
                        done += min(slot, total - k * slot)
                        progress_set(progress, done)
                _expect(sock, "done", peer, done)
            except (socket.timeout, TimeoutError):
                raise TransferTimeout(f"peer {peer.name!r} (pid {peer.pid}) did not answer within "
                                      f"{peer.timeout} s during a staged transfer ({done} of {total} bytes)",
                                      done) from None
            except (ConnectionError, OSError) as e:
                if isinstance(e, TransferError):
                    raise
                raise PeerLost(f"peer {peer.name!r} (pid {peer.pid}) lost during a staged transfer after "
                               f"{done} of {total} bytes: {e}", done) from None
        return done


def progress_set(progress, done):
    """Python-side transports report progress through the same object the C++ one fills."""
    progress.set_done(done)


def _expect(sock, op, peer, done):
    h, _ = recv_frame(sock)
    if h.get("op") == "error":
        cls = {"range": PeerMemoryError}.get(h.get("kind"), TransferError)
        raise cls(f"peer {peer.name!r} refused the staged transfer: {h.get('msg')}", done)
    if h.get("op") != op:
        raise ConnectionError(f"expected {op!r} from peer {peer.name!r}, got {h.get('op')!r}")
    return h


def serve_stage(sock, header, payload, regions, rings):
    """Peer side of ShmTransport.move, run by the control thread of the agent that owns the
    memory. Every address on our side must lie inside one registered region: a peer can never
    make us read or write anything else. rings: this connection's mapped rings by path (kept
    for its life: a small request must not pay a mapping and its page faults each time).

    A request costs one round trip when it fits one slot: a read's last two slots are never
    refilled, so they need no credit (the initiator holds the ring until it drained them)."""
    segs = np.frombuffer(payload, dtype=np.int64).reshape(-1, 3).copy()
    write, slot, total = bool(header["write"]), int(header["slot"]), int(header["total"])
    col = 1 if write else 0  # our column: dst when the peer writes, src when it reads
    bad = outside_regions(segs[:, col], segs[:, 2], regions)
    if bad is not None or int(segs[:, 2].sum()) != total or slot <= 0:
        why = (f"segment {bad} ({int(segs[bad, col]):#x}, {int(segs[bad, 2])} bytes) is outside the registered "
               "regions" if bad is not None else "malformed request")
        send_frame(sock, {"op": "error", "kind": "range", "msg": why})
        return
    ring = rings.get(header["ring"])
    if ring is None or len(ring[0]) != 2 * slot:
        fd = os.open(header["ring"], os.O_RDWR)
        try:
            mm = mmap.mmap(fd, 2 * slot)
        finally:
            os.close(fd)
        ring = rings[header["ring"]] = (mm, np.frombuffer(mm, dtype=np.uint8))
    base, core = _addr(ring[1]), _core()
    for k in range(-(-total // slot)):
        off, n = k * slot, min(slot, total - k * slot)
        buf = base + (k % 2) * slot
        if write:
            h, _ = recv_frame(sock)
            if h.get("op") != "chunk":  # abort: what landed stays within the destination
                send_frame(sock, {"op": "aborted"})
                return
            core.kv_segments_stage(_addr(segs), len(segs), 1, off, buf, n, False)
            send_frame(sock, {"op": "credit", "k": k})
        else:
            if k >= 2:  # wait until the initiator drained the slot we are about to refill
                h, _ = recv_frame(sock)
                if h.get("op") != "credit":
                    send_frame(sock, {"op": "aborted"})
                    return
            core.kv_segments_stage(_addr(segs), len(segs), 0, off, buf, n, True)
            send_frame(sock, {"op": "chunk", "k": k})
    send_frame(sock, {"op": "done"})


def close_rings(rings):
    for mm, view in rings.values():
        del view
        try:
            mm.close()
        except BufferError:
            pass
    rings.clear()


def outside_regions(addrs, sizes, regions):
    """Index of the first (addr, size) not inside one of regions [(addr, nbytes)], else None."""
    if not len(addrs):
        return None
    reg = np.array(sorted(regions), dtype=np.int64).reshape(-1, 2)
    if not len(reg):
        return 0
    starts, ends = reg[:, 0], reg[:, 0] + reg[:, 1]
    i = np.searchsorted(starts, addrs, side="right") - 1
    ok = (i >= 0) & (addrs >= starts[np.maximum(i, 0)]) & (addrs + sizes <= ends[np.maximum(i, 0)])
    ok |= sizes == 0
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if len(bad) else None


def shm_prefix(pid=None):
    """/dev/shm/hauler-kv-<pid namespace>-<pid>-: files of this process. The namespace is in the
    name so a sweep of dead processes' files never takes those of a live process whose pid only
    looks dead from here (containers sharing /dev/shm)."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"/dev/shm/hauler-kv-{ns}-{os.getpid() if pid is None else pid}-"


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
