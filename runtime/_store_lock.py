"""Who may use a store directory: its owner's permissions and one advisory lock per store.

A store directory (TensorStore, hauler.offload's) is private: made 0700 with files 0600 whatever
the umask (``file_mode`` opens them up), and refused when it is not owned by this user or is
writable by others (someone else could read or replace the entries). The lock is an ``flock`` on
the directory's ``.hauler-store`` file: exclusive for a store that writes, shared for read-only
stores, so a second writer (another process, or another store object in this one) is refused with
the holders' pids. The file also holds the store's id, which the names of its temporary and
spare files carry: cleanup at open removes only those.
"""
from __future__ import annotations

import fcntl
import json
import os
import stat
import uuid
from typing import List, Optional

from . import _buffers
from .errors import HaulerError, HaulerIOError, InvalidArgument

MARK = ".hauler-store"


class StoreLocked(HaulerIOError):
    """A store directory another live store holds (its pid is in the message)."""


class UnsafeDirectory(HaulerError, PermissionError):
    """A store directory or file others could read, replace or redirect (not owned by this user,
    writable by others, a symlink where a file is made)."""


def check_file_mode(file_mode: int) -> int:
    """file_mode checked: permission bits that leave the owner read and write."""
    m = _buffers.as_int("file_mode", file_mode, 0)
    if m & ~0o777 or m & 0o600 != 0o600:
        raise InvalidArgument(f"file_mode {m:#o} must be permission bits (at most 0o777) with owner "
                              f"read and write (0o600)")
    return m


def dir_mode(file_mode: int) -> int:
    """The directory mode matching file_mode: each class that may read files may also list them."""
    return file_mode | 0o700 | ((file_mode & 0o044) >> 2)


def private_dir(path: str, file_mode: int = 0o600, what: str = "store") -> None:
    """Makes path (and missing parents) as a directory of dir_mode(file_mode), exactly, or checks
    the one there: owned by this user and not writable by others (group only if file_mode says)."""
    mode = dir_mode(file_mode)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidArgument(f"{what} directory {path!r}: it or a parent is a file, not a directory") from None
    created = True
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        created = False
    except NotADirectoryError:
        raise InvalidArgument(f"{what} directory {path!r}: it or a parent is a file, not a directory") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise InvalidArgument(f"{what} directory {path!r}: it or a parent is a file, not a directory") from None
    try:
        if created:
            os.fchmod(fd, mode)   # the umask narrowed it, or widened nothing: exact now
        st = os.fstat(fd)
    finally:
        os.close(fd)
    check_owned(path, st, file_mode, what)


def check_owned(path: str, st: os.stat_result, file_mode: int, what: str) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise UnsafeDirectory(f"{what} {path!r} is owned by uid {st.st_uid}, not by this user (uid {me}): "
                              f"its owner could read or replace the entries; use a directory of your own")
    group_ok = 0o020 if file_mode & 0o020 else 0
    if st.st_mode & (0o022 & ~group_ok):
        raise UnsafeDirectory(f"{what} {path!r} has mode {stat.S_IMODE(st.st_mode):#o}: writable by others, "
                              f"who could replace the entries; chmod go-w it or use another directory")


def holders(path: str) -> List[int]:
    """The pids holding an flock on path (from /proc/locks; empty where it cannot be read)."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids = []
    for line in lines:
        parts = line.split()
        if "->" in parts:
            continue   # a waiter, not a holder
        for i, p in enumerate(parts):
            if p.count(":") == 2 and i > 0:
                maj, mnr, ino = p.split(":")
                try:
                    if (int(maj, 16), int(mnr, 16), int(ino)) == want:
                        pids.append(int(parts[i - 1]))
                except ValueError:
                    pass
                break
    return sorted(set(pids))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_nofollow(path: str, flags: int, file_mode: int, what: str) -> int:
    """os.open with O_NOFOLLOW: a planted symlink is refused, not followed."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode)
    except OSError as e:
        if os.path.islink(path):
            raise UnsafeDirectory(f"{what} {path!r} is a symbolic link; refusing to follow it") from None
        raise HaulerIOError(e.errno, f"{what} {path!r}: {e.strerror}") from None


def lock_or_refuse(fd: int, path: str, shared: bool, what: str, how: str) -> None:
    """flock(fd) shared or exclusive, at once, or StoreLocked naming the holders' pids."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        pass
    else:
        return
    pids = holders(path)
    if not pids:   # /proc/locks unreadable: the pid the last writer recorded, if any
        try:
            with open(path, "rb") as f:
                pid = json.loads(f.read(4096).decode() or "{}").get("pid")
            pids = [pid] if isinstance(pid, int) else []
        except (OSError, ValueError, UnicodeDecodeError, AttributeError):
            pids = []
    who = ", ".join(f"pid {p}" + (" (this process)" if p == os.getpid() else "") for p in pids) or "a live process"
    raise StoreLocked(f"{what} is in use by {who}; one process uses it at a time ({how})")


class StoreLock:
    """The lock of one store directory, held until release() (or the process ends)."""

    def __init__(self, directory: str, shared: bool = False, file_mode: int = 0o600, what: str = "store"):
        self.path = os.path.join(directory, MARK)
        self.shared = bool(shared)
        fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, file_mode, f"{what} lock file")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeDirectory(f"{what} lock file {self.path!r} is not a regular file")
            check_owned(self.path, st, file_mode, f"{what} lock file")
            lock_or_refuse(fd, self.path, shared,
                           f"{what} directory {directory!r}", "read-only opens share it; close that store, "
                           "or use another directory")
            info = self._read(fd)
            self.id: Optional[str] = info.get("id")
            if not shared:
                if not isinstance(self.id, str) or not self.id.isalnum():
                    self.id = uuid.uuid4().hex[:12]
                body = json.dumps({"id": self.id, "pid": os.getpid()}).encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, body, 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd: Optional[int] = fd

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (ValueError, UnicodeDecodeError):
            return {}
        return info if isinstance(info, dict) else {}

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)   # the flock goes with the last descriptor of it (a forked child may hold one)

    @property
    def held(self) -> bool:
        return self._fd is not None


def own_subdirectory(directory: str, what: str = "offload") -> str:
    """The path of a new subdirectory ``offload-<pid>-<random>`` of directory for this process
    (hauler.offload's activations, OptimizerOffload's state), after removing those of dead
    processes of this user whose lock nobody holds (a crash's leftovers). Not created here."""
    import re
    import shutil
    directory = os.fspath(directory)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        names = os.listdir(directory)
    except (FileExistsError, NotADirectoryError):
        raise InvalidArgument(f"{what} directory {directory!r}: it or a parent is a file, not a directory") from None
    me = os.geteuid()
    for name in names:
        m = re.fullmatch(r"offload-(\d+)-[0-9a-f]{12}", name)
        p = os.path.join(directory, name)
        if m is None or pid_alive(int(m.group(1))):
            continue
        try:
            if os.lstat(p).st_uid != me:
                continue
            lock = StoreLock(p, what=what)   # refused while a live process (a fork) holds it
        except (OSError, StoreLocked):
            continue
        shutil.rmtree(p, ignore_errors=True)
        lock.release()
    return os.path.join(directory, f"offload-{os.getpid()}-{uuid.uuid4().hex[:12]}")
