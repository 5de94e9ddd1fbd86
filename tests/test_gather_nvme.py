"""hauler.gather's file tables (backend="file": .npy or raw files read through hauler.io's engine,
never mapped) against numpy fancy indexing: random row sizes (odd ones, rows straddling 4 KiB
blocks), dtypes, unsorted / duplicate / empty indices, poisoned outputs; only the blocks holding
the wanted rows are read, coalesced into extents read as one request; bad input rejected before any read."""
from __future__ import annotations

import os
import pickle
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hauler
from hauler.gather import FeatureStore
from support import examples
from support.buffers import POISONS
from support.tables import BLOCK, expected_blocks, make_index, write_table

DTYPES = [np.uint8, np.int16, np.float16, np.int32, np.float32, np.float64, np.complex128]


@pytest.fixture(scope="module")
def tdir():
    with tempfile.TemporaryDirectory(dir=os.environ.get("HAULER_TEST_NVME_DIR") or None) as d:
        yield d


@st.composite
def cases(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rows = draw(st.integers(1, 300))
    row_shape = draw(st.sampled_from([(), (1,), (3,), (7,), (2, 5), (129,), (333,), (1024,), (1500,)]))
    n = draw(st.one_of(st.just(0), st.integers(1, 200)))
    kind = draw(st.sampled_from(["random", "sorted", "dups", "2d"]))
    width = draw(st.sampled_from([np.int32, np.int64]))
    raw = draw(st.booleans())
    pad = draw(st.sampled_from([0, 1, 13, 4095])) if raw else 0
    seed = draw(st.integers(0, 2**32 - 1))
    return dtype, rows, row_shape, n, kind, width, raw, pad, seed


@settings(max_examples=examples(60), deadline=None)
@given(cases())
def test_gather_matches_numpy(tdir, case):
    dtype, rows, row_shape, n, kind, width, raw, pad, seed = case
    rng = np.random.default_rng(seed)
    nbytes = rows * int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    table = rng.integers(0, 256, nbytes, dtype=np.uint8).view(dtype).reshape((rows,) + row_shape)
    path = write_table(tdir, table, raw, pad)
    idx = make_index(rng, rows, n, kind, width)
    fs = FeatureStore()
    if raw:
        fs.add("t", path, backend="file", dtype=dtype, shape=(-1,) + row_shape, offset=pad)
    else:
        fs.add("t", path, backend="file")
    try:
        assert fs.kind("t") == "file" and fs.shape("t") == table.shape and fs.dtype("t") == dtype
        want = table[idx]
        got = fs.gather("t", idx)
        assert isinstance(got, np.ndarray) and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
        for fill in POISONS:
            out = np.full(want.nbytes, fill, np.uint8).view(dtype).reshape(want.shape)
            assert fs.gather("t", idx, out=out) is out
            assert out.tobytes() == want.tobytes()
        got_t = fs.gather("t", torch.from_numpy(idx))
        assert isinstance(got_t, torch.Tensor) and got_t.numpy().tobytes() == want.tobytes()
    finally:
        fs.close()


@pytest.mark.parametrize("row_bytes", [4, 100, 1000, 4096, 5000, 12289])
@pytest.mark.parametrize("npy", [True, False])
def test_reads_only_needed_blocks(tdir, row_bytes, npy):
    rows = max(8, (1 << 20) // row_bytes)
    table = np.random.default_rng(row_bytes).integers(0, 256, (rows, row_bytes), dtype=np.uint8)
    path = write_table(tdir, table, raw=not npy)
    fs = FeatureStore()
    fs.add("t", path, backend="file", **({} if npy else {"dtype": np.uint8, "shape": (-1, row_bytes)}))
    t = fs._get("t")
    data_offset = t.offset
    size = os.path.getsize(path)
    rng = np.random.default_rng(1)
    for idx in (np.array([rows - 1, 0, 3, 3, rows // 2]), rng.integers(0, rows, 37), np.array([], np.int64),
                np.arange(rows)):
        t.reset_counters()
        got = fs.gather("t", idx)
        assert np.array_equal(got, table[idx])
        blocks = expected_blocks(data_offset, row_bytes, idx)
        want_bytes = sum(min(BLOCK, size - b * BLOCK) for b in blocks)
        assert t.blocks_read == len(blocks)
        assert t.bytes_read == want_bytes, (t.bytes_read, want_bytes)
        runs = sum(1 for b in blocks if b - 1 not in blocks)
        assert t.requests == (1 if blocks else 0)        # one request of coalesced extents
        assert t.extents_read == runs
    # far fewer bytes than the table for a sparse gather
    t.reset_counters()
    fs.gather("t", [0, rows - 1])
    assert t.bytes_read <= 2 * (row_bytes + 2 * BLOCK)
    fs.close()


def test_bad_input_before_any_read(tdir):
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    fs = FeatureStore()
    fs.add("t", write_table(tdir, table, raw=False), backend="file")
    t = fs._get("t")
    t.reset_counters()
    for idx, pattern in [(np.array([1, 2, 10]), r"index\[2\] = 10 is out of range for a table of 10 rows"),
                         (np.array([0, -1, 3]), r"index\[1\] = -1 is negative"),
                         (np.array([5, 2**40], np.int64), r"index\[1\] = 1099511627776 is out of range"),
                         (np.array([3, 3, 3, -7], np.int32), r"index\[3\] = -7 is negative")]:
        out = np.full((idx.size, 4), 7.0, np.float32)
        with pytest.raises(hauler.OutOfRange, match=pattern):
            fs.gather("t", idx, out=out)
        assert (out == 7.0).all()
    with pytest.raises(hauler.InvalidArgument, match="int32 or int64"):
        fs.gather("t", np.array([1.0]))
    with pytest.raises(hauler.InvalidArgument, match="shape"):
        fs.gather("t", [1, 2], out=np.empty((3, 4), np.float32))
    with pytest.raises(hauler.InvalidArgument, match="dtype"):
        fs.gather("t", [1, 2], out=np.empty((2, 4), np.float64))
    assert t.bytes_read == 0 and t.requests == 0
    with pytest.raises(hauler.ReadOnlyBuffer, match="NVMe table opened read-only"):
        fs.scatter("t", [1], np.ones((1, 4), np.float32))
    with pytest.raises(hauler.InvalidArgument, match="no in-memory view"):
        fs.table("t")
    with pytest.raises(KeyError, match="no table named 'u'"):
        fs.gather("u", [0])
    fs.close()


def test_bad_tables(tdir):
    fs = FeatureStore()
    with pytest.raises(FileNotFoundError):
        fs.add("t", os.path.join(tdir, "missing.npy"), backend="file")
    raw = write_table(tdir, np.zeros(100, np.uint8), raw=True)
    with pytest.raises(hauler.InvalidArgument, match="needs dtype"):
        fs.add("t", raw, backend="file")
    with pytest.raises(hauler.InvalidArgument, match="needs"):
        fs.add("t", raw, backend="file", dtype=np.float32, shape=(30, 1))      # 120 bytes > 100
    with pytest.raises(hauler.InvalidArgument, match="backend"):
        fs.add("t", raw, backend="tape")
    with pytest.raises(hauler.InvalidArgument, match="never mapped"):
        fs.add("t", raw, backend="file", dtype=np.uint8, shared=True)
    with pytest.raises(hauler.InvalidArgument, match="Fortran"):
        fs.add("t", write_table(tdir, np.asfortranarray(np.zeros((4, 3))), raw=False), backend="file")
    fs.add("t", raw, backend="file", dtype=np.uint8, shape=(-1, 7))            # 14 rows of 7, 2 bytes spare
    assert fs.shape("t") == (14, 7)
    fs.close()


def test_pickle_and_replace(tdir):
    table = np.random.default_rng(0).standard_normal((50, 33))
    fs = FeatureStore()
    fs.add("t", write_table(tdir, table, raw=False), backend="file")
    fs2 = pickle.loads(pickle.dumps(fs))
    idx = np.array([49, 0, 7, 7])
    assert np.array_equal(fs2.gather("t", idx), table[idx])
    fs.add("t", table)                                   # replaced by a memory table; the file is closed
    assert fs.kind("t") == "memory" and np.array_equal(fs.gather("t", idx), table[idx])
    fs.close()
    fs2.close()


def test_read_extents(tdir):
    data = np.random.default_rng(3).integers(0, 256, 3 * BLOCK + 100, dtype=np.uint8)
    path = write_table(tdir, data, raw=True)
    with hauler.io.File(path) as f:
        buf = np.empty(BLOCK + 100 + 7, np.uint8)
        assert f.read_extents(buf, [0, 3 * BLOCK, 5], [BLOCK, 100, 7]) == BLOCK + 107
        assert np.array_equal(buf, np.concatenate((data[:BLOCK], data[3 * BLOCK:], data[5:12])))
        with pytest.raises(hauler.InvalidArgument, match="entries"):
            f.read_extents(buf, [0, 1], [1])
        with pytest.raises(hauler.BufferTooSmall):
            f.read_extents(buf, [0, 0], [BLOCK, BLOCK])
        with pytest.raises(hauler.OutOfRange):
            f.read_extents(buf, [3 * BLOCK], [BLOCK])


@pytest.mark.parametrize("direct", [None, False])
def test_write_extents(tdir, direct):
    data = np.random.default_rng(4).integers(0, 256, 3 * BLOCK + 100, dtype=np.uint8)
    path = write_table(tdir, data, raw=True)
    new = np.random.default_rng(5).integers(0, 256, BLOCK + 100 + 7, dtype=np.uint8)
    with hauler.io.File(path, "r+", direct=direct) as f:
        # a whole block, the tail cut at the end of the file, an unaligned piece inside block 1
        assert f.write_extents(new, [0, 3 * BLOCK, BLOCK + 5], [BLOCK, 100, 7]) == BLOCK + 107
        assert f.size() == data.size                     # the unaligned tail did not grow the file
        with pytest.raises(hauler.InvalidArgument, match="entries"):
            f.write_extents(new, [0, 1], [1])
        with pytest.raises(hauler.BufferTooSmall):
            f.write_extents(new, [0, BLOCK], [BLOCK, BLOCK])
    want = data.copy()
    want[:BLOCK], want[3 * BLOCK:], want[BLOCK + 5:BLOCK + 12] = new[:BLOCK], new[BLOCK:BLOCK + 100], new[-7:]
    assert np.array_equal(np.fromfile(path, np.uint8), want)
    with hauler.io.File(path) as f, pytest.raises(hauler.InvalidArgument, match="not writable"):
        f.write_extents(new, [0], [1])
