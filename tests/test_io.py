"""hauler.io's engine against the bytes on disk (read back with os.pread) and numpy: aligned and
unaligned buffers/offsets/sizes on both backends, O_DIRECT and buffered, futures, buffer kinds."""
from __future__ import annotations

import concurrent.futures
import errno
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import hauler
from hauler import config, io
from hauler.errors import BufferTooSmall, HaulerIOError, InvalidArgument, NoDevice, OutOfRange, ReadOnlyBuffer
from support.device import FakeCudaArray
from support.io_backends import BACKENDS, disk_bytes, using

@pytest.fixture(params=BACKENDS)
def backend(request):
    # small tasks so that modest requests split into many in flight
    with using(request.param, HAULER_IO_TASK_SIZE=64 * 1024, HAULER_IO_QUEUE_DEPTH=8) as name:
        yield name


def rand(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def test_backend_is_reported():
    assert io.backend() in ("io_uring", "threads")
    assert io.backend() in io.backend_description()
    assert io.alignment() == 4096
    # cuFile's status follows from the machine's GPU (the loader's own answer, emulation off):
    # without one, exactly that reason; with one, available or why libcufile did not load.
    from hauler import _core
    before = _core._gpu_emulation()
    _core._use_gpu_emulation(False)
    try:
        gpu, why = _core.cuda_available(), _core.cuda_status()
    finally:
        _core._use_gpu_emulation(before)
    status = io.cufile_status()
    if not gpu:
        assert status == f"not available: no usable GPU ({why})", status
    else:
        assert status == "available" or re.fullmatch(
            r"not available: (libcufile not found: .+|libcufile lacks .+|cuFileDriverOpen failed \(error -?\d+\))",
            status), status


def test_direct_where_the_file_system_allows(tmp_path):
    with io.File(tmp_path / "a", "w") as f:
        # ext4 and modern tmpfs allow O_DIRECT; whichever happened, the handle says so
        assert f.direct or f.direct_reason
        assert f.direct_reason == "" if f.direct else "buffered" in f.direct_reason
    with io.File(tmp_path / "b", "w", direct=False) as f:
        assert not f.direct and "direct=False" in f.direct_reason
    config.set("HAULER_IO_DIRECT", 0)
    try:
        with io.File(tmp_path / "c", "w") as f:
            assert not f.direct and "HAULER_IO_DIRECT=0" in f.direct_reason
    finally:
        config.set("HAULER_IO_DIRECT", None)


@pytest.mark.parametrize("direct", [None, False])
def test_large_aligned_roundtrip(tmp_path, backend, direct):
    data = rand(3 * 1024 * 1024 + 4096, 1)
    p = tmp_path / "big"
    with io.File(p, "w", direct=direct) as f:
        assert f.write(data) == data.nbytes
    assert disk_bytes(p) == data.tobytes()
    out = np.zeros_like(data)
    with io.File(p, "r", direct=direct) as f:
        assert f.size() == data.nbytes
        assert f.read_into(out) == data.nbytes
    assert np.array_equal(out, data)


@settings(max_examples=60)
@given(size=st.integers(1, 300_000), off=st.integers(0, 200_000), shift=st.integers(0, 4095),
       prefill=st.integers(0, 600_000), direct=st.sampled_from([None, False]),
       backend_name=st.sampled_from(BACKENDS))
def test_unaligned_write_then_read_matches_disk(tmp_path_factory, size, off, shift, prefill, direct,
                                                backend_name):
    """Random sizes, offsets and buffer misalignments: the file must equal the oracle built with
    numpy (prefix kept, the written range replaced, the tail kept, the size max(old, end))."""
    if backend_name == "io_uring" and io.backend_is_fallback():
        backend_name = "threads"
    config.set("HAULER_IO_BACKEND", backend_name)
    config.set("HAULER_IO_TASK_SIZE", 64 * 1024)
    try:
        d = tmp_path_factory.mktemp("u")
        p = d / "f"
        old = rand(prefill, 2)
        p.write_bytes(old.tobytes())
        raw = rand(size + shift, 3)
        src = raw[shift:shift + size]
        expect = np.zeros(max(prefill, off + size), dtype=np.uint8)
        expect[:prefill] = old
        expect[off:off + size] = src
        with io.File(p, "r+", direct=direct) as f:
            assert f.write(src, offset=off) == size
        assert disk_bytes(p) == expect.tobytes()
        # read back into a misaligned buffer at a random place
        dst_raw = np.full(size + shift + 16, 0xAB, dtype=np.uint8)
        dst = dst_raw[shift:shift + size]
        with io.File(p, "r", direct=direct) as f:
            assert f.read_into(dst, offset=off) == size
        assert np.array_equal(dst, src)
        assert (dst_raw[:shift] == 0xAB).all() and (dst_raw[shift + size:] == 0xAB).all()
    finally:
        config.set("HAULER_IO_BACKEND", None)
        config.set("HAULER_IO_TASK_SIZE", None)


def test_futures(tmp_path, backend):
    data = rand(2 * 1024 * 1024, 4)
    p = tmp_path / "f"
    with io.File(p, "w+") as f:
        futs = [f.pwrite(data[i:i + 512 * 1024], offset=i) for i in range(0, data.nbytes, 512 * 1024)]
        assert sum(x.result(timeout=60) for x in futs) == data.nbytes
        assert all(x.done() for x in futs)
        assert not futs[0].cancel()  # already done
        out = np.empty_like(data)
        fut = f.pread(out)
        assert fut.result() == data.nbytes
        assert fut.exception() is None
    assert np.array_equal(out, data)
    assert disk_bytes(p) == data.tobytes()


def test_futures_work_with_concurrent_futures(tmp_path, backend):
    data = rand(1024 * 1024, 9)
    p = tmp_path / "cf"
    with io.File(p, "w+") as f:
        seen = []
        futs = [f.pwrite(data[i:i + 128 * 1024], offset=i) for i in range(0, data.nbytes, 128 * 1024)]
        assert all(isinstance(x, concurrent.futures.Future) for x in futs)
        for x in futs:
            x.add_done_callback(seen.append)
        done, not_done = concurrent.futures.wait(futs, timeout=60)
        assert not not_done and len(done) == len(futs)
        assert sorted(map(id, seen)) == sorted(map(id, futs))  # every callback ran, once
        outs = [np.zeros(256 * 1024, np.uint8) for _ in range(4)]
        reads = {f.pread(o, offset=i * 256 * 1024): i for i, o in enumerate(outs)}
        got = [reads[x] for x in concurrent.futures.as_completed(reads, timeout=60)]
        assert sorted(got) == [0, 1, 2, 3]
        assert all(x.result() == 256 * 1024 for x in reads)
        # a callback added after completion runs at once; an error reaches wait() and callbacks
        late = []
        futs[0].add_done_callback(late.append)
        assert late == [futs[0]]
        bad = f.pread(np.zeros(4096, np.uint8), offset=data.nbytes)
        errs = []
        bad.add_done_callback(lambda x: errs.append(x.exception()))
        concurrent.futures.wait([bad], timeout=60)
        assert isinstance(bad.exception(), OutOfRange) and isinstance(errs[0], OutOfRange)
    assert np.array_equal(np.concatenate(outs), data)


def test_cancel_before_start(tmp_path):
    # one request thread: the second request queues behind the first and can be cancelled
    config.set("HAULER_IO_REQUESTS", 1)
    try:
        p = tmp_path / "c"
        big = rand(32 * 1024 * 1024, 5)
        with io.File(p, "w+") as f:
            futs = [f.pwrite(big) for _ in range(4)]
            small = np.ones(4096, np.uint8)
            last = f.pwrite(small, offset=0)
            cancelled = last.cancel()
            for x in futs:
                x.result()
            if cancelled:
                assert last.cancelled() and last.done()
                with pytest.raises(concurrent.futures.CancelledError):
                    last.result()
                assert disk_bytes(p, 0, 4096) == big[:4096].tobytes()
            else:  # it had already started: it ran to the end
                assert last.result() == 4096
    finally:
        config.set("HAULER_IO_REQUESTS", None)


def test_result_timeout(tmp_path):
    p = tmp_path / "t"
    with io.File(p, "w+", direct=False) as f:
        fut = f.pwrite(rand(64 * 1024 * 1024, 6))
        try:
            fut.result(timeout=0)
        except TimeoutError:
            pass  # still running: the documented outcome
        assert fut.result(timeout=120) == 64 * 1024 * 1024


def test_buffer_kinds(tmp_path, backend):
    torch = pytest.importorskip("torch")
    p = tmp_path / "k"
    t = torch.arange(100_000, dtype=torch.float32)
    b = bytearray(b"x" * 1000)
    with io.File(p, "w+") as f:
        f.write(t)                          # torch CPU tensor
        f.write(b, offset=400_000)          # bytearray
        f.write(memoryview(b"hello"), offset=401_000)
        f.write(torch.ones(10, dtype=torch.bfloat16), offset=402_000)
        out = torch.empty(100_000, dtype=torch.float32)
        f.read_into(out)
        assert torch.equal(out, t)
        ba = bytearray(5)
        f.read_into(ba, offset=401_000)
        assert ba == b"hello"
        ob = torch.zeros(10, dtype=torch.bfloat16)
        f.pread(ob, offset=402_000).result()
        assert torch.equal(ob, torch.ones(10, dtype=torch.bfloat16))
    assert disk_bytes(p, 0, 400_000) == t.numpy().tobytes()


def test_bad_arguments(tmp_path):
    p = tmp_path / "b"
    p.write_bytes(b"\0" * 8192)
    with io.File(p, "r+") as f:
        with pytest.raises(BufferTooSmall, match="fewer than the 100 requested"):
            f.read_into(bytearray(10), size=100)
        with pytest.raises(BufferTooSmall):
            f.pread(bytearray(10), size=100)
        with pytest.raises(ReadOnlyBuffer):
            f.read_into(b"immutable")
        with pytest.raises(InvalidArgument):
            f.read_into(bytearray(10), offset=-1)
        with pytest.raises(InvalidArgument):
            f.read_into(object())
        with pytest.raises(InvalidArgument):
            f.read_into(np.zeros((10, 10))[:, 0])  # not contiguous
    with io.File(p, "r") as f:
        with pytest.raises(InvalidArgument, match="not writable"):
            f.write(b"x")
    with io.File(p, "w") as f:
        with pytest.raises(InvalidArgument, match="not readable"):
            f.read_into(bytearray(1))
    with pytest.raises(InvalidArgument, match="mode"):
        io.File(p, "rw")
    with pytest.raises(HaulerIOError, match="ENOENT"):
        io.File(tmp_path / "missing", "r")
    with pytest.raises(HaulerIOError, match="EEXIST"):
        io.File(p, "x")


def test_sizes_offsets_and_paths_checked_before_any_io(tmp_path):
    p = tmp_path / "s"
    p.write_bytes(b"\0" * 8192)
    buf = bytearray(4096)
    with io.File(p, "r+") as f:
        for call in (f.read_into, f.write, f.pread, f.pwrite):
            with pytest.raises(hauler.Overflow, match="size=.* does not fit in 64 bits"):
                call(buf, size=1 << 64)
            with pytest.raises(hauler.Overflow, match="offset="):
                call(buf, offset=1 << 70)
            with pytest.raises(InvalidArgument, match="offset must be an integer, got float"):
                call(buf, offset=4096.0)
            with pytest.raises(InvalidArgument, match="size must be an integer, got float"):
                call(buf, size=10.0)
        with pytest.raises(InvalidArgument, match=r"offsets\[1\] must be an integer, got float"):
            f.read_many(buf, [0, 1.5], 100)
        with pytest.raises(hauler.Overflow, match=r"sizes\[0\]"):
            f.read_extents(buf, [0], [1 << 64])
        with pytest.raises(InvalidArgument, match=r"offsets\[0\] must be >= 0"):
            f.write_extents(buf, [-4096], [10])
    assert disk_bytes(p) == b"\0" * 8192
    with pytest.raises(HaulerIOError, match="EISDIR.*is a directory") as e:
        io.File(tmp_path, "r")
    assert e.value.errno == errno.EISDIR


@pytest.mark.parametrize("like", ["numpy", "torch"])
def test_aligned_empty(tmp_path, like):
    import torch
    for shape, dtype in [((3, 1000), "float32"), (5, np.int16), ((0,), "uint8"), ((2, 4096), torch.bfloat16)]:
        if like == "numpy" and isinstance(dtype, torch.dtype):
            with pytest.raises(InvalidArgument, match="not a numpy dtype"):
                io.empty(shape, dtype)
            continue
        a = io.empty(shape, dtype, like=like)
        want = (shape,) if isinstance(shape, int) else shape
        assert tuple(a.shape) == want
        ptr = a.ctypes.data if like == "numpy" else a.data_ptr()
        assert ptr % 4096 == 0
        assert isinstance(a, np.ndarray if like == "numpy" else torch.Tensor)
    a = io.empty((256, 1024), np.float32, like=like)
    a[:] = 1.5
    before = io.counters()["bounced_bytes"]
    with io.File(tmp_path / "e", "w+") as f:
        f.write(a)
        b = io.empty((256, 1024), np.float32, like=like)
        f.read_into(b)
        if f.direct:
            assert io.counters()["bounced_bytes"] == before  # used in place
    assert (b == 1.5).all()
    with pytest.raises(InvalidArgument, match="like must be"):
        io.empty(4, like="cupy")
    with pytest.raises(InvalidArgument, match="negative"):
        io.empty((2, -1))
    with pytest.raises(hauler.Overflow):
        io.empty((1 << 40, 1 << 30), np.float64)


def test_device_array_without_gpu(tmp_path, no_gpu):
    p = tmp_path / "d"
    p.write_bytes(b"\1" * 4096)
    with io.File(p, "r+") as f:
        with pytest.raises(NoDevice, match="no usable GPU"):
            f.read_into(FakeCudaArray(np.zeros(4096, np.uint8)))
        with pytest.raises(NoDevice):
            f.pwrite(FakeCudaArray(np.zeros(4096, np.uint8))).result()
    assert "not available" in io.cufile_status()


def test_many_files_concurrently(tmp_path, backend):
    datas = [rand(300_000 + i * 4097, 10 + i) for i in range(8)]
    files = [io.File(tmp_path / f"m{i}", "w+") for i in range(8)]
    futs = [f.pwrite(d) for f, d in zip(files, datas)]
    for x in futs:
        x.result()
    outs = [np.empty_like(d) for d in datas]
    futs = [f.pread(o) for f, o in zip(files, outs)]
    for x in futs:
        x.result()
    for f in files:
        f.close()
    for i, (d, o) in enumerate(zip(datas, outs)):
        assert np.array_equal(d, o)
        assert disk_bytes(tmp_path / f"m{i}") == d.tobytes()


def test_import_is_lazy():
    import subprocess
    import sys
    code = "import sys, hauler; assert 'hauler.io' not in sys.modules; hauler.io; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
    assert hauler.io is io


@settings(max_examples=40)
@given(size=st.integers(1, 20_000), count=st.integers(1, 30), seed=st.integers(0, 1 << 30),
       direct=st.sampled_from([None, False]), backend_name=st.sampled_from(BACKENDS))
def test_read_many_write_many_match_numpy(tmp_path_factory, size, count, seed, direct, backend_name):
    if backend_name == "io_uring" and io.backend_is_fallback():
        backend_name = "threads"
    config.set("HAULER_IO_BACKEND", backend_name)
    try:
        rng = np.random.default_rng(seed)
        p = tmp_path_factory.mktemp("m") / "f"
        disk = rand(400_000, seed)
        p.write_bytes(disk.tobytes())
        # non-overlapping pieces, each in its own 4 KiB-block range (write_many's rule)
        nslots = (400_000 - size - 4096) // (size + 8192)
        slots = rng.choice(nslots, size=min(count, nslots), replace=False)
        count = len(slots)
        offs = [int(s) * (size + 8192) + int(rng.integers(0, 4096)) for s in slots]
        out = np.full(count * size + 7, 0xCD, np.uint8)
        with io.File(p, "r+", direct=direct) as f:
            assert f.read_many(out[:count * size], offs, size) == count * size
            for i, o in enumerate(offs):
                assert np.array_equal(out[i * size:(i + 1) * size], disk[o:o + size])
            src = rand(count * size, seed + 1)
            assert f.write_many(src, offs, size) == count * size
        expect = disk.copy()
        for i, o in enumerate(offs):
            expect[o:o + size] = src[i * size:(i + 1) * size]
        assert disk_bytes(p) == expect.tobytes()
    finally:
        config.set("HAULER_IO_BACKEND", None)


def test_many_bad_input(tmp_path):
    p = tmp_path / "m"
    p.write_bytes(b"\0" * 65536)
    with io.File(p, "r+") as f:
        with pytest.raises(BufferTooSmall, match="3 pieces of 100 bytes"):
            f.read_many(bytearray(200), [0, 1000, 2000], 100)
        with pytest.raises(OutOfRange, match="past the end"):
            f.read_many(bytearray(300), [0, 1000, 65500], 100)
        if f.direct:
            with pytest.raises(InvalidArgument, match="share a 4 KiB block"):
                f.write_many(bytearray(200), [0, 100], 100)
        with pytest.raises(InvalidArgument, match="overlap"):
            f.write_many(bytearray(200), [0, 50], 100)


@settings(max_examples=40)
@given(size=st.integers(1, 400_000), off=st.integers(0, 200_000), prefill=st.integers(0, 600_000),
       backend_name=st.sampled_from(BACKENDS))
def test_memory_at_the_file_phase_bounces_only_partial_edge_blocks(tmp_path_factory, size, off, prefill,
                                                                   backend_name):
    """Memory at the same offset modulo 4 KiB as the file range (what TensorStore lays out): the
    file equals the numpy oracle, and only the partial first and last blocks go through bounce
    buffers, however many tasks the request spans."""
    if backend_name == "io_uring" and io.backend_is_fallback():
        backend_name = "threads"
    config.set("HAULER_IO_BACKEND", backend_name)
    config.set("HAULER_IO_TASK_SIZE", 64 * 1024)
    try:
        d = tmp_path_factory.mktemp("phase")
        p = d / "f"
        old = rand(prefill, 2)
        p.write_bytes(old.tobytes())
        with io.File(p, "r+") as f:
            if not f.direct:
                pytest.skip(f"no O_DIRECT here: {f.direct_reason}")
        raw = np.empty(size + 3 * 4096, dtype=np.uint8)
        start = (off - raw.ctypes.data) % 4096
        src = raw[start:start + size]
        src[:] = rand(size, 3)
        expect = np.zeros(max(prefill, off + size), dtype=np.uint8)
        expect[:prefill] = old
        expect[off:off + size] = src
        edges = (off % 4096 != 0) + ((off + size) % 4096 != 0)   # at most 2 partial blocks
        b0 = io.counters()["bounced_bytes"]
        with io.File(p, "r+") as f:
            assert f.write(src, offset=off) == size
        assert disk_bytes(p) == expect.tobytes()
        assert io.counters()["bounced_bytes"] - b0 <= edges * 4096
        dst_raw = np.full(size + 3 * 4096, 0xAB, dtype=np.uint8)
        ds = (off - dst_raw.ctypes.data) % 4096
        b0 = io.counters()["bounced_bytes"]
        with io.File(p, "r") as f:
            assert f.read_into(dst_raw[ds:ds + size], offset=off) == size
        assert io.counters()["bounced_bytes"] - b0 <= edges * 4096
        assert np.array_equal(dst_raw[ds:ds + size], src)
        assert (dst_raw[:ds] == 0xAB).all() and (dst_raw[ds + size:] == 0xAB).all()
    finally:
        config.set("HAULER_IO_BACKEND", None)
        config.set("HAULER_IO_TASK_SIZE", None)
