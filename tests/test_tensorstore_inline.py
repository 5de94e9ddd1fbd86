"""TensorStore's inline path (inline=True, sync and checksum off: puts and gets submitted by the calling thread
on a polled io_uring, csrc/io/poller.cpp) and the poller itself: bytes on disk and values read
back against numpy, padded version-3 files, ordering with the worker path, futures nobody waits
on, damaged files and real write failures (RLIMIT_FSIZE)."""
from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hauler import _core, io
from hauler.errors import BufferTooSmall, HaulerIOError, InvalidArgument, OutOfRange
from hauler.tensorstore import PADDED, CorruptEntry, TensorStore

pytestmark = pytest.mark.skipif(io.backend() != "io_uring", reason="the inline path needs io_uring")

SIZES = [0, 1, 4095, 4096, 4097, 8191, 100_003, (1 << 20) + 123, 3 << 20]


def _header(path):
    raw = open(path, "rb").read(4096)
    n = int.from_bytes(raw[12:16], "little")
    return int.from_bytes(raw[8:12], "little"), json.loads(raw[16:16 + n])


def _unaligned(n, seed, shift):
    """n random bytes whose address is `shift` past a 4 KiB boundary (any phase)."""
    raw = np.random.default_rng(seed).integers(0, 256, n + 8192, dtype=np.uint8)
    start = (shift - raw.ctypes.data) % 4096
    return raw[start:start + n]


@pytest.fixture
def store(tmp_path):
    s = TensorStore(tmp_path / "ts", sync=False, checksum=False, recycle=16 << 20, keep_files=64 << 20,
                    inline=True)
    assert s.io_path.startswith("inline"), s.io_path
    yield s
    s.close()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("shift", [0, 1, 2048, 4095])
def test_roundtrip_writes_padded_files_with_the_exact_bytes(store, n, shift):
    a = _unaligned(n, n + shift, shift)
    store.put("k", a).result()
    path = store._path("k")
    ver, meta = _header(path)
    assert ver == PADDED and meta["nbytes"] == n
    off = meta["offset"]
    assert n == 0 or off % 4096 == a.ctypes.data % 4096   # the middle goes from its memory
    disk = open(path, "rb").read()
    assert len(disk) % 4096 == 0 and len(disk) == -(-(off + n) // 4096) * 4096
    assert disk[off:off + n] == a.tobytes()
    assert disk[4096:off] == b"\0" * (off - 4096) and disk[off + n:] == b"\0" * (len(disk) - off - n)
    got = store.get("k").result()
    assert got.dtype == a.dtype and np.array_equal(got, a)


def test_torch_values_and_views(store):
    torch = pytest.importorskip("torch")
    t = torch.randn(513, 257, dtype=torch.float64)
    view = t[1:, 3:]   # not contiguous: stored contiguous
    store.put("t", t).result()
    store.put("v", view).result()
    assert torch.equal(store.get("t").result(), t)
    assert torch.equal(store.get("v").result(), view.contiguous())


def test_recycled_memory_is_fully_overwritten(store):
    torch = pytest.importorskip("torch")
    a = torch.arange(1 << 18, dtype=torch.int32)
    b = torch.full((1 << 18,), -1, dtype=torch.int32)
    store.put("a", a).result()
    store.put("b", b).result()
    for _ in range(3):   # each get takes the memory the previous value gave back
        got = store.get("b").result()
        assert torch.equal(got, b)
        del got
        got = store.get("a").result()
        assert torch.equal(got, a)
        del got


def test_many_in_flight_and_reopen(tmp_path, store):
    vals = {f"k{i}": _unaligned(i * 50_001 + 7, i, i * 97) for i in range(40)}
    futs = [store.put(k, v) for k, v in vals.items()]
    assert all(f.result() is None for f in futs)
    gets = {k: store.get(k) for k in vals}
    for k, f in gets.items():
        assert np.array_equal(f.result(), vals[k])
    store.close()
    again = TensorStore(tmp_path / "ts", sync=False, checksum=False, inline=True)   # found again: read inline
    assert sorted(again.keys()) == sorted(vals)
    for k, v in vals.items():
        assert np.array_equal(again.get(k).result(), v)
    again.close()
    checked = TensorStore(tmp_path / "ts", read_only=True)   # the worker path reads padded entries too
    out = np.zeros_like(vals["k3"])
    assert checked.get("k3", out=out).result() is out and np.array_equal(out, vals["k3"])
    checked.close()


def test_put_then_get_and_discard_then_put_keep_order(store):
    a, b = np.arange(300_000, dtype=np.int64), np.arange(300_000, dtype=np.int64)[::-1].copy()
    store.put("x", a)
    f = store.get("x")            # the put is in flight: the get waits for it
    assert np.array_equal(f.result(), a)
    store.put("x", b)
    store.put("x", a)             # replaced while the first is in flight
    assert np.array_equal(store.get("x").result(), a)
    store.discard_later("x")
    store.put("x", b).result()
    assert np.array_equal(store.get("x").result(), b)
    store.delete("x")
    with pytest.raises(KeyError):
        store.get("x").result()


def test_futures_finish_without_being_waited_on(store):
    a = _unaligned(2 << 20, 1, 5)
    seen = []
    f = store.put("w", a)
    f.add_done_callback(lambda fut: seen.append(fut.exception()))
    assert not f.cancel()      # in the kernel already
    done, _ = concurrent.futures.wait([f], timeout=30)   # the store's polling thread finishes it
    assert f in done and seen == [None]
    g = store.get("w")
    done, _ = concurrent.futures.wait([g], timeout=30)
    assert g in done and np.array_equal(g.result(), a)


@pytest.mark.parametrize("damage", ["truncate", "append", "other_key", "zero_header"])
def test_damaged_padded_entry(store, damage):
    a = _unaligned(100_000, 3, 100)
    store.put("d", a).result()
    store.put("e", a[:10]).result()
    path = store._path("d")
    if damage == "truncate":
        os.truncate(path, os.path.getsize(path) - 4096)
    elif damage == "append":
        with open(path, "ab") as f:
            f.write(b"\0" * 4096)
    elif damage == "other_key":
        os.replace(store._path("e"), path)
    else:
        with open(path, "r+b") as f:
            f.write(b"\0" * 16)
    with pytest.raises(CorruptEntry):
        store.get("d").result()
    if damage != "other_key":
        assert np.array_equal(store.get("e").result(), a[:10])


def test_failed_put_keeps_the_previous_value(tmp_path):
    code = textwrap.dedent(f"""
        import resource, numpy as np
        from hauler.tensorstore import TensorStore
        from hauler.errors import HaulerIOError
        s = TensorStore({str(tmp_path / "ts")!r}, sync=False, checksum=False, inline=True)
        old = np.arange(1000, dtype=np.int32)
        s.put("k", old).result()
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            s.put("k", np.ones(4 << 20, np.uint8)).result()
        except HaulerIOError as e:
            assert "EFBIG" in str(e) and "'k'" in str(e), e
            print("EFBIG")
        assert np.array_equal(s.get("k").result(), old)
        assert not [n for n in __import__("os").listdir({str(tmp_path / "ts")!r}) if ".tmp." in n]
        s.close()
        print("kept")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["EFBIG", "kept"]


def test_refused_put_leaves_the_key_usable(store):
    """A put refused before its request starts (a key too long for the header) gives the key's
    lock back: the same put is refused again rather than queued, and discard/get do not hang."""
    key = "k" * 5000
    for _ in range(2):
        with pytest.raises(InvalidArgument, match="entry metadata too long"):
            store.put(key, np.zeros(3)).result(timeout=10)
    store.discard(key)
    with pytest.raises(KeyError):
        store.get(key).result(timeout=10)
    store.put("short", np.arange(3.0)).result(timeout=10)
    assert np.array_equal(store.get("short").result(timeout=10), np.arange(3.0))


def test_inline_needs_sync_and_checksum_off(tmp_path):
    with pytest.raises(InvalidArgument, match="inline=True needs"):
        TensorStore(tmp_path, inline=True)
    s = TensorStore(tmp_path, sync=False, checksum=False)   # off by default
    assert s.io_path == "worker threads: inline=False"
    s.put("k", np.arange(10)).result()
    assert _header(s._path("k"))[0] == 2   # exact-size files on the worker path
    s.close()


# -- the poller itself ------------------------------------------------------------------------

def test_poller_reads_writes_and_reports_errors(tmp_path):
    p = _core.IOPoller(4)
    path = tmp_path / "f"
    a = np.random.default_rng(0).integers(0, 256, 5 << 20, dtype=np.uint8)   # > depth * task size
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        rid = p.submit([(True, fd, a, 0, a.nbytes, 0)], "f")
        assert p.take(rid) == a.nbytes
        assert open(path, "rb").read() == a.tobytes()
        out = np.zeros(1 << 20, np.uint8)
        rid = p.submit([(False, fd, out, 0, 1000, 4096), (False, fd, out, 1000, 5000, 0)], "f")
        assert p.wait(rid, 30) and p.done(rid) and p.take(rid) == 6000
        assert out[:1000].tobytes() == a[4096:5096].tobytes() and out[1000:6000].tobytes() == a[:5000].tobytes()
        with pytest.raises(InvalidArgument):
            p.take(rid)                                       # taken already
        rid = p.submit([(False, fd, out, 0, 8192, a.nbytes - 100)], "f")
        with pytest.raises(OutOfRange, match="end of the file"):
            p.take(rid)
        with pytest.raises(BufferTooSmall):
            p.submit([(False, fd, out, 10, out.nbytes, 0)], "f")
        with pytest.raises(ValueError):
            p.submit([(False, fd, a[::2], 0, 10, 0)], "f")  # not contiguous
    finally:
        os.close(fd)
    rid = p.submit([(False, fd, out, 0, 4096, 0)], "closed f")   # fd closed: EBADF
    with pytest.raises(HaulerIOError, match="EBADF"):
        p.take(rid)
    assert p.poll() == 0


def test_poller_in_a_forked_child_refuses(tmp_path):
    code = textwrap.dedent("""
        import os, numpy as np
        from hauler import _core
        from hauler.errors import HaulerIOError
        p = _core.IOPoller(4)
        pid = os.fork()
        if pid == 0:
            try:
                p.submit([(False, 0, np.zeros(8, np.uint8), 0, 8, 0)], "x")
            except HaulerIOError as e:
                os._exit(0 if "before fork" in str(e) and not p.usable() else 3)
            os._exit(4)
        _, st = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(st), p.usable())
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "True"]
