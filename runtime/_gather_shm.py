"""hauler.gather's shared tables: ``.npy`` files in /dev/shm, private to their user, and the
stale ones (whose process is gone) found and removed.

A table file is named ``hauler-<pid>-<12 hex>.npy`` after the process that made it; it is made with
O_CREAT|O_EXCL|O_NOFOLLOW (a planted name or symlink is refused) and mode 0600 whatever the umask
(``shared_mode`` opens it up). Its maker holds a shared ``flock`` of it for the table's life (taken
before the file gets its name; forked workers inherit it). A process killed before removing its
tables leaves them holding memory: a table nobody holds the lock of is stale, whatever its pid
looks like from here (pids of other pid namespaces sharing /dev/shm, reused pids). The next
process that shares a table removes this user's stale ones; ``hauler shm`` lists and cleans them.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
import uuid
from typing import Any, Dict, List

import numpy as np

import fcntl

from ._store_lock import open_nofollow
from .errors import InvalidArgument

SHM_DIR = "/dev/shm"
_NAME = re.compile(r"hauler-(\d+)-[0-9a-f]{12}\.npy")


def shm_dir() -> str:
    return SHM_DIR if os.path.isdir(SHM_DIR) else tempfile.gettempdir()


def check_mode(mode: Any) -> int:
    if isinstance(mode, bool) or not isinstance(mode, int) or mode & ~0o666 or mode & 0o600 != 0o600:
        raise InvalidArgument(f"shared_mode must be permission bits within 0o666 with owner read and write "
                              f"(0o600), got {mode!r}")
    return mode


def tables(directory: str = "") -> List[Dict[str, Any]]:
    """This user's shared-table files: path, pid, bytes, whether the pid is alive."""
    d = directory or shm_dir()
    me = os.geteuid()
    out = []
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return out
    for name in names:
        m = _NAME.fullmatch(name)
        if m is None:
            continue
        p = os.path.join(d, name)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if st.st_uid != me or not stat.S_ISREG(st.st_mode):
            continue
        out.append({"path": p, "pid": int(m.group(1)), "bytes": st.st_size, "alive": _held(p)})
    return out


def _held(path: str) -> bool:
    """Whether a process holds the table's lock (its maker, or a worker forked from it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True   # gone, or not ours to judge: left alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)   # (releases the probe's lock)
    return False


def remove_stale(directory: str = "") -> List[Dict[str, Any]]:
    """Removes this user's shared-table files whose process is gone; returns them."""
    gone = []
    for t in tables(directory):
        if t["alive"]:
            continue
        try:
            os.unlink(t["path"])
        except FileNotFoundError:
            continue
        gone.append(t)
    return gone


def create(shape: Any, dtype: np.dtype, mode: int) -> Any:
    """A new shared-table file of shape and dtype: (np.memmap read-write, path, the descriptor
    holding its lock: close it when the table goes)."""
    d = shm_dir()
    remove_stale(d)
    name = f"hauler-{os.getpid()}-{uuid.uuid4().hex[:12]}.npy"
    new = os.path.join(d, "." + name + ".new")   # locked before it gets a name a sweep looks at
    path = os.path.join(d, name)
    fd = open_nofollow(new, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode, "shared table")
    try:
        os.fchmod(fd, mode)   # exact, whatever the umask
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.rename(new, path)
        # the name is this process's (O_EXCL, and /dev/shm is sticky: no other user can swap it)
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape), path, fd
    except BaseException:
        os.close(fd)
        for p in (new, path):
            try:
                os.unlink(p)
            except OSError:
                pass
        raise
