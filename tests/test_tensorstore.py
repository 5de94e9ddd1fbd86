"""hauler.io.TensorStore: round trips (numpy, torch incl. bfloat16), checksums, atomic replace,
corruption detected, capacity and eviction, persistence across instances."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hauler.errors import HaulerIOError, InvalidArgument
from hauler.io import TensorStore
from hauler.tensorstore import CapacityExceeded, CorruptEntry


@pytest.fixture
def store(tmp_path):
    s = TensorStore(tmp_path / "ts")
    yield s
    s.close()


@pytest.mark.parametrize("dtype", ["float32", "int8", "uint16", "complex64", "bool", ">f8"])
def test_numpy_roundtrip(store, dtype):
    a = (np.random.default_rng(0).standard_normal((37, 5, 3)) * 100).astype(dtype)
    store.put("a", a).result()
    b = store.get("a").result()
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)


def test_torch_roundtrip(store):
    torch = pytest.importorskip("torch")
    for i, dt in enumerate([torch.float32, torch.bfloat16, torch.float16, torch.int64]):
        t = (torch.randn(123, 77) * 50).to(dt)
        store.put(f"t{i}", t).result()
        u = store.get(f"t{i}").result()
        assert isinstance(u, torch.Tensor) and u.dtype == dt and u.shape == t.shape
        assert torch.equal(u, t)
    nc = torch.arange(100.0).reshape(10, 10).t()      # non-contiguous: stored by value
    store.put("nc", nc).result()
    assert torch.equal(store.get("nc").result(), nc)
    out = torch.empty(10, 10)
    assert store.get("nc", out=out).result() is out and torch.equal(out, nc)


def test_empty_and_scalar(store):
    store.put("e", np.zeros((0, 4), np.float32)).result()
    assert store.get("e").result().shape == (0, 4)
    store.put("s", np.float64(3.5)).result()
    assert store.get("s").result() == 3.5


def test_missing_key_and_bad_key(store):
    with pytest.raises(KeyError):
        store.get("nope").result()
    with pytest.raises(InvalidArgument):
        store.put("", np.zeros(1))
    with pytest.raises(KeyError):
        store.delete("nope")


def test_directory_that_is_a_file_or_under_one(tmp_path):
    f = tmp_path / "plain"
    f.write_bytes(b"x")
    for d in (f, f / "sub"):
        with pytest.raises(InvalidArgument, match="it or a parent is a file, not a directory"):
            TensorStore(d)
    assert f.read_bytes() == b"x"
    with pytest.raises(InvalidArgument, match="threads must be >= 1, got 0"):
        TensorStore(tmp_path / "ok", threads=0)


def test_many_concurrent_puts_and_gets(store):
    arrays = {f"k{i}": np.random.default_rng(i).integers(0, 1 << 30, 10_000 + 17 * i) for i in range(40)}
    for f in [store.put(k, v) for k, v in arrays.items()]:
        f.result()
    gets = {k: store.get(k) for k in arrays}
    for k, f in gets.items():
        assert np.array_equal(f.result(), arrays[k])
    assert sorted(store.keys()) == sorted(arrays)
    assert store.used_bytes == sum(4096 + v.nbytes for v in arrays.values())


def test_replace_is_atomic_and_reopen_finds_entries(tmp_path):
    d = tmp_path / "ts"
    with TensorStore(d) as s:
        s.put("x", np.arange(10)).result()
        s.put("x", np.arange(20)).result()
    with TensorStore(d) as s:
        assert s.keys() == ["x"]
        assert np.array_equal(s.get("x").result(), np.arange(20))


@pytest.mark.parametrize("damage", ["flip_data", "truncate", "append", "header"])
def test_corrupt_entry_detected(store, damage):
    a = np.random.default_rng(5).standard_normal(50_000)
    store.put("c", a).result()
    path = store._path("c")
    with open(path, "r+b") as f:
        if damage == "flip_data":
            f.seek(4096 + 12345)
            b = f.read(1)
            f.seek(4096 + 12345)
            f.write(bytes([b[0] ^ 0x10]))
        elif damage == "truncate":
            f.truncate(4096 + 1000)
        elif damage == "append":
            f.seek(0, 2)
            f.write(b"junk")
        else:
            f.write(b"NOTMAGIC")
    with pytest.raises(CorruptEntry) as ei:
        store.get("c").result()
    assert isinstance(ei.value, HaulerIOError) and "'c'" in str(ei.value) or path in str(ei.value)


def test_interrupted_put_leaves_previous_value(tmp_path):
    """A process killed in the middle of a put (SIGKILL after the temp file was written, before
    the rename) leaves the previous value readable and no temporary file once reopened."""
    d = tmp_path / "ts"
    with TensorStore(d) as s:
        s.put("k", np.arange(1000)).result()
    code = textwrap.dedent(f"""
        import os, numpy as np, signal
        import hauler.tensorstore as ts
        real = os.replace
        def die(a, b):
            os.kill(os.getpid(), signal.SIGKILL)
        ts.os.replace = die
        s = ts.TensorStore({str(d)!r})
        s.put("k", np.ones(10_000_000)).result()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    assert [n for n in os.listdir(d) if ".tmp." in n]     # the half-done put is visible...
    with TensorStore(d) as s:
        assert np.array_equal(s.get("k").result(), np.arange(1000))
    assert not [n for n in os.listdir(d) if ".tmp." in n]  # ...and cleaned up on reopen


def test_capacity_and_eviction(tmp_path):
    one = 4096 + 8 * 10_000
    s = TensorStore(tmp_path / "ts", capacity=3 * one)
    try:
        for k in "abc":
            s.put(k, np.full(10_000, ord(k), np.int64)).result()
        s.pin("a")
        s.get("b").result()          # b used more recently than c
        s.put("d", np.zeros(10_000, np.int64)).result()
        assert sorted(s.keys()) == ["a", "b", "d"]   # c: least recently used, unpinned
        assert s.used_bytes == 3 * one
        s.put("b", np.ones(10_000, np.int64)).result()   # replacing needs no eviction
        assert sorted(s.keys()) == ["a", "b", "d"]
        s.pin("b")
        s.pin("d")
        with pytest.raises(CapacityExceeded, match="nothing was stored"):
            s.put("e", np.zeros(10_000, np.int64)).result()
        assert sorted(s.keys()) == ["a", "b", "d"]
        with pytest.raises(CapacityExceeded):
            s.put("huge", np.zeros(10 * 10_000, np.int64)).result()
        s.unpin("d")
        s.put("e", np.zeros(10_000, np.int64)).result()
        assert sorted(s.keys()) == ["a", "b", "e"]
        assert np.array_equal(s.get("a").result(), np.full(10_000, ord("a"), np.int64))
    finally:
        s.close()


def test_without_checksum(tmp_path):
    with TensorStore(tmp_path / "nc", checksum=False, sync=False) as s:
        a = np.arange(5000, dtype=np.float32)
        s.put("a", a).result()
        assert np.array_equal(s.get("a").result(), a)
        with open(s._path("a"), "r+b") as f:   # size damage is still caught without a checksum
            f.truncate(4096 + 100)
        with pytest.raises(CorruptEntry, match="truncated"):
            s.get("a").result()


def test_large_unaligned_value_is_written_from_its_memory(tmp_path):
    """Data of PHASE_MIN bytes or more lands at the file offset congruent to its address mod 4096:
    on the io_uring backend only the two edge blocks go through (registered) bounce buffers, not
    every task; get reads it back into memory of the same phase; the bytes are the same."""
    from hauler import config, io
    from hauler.tensorstore import HEADER
    raw = np.random.default_rng(7).integers(0, 256, (8 << 20) + 4096, dtype=np.uint8)
    value = raw[16:16 + (8 << 20) + 20].view(np.float32)    # 16 bytes past a page boundary-ish
    phase = value.ctypes.data % 4096
    config.set("HAULER_IO_TASK_SIZE", 1 << 20)
    try:
        with TensorStore(tmp_path / "ts", sync=False) as s:
            before = io.counters()
            s.put("v", value).result()
            after = io.counters()
            path = s._path("v")
            assert os.path.getsize(path) == HEADER + phase + value.nbytes
            got = s.get("v").result()
            assert got.tobytes() == value.tobytes() and got.dtype == value.dtype
            with open(path, "rb") as f:
                f.seek(HEADER + phase)
                assert f.read() == value.tobytes()
            if io.backend() == "io_uring" and io.registration().startswith("bounce arena registered") \
                    and phase and os.path.exists(path):
                # 9 tasks of data: the head and tail blocks bounce, the 7 in between do not
                assert after["fixed_buffer_ops"] - before["fixed_buffer_ops"] <= 2, (before, after)
                assert after["ops"] - before["ops"] >= 9
    finally:
        config.set("HAULER_IO_TASK_SIZE", None)


def test_discard_later_then_put_keeps_the_new_value(tmp_path):
    with TensorStore(tmp_path / "ts", sync=False) as s:
        for i in range(20):
            s.put("k", np.full(50_000, i)).result()
            d = s.discard_later("k")
            s.put("k", np.full(50_000, i + 100)).result()   # submitted after: runs after
            d.result()
            assert np.array_equal(s.get("k").result(), np.full(50_000, i + 100))
        s.discard_later("k").result()
        assert s.keys() == []


# -- CRC-32C (the core's crc32c) and the checksum recorded in the header

def _crc32c_reference(data: bytes, crc: int = 0) -> int:
    """Bitwise CRC-32C (reflected 0x82F63B78), byte by byte through a table built bit by bit."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = (c >> 8) ^ table[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


def _impls():
    from hauler import _core
    return ["auto", "table"] + (["hardware"] if _core.crc32c_implementation() == "sse4.2" else [])


@pytest.mark.parametrize("impl", ["auto", "table", "hardware"])
def test_crc32c_matches_reference(impl):
    from hauler import _core
    if impl not in _impls():
        pytest.skip("this CPU lacks SSE4.2")
    assert _core.crc32c(b"123456789", impl=impl) == 0xE3069283   # the published check value
    assert _core.crc32c(b"", impl=impl) == 0
    rng = np.random.default_rng()
    buf = rng.integers(0, 256, 3 * 3 * 4096 + 64, dtype=np.uint8)
    # around the hardware path's 3 x 4096-byte blocks, random ones, at unaligned starts
    lengths = [1, 7, 8, 9, 4095, 4096, 12287, 12288, 12289, 24577, 36864] + list(rng.integers(0, 36864, 6))
    for n in lengths:
        for start in (0, 1, 3, 13):
            piece = buf[start:start + int(n)]
            want = _crc32c_reference(piece.tobytes())
            assert _core.crc32c(piece, impl=impl) == want, (n, start)
            cut = int(rng.integers(0, len(piece) + 1))
            assert _core.crc32c(piece[cut:], _core.crc32c(piece[:cut], impl=impl), impl=impl) == want


def test_crc32c_bad_arguments():
    from hauler import _core
    with pytest.raises(InvalidArgument, match="not a contiguous buffer"):
        _core.crc32c(np.zeros((4, 4), np.uint8)[:, ::2])
    with pytest.raises(InvalidArgument, match="impl must be"):
        _core.crc32c(b"x", impl="zlib")


def test_new_entries_record_crc32c(store):
    import json
    a = np.random.default_rng(1).standard_normal(100_000)
    store.put("n", a).result()
    with open(store._path("n"), "rb") as f:
        h = f.read(4096)
    assert int.from_bytes(h[8:12], "little") == 2
    meta = json.loads(h[16:16 + int.from_bytes(h[12:16], "little")])
    from hauler import _core
    assert meta["checksum"] == "crc32c" and meta["crc"] == _core.crc32c(a)


def _write_v1_entry(path, key, a, crc):
    import json
    body = json.dumps({"key": key, "kind": "numpy", "dtype": a.dtype.str, "shape": list(a.shape),
                       "nbytes": a.nbytes, "crc32": crc}, sort_keys=True).encode()
    head = b"HAULERTS" + (1).to_bytes(4, "little") + len(body).to_bytes(4, "little") + body
    with open(path, "wb") as f:
        f.write(head.ljust(4096, b"\0") + a.tobytes())


def test_version1_entries_with_crc32_still_verify(tmp_path):
    """Entries written before CRC-32C (header version 1, zlib's crc32) read back and verify."""
    import zlib
    d = tmp_path / "ts"
    a = np.arange(30_000, dtype=np.int32)
    with TensorStore(d) as s:
        _write_v1_entry(s._path("old"), "old", a, zlib.crc32(a.tobytes()))
        _write_v1_entry(s._path("bad"), "bad", a, zlib.crc32(a.tobytes()) ^ 1)
        _write_v1_entry(s._path("unchecked"), "unchecked", a, None)
    with TensorStore(d) as s:
        assert sorted(s.keys()) == ["bad", "old", "unchecked"]
        assert np.array_equal(s.get("old").result(), a)
        assert np.array_equal(s.get("unchecked").result(), a)
        with pytest.raises(CorruptEntry, match=r"checksum mismatch for key 'bad' \(crc32 "):
            s.get("bad").result()


def test_unknown_checksum_algorithm(store):
    a = np.arange(10)
    store.put("u", a).result()
    path = store._path("u")
    with open(path, "r+b") as f:
        h = bytearray(f.read(4096))
        h = h.replace(b'"crc32c"', b'"md5xxx"')
        f.seek(0)
        f.write(h)
    with pytest.raises(CorruptEntry, match="unknown checksum algorithm 'md5xxx'"):
        store.get("u").result()


# -- recycle: memory of freed torch values reused by later gets

def test_recycle_reuses_freed_torch_memory_only(tmp_path):
    torch = pytest.importorskip("torch")
    with TensorStore(tmp_path / "r", sync=False, recycle=4 << 20) as s:
        a, b = torch.randn(1000, 300), torch.randn(1000, 300)   # same size: 1.2 MB each
        s.put("a", a).result()
        s.put("b", b).result()
        x = s.get("a").result()
        view = x[10:20].numpy()        # a view outliving x: the memory stays x's
        ptr = x.data_ptr()
        del x
        y = s.get("b").result()
        assert torch.equal(y, b) and y.data_ptr() != ptr
        assert np.array_equal(view, a[10:20].numpy())
        del view
        yp = y.data_ptr()
        del y                          # now both buffers are free: the next gets take them
        z1, z2 = s.get("a").result(), s.get("b").result()
        # each value starts within its buffer's first 4 KiB (at its entry's file phase), so a
        # reused buffer puts it less than 4096 bytes from where the earlier value started
        near = [q for z in (z1, z2) for q in (ptr, yp) if abs(z.data_ptr() - q) < 4096]
        assert sorted(near) == sorted([ptr, yp]), (z1.data_ptr(), z2.data_ptr(), ptr, yp)
        assert torch.equal(z1, a) and torch.equal(z2, b)


def test_recycle_keeps_numpy_values_and_bounds_bytes(tmp_path):
    torch = pytest.importorskip("torch")
    with TensorStore(tmp_path / "r", sync=False, recycle=2 << 20) as s:
        arr = np.arange(300_000, dtype=np.float32)
        s.put("n", arr).result()
        kept = s.get("n").result()[5:]    # numpy views point to the memory's owner, past the value
        for _ in range(3):
            assert np.array_equal(s.get("n").result(), arr)
        assert np.array_equal(kept, arr[5:])
        t = torch.randn(1000, 300)
        s.put("t", t).result()
        for _ in range(3):
            s.get("t").result()
        assert s._recycler._kept <= 2 << 20
    with pytest.raises(InvalidArgument, match="recycle must be an integer"):
        TensorStore(tmp_path / "x", recycle=1.5)


# -- keep_files: files of deleted entries overwritten by later puts

def _spares(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".spare"))


def test_keep_files_reuses_deleted_entries_files(tmp_path):
    d = tmp_path / "k"
    s = TensorStore(d, sync=False, keep_files=1 << 20)
    a = np.arange(60_000, dtype=np.int64)              # 480 KB
    s.put("a", a).result()
    ino = os.stat(s._path("a")).st_ino
    s.delete("a")
    assert len(_spares(d)) == 1 and "a" not in s
    s.put("b", a[:1000] * 3).result()                  # smaller: the spare is cut to size
    assert _spares(d) == [] and os.stat(s._path("b")).st_ino == ino
    assert os.path.getsize(s._path("b")) == 4096 + 8000
    assert np.array_equal(s.get("b").result(), a[:1000] * 3)
    s.discard_later("b").result()
    big = np.arange(100_000, dtype=np.int64)           # larger than the spare: extended
    s.put("c", big).result()
    assert os.stat(s._path("c")).st_ino == ino and np.array_equal(s.get("c").result(), big)
    s.put("x", big).result()
    s.delete("x")
    s.delete("c")                                      # over keep_files: unlinked, not kept
    assert len(_spares(d)) == 1
    s.close()
    assert _spares(d) == [] and os.listdir(d) == [".hauler-store"]   # the lock file stays


def test_keep_files_count_against_capacity(tmp_path):
    # spare files are disk the store holds: with a capacity, they go before any entry is evicted,
    # and a deleted entry's file is kept only while entries + spares fit
    d = tmp_path / "kc"
    one = 4096 + 8 * 10_000
    s = TensorStore(d, sync=False, capacity=3 * one, keep_files=10 * one)

    def disk():
        return sum(os.path.getsize(d / n) for n in os.listdir(d) if n != ".hauler-store")

    try:
        for k in "abc":
            s.put(k, np.full(10_000, ord(k), np.int64)).result()
        s.delete("a")
        assert len(_spares(d)) == 1 and disk() == 3 * one
        s.put("d", np.full(20_000, 1, np.int64)).result()     # a's file, extended: b is evicted
        assert sorted(s.keys()) == ["c", "d"] and _spares(d) == [] and disk() <= 3 * one
        s2 = TensorStore(tmp_path / "kc2", sync=False, capacity=3 * one, keep_files=10 * one)
        try:
            for k in "abc":
                s2.put(k, np.full(10_000, ord(k), np.int64)).result()
            s2.delete("a")                                     # kept: 2 entries + 1 spare fit
            s2.put("e", np.full(10_000, 5, np.int64)).result()  # takes the spare, evicts nothing
            assert sorted(s2.keys()) == ["b", "c", "e"] and _spares(tmp_path / "kc2") == []
            s2.delete("b")
            s2.delete("c")                                     # entries + 2 spares = capacity: kept
            assert len(_spares(tmp_path / "kc2")) == 2
            s2.put("g", np.full(20_000, 7, np.int64)).result()  # takes one spare, the other goes
            assert sorted(s2.keys()) == ["e", "g"] and _spares(tmp_path / "kc2") == []
            assert np.array_equal(s2.get("g").result(), np.full(20_000, 7, np.int64))
        finally:
            s2.close()
    finally:
        s.close()


def test_keep_files_spares_left_by_a_process_are_removed_on_open(tmp_path):
    d = tmp_path / "k"
    code = textwrap.dedent(f"""
        import os, numpy as np
        from hauler.io import TensorStore
        s = TensorStore({str(d)!r}, keep_files=1 << 20)
        s.put("a", np.arange(1000)).result()
        s.put("b", np.arange(10)).result()
        s.delete("a")
        os._exit(0)     # no close: the spare stays
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(_spares(d)) == 1
    with TensorStore(d) as s:           # a spare still holds a's header: never taken for an entry
        assert s.keys() == ["b"] and _spares(d) == []
    with pytest.raises(InvalidArgument, match="keep_files must be an integer"):
        TensorStore(tmp_path / "y", keep_files="1M")
