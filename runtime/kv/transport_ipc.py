"""CUDA IPC: a peer's device KV cache on this node, mapped into this process.

The owner's register() exports one handle per device allocation its layout spans
(cuIpcGetMemHandle through the core's libcuda loader); connect() maps them (cuIpcOpenMemHandle,
with peer access enabled lazily) and every transfer is one launch of the part-1 KV copy kernel
between our blocks (device memory, or host memory pinned for the GPU) and the mapped peer blocks.
close() unmaps. Under the GPU host emulation the handles name shared memory of the owner, so two
real processes run this very path in the tests.
"""
import os
import select
import threading

import numpy as np

from ..errors import HaulerError, InvalidArgument, NoDevice
from .transport import PeerLost, PeerMemoryError, TransferCancelled, b64, segments_array, unb64


def _core():
    from .. import _require_core
    return _require_core()


def export_handles(regions):
    """[{"handle", "base", "size"}] for the device allocations holding regions (one per allocation)."""
    out, seen = [], []
    for addr, n in regions:
        if any(b <= addr and addr + n <= b + s for b, s in seen):
            continue
        handle, base, size = _core().kv_ipc_export(int(addr))
        if not (base <= addr and addr + n <= base + size):
            raise InvalidArgument(f"device region [{addr:#x}, +{n}) spans more than one allocation (its first "
                                  f"ends at {base + size:#x}): CUDA IPC maps whole allocations one by one")
        seen.append((base, size))
        out.append({"handle": b64(handle), "base": int(base), "size": int(size)})
    return out


def device_ordinal(device):
    """The ordinal of "cuda:N" ("cuda" is 0); 0 for host memory (kernels run on the current device)."""
    if not device or ":" not in str(device):
        return 0
    return int(str(device).rsplit(":", 1)[1])


class IpcMapping:
    """The peer's allocations mapped here: (peer base, size, our address) sorted by peer base.
    `lock` is held while a kernel touches them, so close() never unmaps under a running copy."""

    def __init__(self, peer_name, entries, device, same_process):
        self.peer_name, self.lock, self._owned = peer_name, threading.Lock(), not same_process
        rows = []
        try:
            for e in sorted(entries, key=lambda e: int(e["base"])):
                base, size = int(e["base"]), int(e["size"])
                if same_process:  # one address space: the peer's addresses are ours
                    rows.append((base, size, base))
                    continue
                addr, mapped = _core().kv_ipc_open(unb64(e["handle"]), device)
                rows.append((base, size, int(addr)))
                if mapped and mapped < size:
                    raise InvalidArgument(f"peer {peer_name!r}'s allocation at {base:#x} maps {mapped} bytes here, "
                                          f"its metadata says {size}")
        except NoDevice as err:
            self._unmap(rows)
            raise PeerLost(f"cannot map peer {peer_name!r}'s device memory: {err}", 0) from None
        except (HaulerError, ValueError, KeyError, TypeError) as err:
            self._unmap(rows)
            raise InvalidArgument(f"cannot map peer {peer_name!r}'s device memory: {err}") from None
        self.rows = rows
        self._bases = np.array([r[0] for r in rows], dtype=np.int64)
        self._ends = np.array([r[0] + r[1] for r in rows], dtype=np.int64)
        self._local = np.array([r[2] for r in rows], dtype=np.int64)

    def _unmap(self, rows):
        errors = []
        if self._owned:
            for _, _, addr in rows:
                try:
                    _core().kv_ipc_close(addr)
                except HaulerError as e:
                    errors.append(str(e))
        return errors

    @property
    def closed(self):
        return self.rows is None

    def regions(self):
        return [(addr, size) for _, size, addr in self.rows]

    def translate(self, addrs, lens):
        """Our addresses for the peer's [addrs, addrs + lens); PeerMemoryError for any outside its
        exported allocations."""
        i = np.searchsorted(self._bases, addrs, side="right") - 1
        bad = (i < 0) | (addrs + lens > self._ends[np.maximum(i, 0)])
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise PeerMemoryError(f"a segment at the peer's {int(addrs[k]):#x} (+{int(lens[k])}) lies outside the "
                                  f"device memory peer {self.peer_name!r} exported: nothing was moved", 0)
        return self._local[i] + (addrs - self._bases[i])

    def close(self):
        with self.lock:
            rows, self.rows = self.rows, None
        if rows:
            errors = self._unmap(rows)
            if errors:
                raise InvalidArgument(f"unmapping peer {self.peer_name!r}'s device memory: " + "; ".join(errors))


def _gone(peer):
    """Why the peer's exported memory must not be used now, or None: its process exited (pidfd
    readable) or its agent closed (the lease table it unlinks at close is gone)."""
    if peer.pidfd >= 0:
        p = select.poll()
        p.register(peer.pidfd, select.POLLIN)
        if p.poll(0):
            return f"peer {peer.name!r} (pid {peer.pid}) exited: its device memory is gone"
    elif not os.path.exists(f"/proc/{peer.pid}"):
        return f"peer {peer.name!r} (pid {peer.pid}) exited: its device memory is gone"
    if peer.lease_path and not os.path.exists(peer.lease_path):
        return f"peer {peer.name!r} closed its agent: its device memory is no longer exposed"
    return None


class IpcTransport:
    name = "cuda_ipc"

    def move(self, peer, segs, write, progress, deadline=None):
        """One kernel launch over segs (read: column 0 is the peer's, write: column 1), waited for."""
        segs = segments_array(segs).copy()
        m = peer.ipc
        col = 1 if write else 0
        total = int(segs[:, 2].sum())
        with m.lock:
            if m.closed:
                raise PeerLost(f"the mapping of peer {peer.name!r}'s device memory was closed (peer dropped or "
                               "agent closed)", 0)
            why = _gone(peer)
            if why:
                raise PeerLost(why, 0)
            if progress.cancelled:
                raise TransferCancelled(f"transfer with peer {peer.name!r} cancelled before it started", 0)
            if len(segs):
                segs[:, col] = m.translate(segs[:, col], segs[:, 2])
            regions = np.array(list(peer.local.regions) + m.regions(), dtype=np.int64).reshape(-1, 2)
            _core().kv_copy_device(segs, np.zeros((0, 12), np.int64), regions, 0, True, 0)
        progress.set_done(total)
        return total
