"""Activation offload to NVMe (after SSDTrain): ``hauler.offload``.

    from hauler.offload import offload
    with offload("/nvme/acts") as off:       # or offload(store=TensorStore(...))
        loss = model(x).sum()
    loss.backward()

Inside the context, every tensor autograd saves for backward goes through
``torch.autograd.graph.saved_tensors_hooks``: parameters (and views of them) and tensors under
``min_bytes`` stay in memory; the others are written to a :class:`hauler.io.TensorStore`
asynchronously, and the in-memory copy is dropped once its write is durable. A tensor saved by
several operations is stored once. During backward the saved tensors are read back in the
reverse order of saving, ``prefetch`` ahead of the one autograd asks for; the last ``keep_last``
tensors saved keep their memory even once written (backward needs them first: reading them back
would stall its start). The store made for a
directory skips fsync and checksums (scratch data: ``verify=True`` turns CRC-32C checks on; pass
your own ``store`` for other choices) and keeps up to ``recycle`` bytes of freed read-back
tensors for later reads of the same size (no page faults and kernel zeroing of fresh memory on
every read), and keeps up to ``keep_files`` bytes of deleted entries' files for the next step's
writes to overwrite (no block allocation). ``inline=True`` makes that store
submit its I/O from the thread running forward/backward (TensorStore's inline path: no worker
wake-ups, but the submission work lands on that thread; see the README). A tensor whose write
has not finished yet is handed back from memory instead of being read. Entries are deleted when
autograd frees the saved tensors (after backward).

Given a directory, offload writes in a subdirectory of its own, ``offload-<pid>-<random>``
(``off.directory``; 0700, files 0600, locked like any TensorStore), removed by ``close()``: ranks
or processes given the same directory never see each other's activations. Subdirectories whose
process is gone are removed by the next offload made in the same directory.

``off.stats`` counts what happened: saved, skipped (parameters / small), shared, bytes written,
read back, hits in memory, and the time unpack waited for reads.
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from typing import Any, Dict, List, Optional

from .errors import Closed

__all__ = ["offload", "Offload"]

_ids = itertools.count()


class _Handle:
    __slots__ = ("key", "tensor", "put", "get", "index", "owner", "ident", "source", "version", "written",
                 "__weakref__")

    def __init__(self, key: str, tensor: Any, index: int, owner: "Offload"):
        self.key = key
        self.tensor = tensor      # in memory until the write is durable
        self.put = None
        self.get = None           # a prefetch in flight
        self.index = index
        self.owner = owner
        self.written = False      # durable on disk (the memory may still be kept: keep_last)


class Offload:
    """The context manager returned by :func:`offload`."""

    def __init__(self, directory: Optional[str] = None, store: Any = None, min_bytes: int = 1 << 20,
                 prefetch: int = 2, threads: int = 4, verify: bool = False, recycle: int = 64 << 20,
                 keep_files: int = 4 << 30, keep_last: int = 2, inline: bool = False):
        import torch  # noqa: F401 - fail early without torch
        from . import _buffers
        from .errors import InvalidArgument
        from .tensorstore import TensorStore
        # every number checked before anything is made (a negative one used to be clamped silently)
        min_bytes = _buffers.as_int("min_bytes", min_bytes, 0)
        prefetch = _buffers.as_int("prefetch", prefetch, 0)
        threads = _buffers.as_int("threads", threads, 1)
        recycle = _buffers.as_int("recycle", recycle, 0)
        keep_files = _buffers.as_int("keep_files", keep_files, 0)
        keep_last = _buffers.as_int("keep_last", keep_last, 0)
        if store is not None and not isinstance(store, TensorStore):
            raise InvalidArgument(f"store must be a hauler TensorStore, got {type(store).__name__}")
        if store is not None and directory is not None:
            raise InvalidArgument("give a directory or a store, not both")
        # settings of the store offload makes: with the caller's store they would be ignored
        mine = {"threads": (threads, 4), "verify": (verify, False), "recycle": (recycle, 64 << 20),
                "keep_files": (keep_files, 4 << 30), "inline": (inline, False)}
        ignored = [k for k, (v, dflt) in mine.items() if v != dflt]
        if store is not None and ignored:
            raise InvalidArgument(f"{', '.join(ignored)} configure the store offload makes for a directory; "
                                  f"with store=, give them to that TensorStore")
        self._tmp = None
        self._own_dir: Optional[str] = None
        if store is None:
            if directory is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="hauler-offload-")
                directory = self._tmp.name
            else:
                directory = _own_subdirectory(os.fspath(directory))
                self._own_dir = directory
            try:
                store = TensorStore(directory, threads=threads, sync=False, checksum=verify, recycle=recycle,
                                    keep_files=keep_files, inline=inline)
            except BaseException:
                if self._own_dir is not None:
                    shutil.rmtree(self._own_dir, ignore_errors=True)
                raise
        self.store = store
        self.directory = store.directory
        self.min_bytes = min_bytes
        self.prefetch = prefetch
        self.keep_last = keep_last
        self._lock = threading.Lock()
        self._handles: List["weakref.ref"] = []  # pack order, from index self._base on
        self._base = 0
        self._shared: Dict[Any, "weakref.ref"] = {}
        self._hooks = None
        self._run = next(_ids)
        self.stats = {"saved": 0, "skipped_param": 0, "skipped_small": 0, "shared": 0,
                      "bytes_written": 0, "bytes_read": 0, "in_memory_hits": 0, "wait_s": 0.0}

    # -- hooks
    def _pack(self, t: Any) -> Any:
        import torch
        if isinstance(t, torch.nn.Parameter) or (t._base is not None and isinstance(t._base, torch.nn.Parameter)):
            self.stats["skipped_param"] += 1
            return t
        if t.device.type != "cpu" or t.layout != torch.strided or t.is_sparse:
            self.stats["skipped_small"] += 1
            return t
        nbytes = t.numel() * t.element_size()
        if nbytes < self.min_bytes:
            self.stats["skipped_small"] += 1
            return t
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
                 t.dtype, t._version)
        with self._lock:
            ref = self._shared.get(ident)
            h = ref() if ref is not None else None
            if h is not None:
                self.stats["shared"] += 1
                return h
            index = self._base + len(self._handles)
            key = f"act-{self._run}-{index}"
            h = _Handle(key, t.detach(), index, self)
            h.ident = ident
            h.source = weakref.ref(t)   # to notice in-place changes after saving, as autograd does
            h.version = t._version
            self._handles.append(weakref.ref(h))
            self._shared[ident] = weakref.ref(h)
            weakref.finalize(h, _discard, self.store, key)
            # the handle keep_last places back is no longer among the last: written, it lets go
            old = self._handle(index - self.keep_last)
            if old is not None and old.written:
                self._release(old)
        self.stats["saved"] += 1
        self.stats["bytes_written"] += nbytes
        h.put = self.store.put(key, h.tensor)
        with self._lock:
            href = self._shared[ident]

        def written(fut, href=href):
            hh = href()
            if hh is not None and fut.exception() is None:
                with self._lock:
                    hh.written = True
                    if hh.index < self._base + len(self._handles) - self.keep_last:
                        self._release(hh)
        h.put.add_done_callback(written)
        return h

    def _handle(self, index: int) -> Optional[_Handle]:
        """The live handle saved at index, or None (under self._lock)."""
        i = index - self._base
        return self._handles[i]() if 0 <= i < len(self._handles) else None

    def _release(self, h: _Handle) -> None:
        """Drops a written handle's memory (under self._lock). Its address may be reused from now
        on, so the handle no longer stands for "the tensor at this address"."""
        ref = self._shared.get(h.ident)
        if ref is not None and ref() is h:
            del self._shared[h.ident]
        h.tensor = None

    def _unpack(self, h: Any) -> Any:
        if not isinstance(h, _Handle):
            return h
        src = h.source()
        if src is not None and src._version != h.version:
            raise RuntimeError(
                f"hauler.offload: a tensor saved for backward (shape {tuple(src.shape)}) was modified by an "
                f"in-place operation after it was saved (version {h.version} -> {src._version}); "
                f"the stored copy may hold either value")
        t = h.tensor
        if t is not None:
            self.stats["in_memory_hits"] += 1
            self._prefetch_before(h.index)
            return t
        fut = h.get
        h.get = None
        t0 = time.perf_counter()
        if fut is None:
            fut = self.store.get(h.key)
        self._prefetch_before(h.index)
        t = fut.result()
        self.stats["wait_s"] += time.perf_counter() - t0
        self.stats["bytes_read"] += t.numel() * t.element_size()
        return t

    def _prefetch_before(self, index: int) -> None:
        """Starts reads of the `prefetch` handles saved just before `index` (backward goes in
        reverse) that are not in memory or in flight yet. The window is those handles, not the next
        `prefetch` unread ones: walking past reads in flight would start two reads per tensor used
        and keep every read-ahead tensor alive until backward reaches it."""
        if not self.prefetch:
            return
        with self._lock:
            todo = []
            seen = 0
            i = index - 1
            while i >= self._base and seen < self.prefetch:
                h = self._handle(i)
                i -= 1
                if h is None:
                    continue   # freed (its node already ran): not part of the window
                seen += 1
                if h.tensor is None and h.get is None:
                    todo.append(h)
        for h in todo:
            h.get = self.store.get(h.key)

    # -- context
    def __enter__(self) -> "Offload":
        import torch
        with self._lock:   # handles of earlier steps that autograd freed: forgotten (indices go on)
            dead = next((i for i, r in enumerate(self._handles) if r() is not None), len(self._handles))
            del self._handles[:dead]
            self._base += dead
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None

    def wait_writes(self) -> None:
        """Waits until every pending write is durable (or failed; failures keep the tensor in memory)."""
        with self._lock:
            hs = [r() for r in self._handles]
        for h in hs:
            if h is not None and h.put is not None:
                try:
                    h.put.result()
                except Exception:  # noqa: BLE001 - the tensor stays in memory and is used from there
                    pass

    def close(self) -> None:
        self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None


_SUBDIR = re.compile(r"offload-(\d+)-[0-9a-f]{12}")


def _own_subdirectory(directory: str) -> str:
    """A new subdirectory of directory for this process's offload (after removing those of dead
    processes of this user whose store lock nobody holds)."""
    import uuid
    from ._store_lock import StoreLock, StoreLocked, pid_alive
    from .errors import InvalidArgument
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        names = os.listdir(directory)
    except (FileExistsError, NotADirectoryError):
        raise InvalidArgument(f"offload directory {directory!r}: it or a parent is a file, not a directory") from None
    me = os.geteuid()
    for name in names:
        m = _SUBDIR.fullmatch(name)
        p = os.path.join(directory, name)
        if m is None or pid_alive(int(m.group(1))):
            continue
        try:
            if os.lstat(p).st_uid != me:
                continue
            lock = StoreLock(p, what="offload")   # refused while a live process (a fork) holds it
        except (OSError, StoreLocked):
            continue
        shutil.rmtree(p, ignore_errors=True)
        lock.release()
    return os.path.join(directory, f"offload-{os.getpid()}-{uuid.uuid4().hex[:12]}")


def _discard(store: Any, key: str) -> None:
    # runs when autograd frees a saved tensor, in the middle of backward: the unlink goes to the
    # store's workers (a stopped or closed store, e.g. at interpreter exit, deletes here)
    try:
        store.discard_later(key)
    except (AttributeError, RuntimeError, Closed):
        try:
            store._discard(key)
        except Exception:  # noqa: BLE001 - at interpreter exit
            pass


def offload(directory: Optional[str] = None, store: Any = None, min_bytes: int = 1 << 20,
            prefetch: int = 2, threads: int = 4, verify: bool = False, recycle: int = 64 << 20,
            keep_files: int = 4 << 30, keep_last: int = 2, inline: bool = False) -> Offload:
    """A context offloading saved activations to ``directory`` (default: a temporary directory)
    or to ``store`` (a TensorStore); see the module doc."""
    return Offload(directory, store, min_bytes, prefetch, threads, verify, recycle, keep_files, keep_last, inline)
from .offload_optim import OptimizerOffload  # noqa: E402,F401 - Adam/AdamW state on NVMe
