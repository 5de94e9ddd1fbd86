"""hauler.gather against numpy fancy indexing: random tables (shapes, dtypes, row sizes,
misaligned and strided rows), random indices (int32/int64, duplicates, sorted, slices, empty),
poisoned outputs (every byte written, nothing past the end), scatter semantics, table kinds
(memory, /dev/shm-shared, mmap .npy), and bad input rejected before anything is written."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hauler
from hauler import _core, config
from hauler.gather import FeatureStore, gather, scatter
from support import examples
from support.buffers import POISONS

DTYPES = [np.uint8, np.int16, np.float16, np.int32, np.float32, np.float64, np.int64, np.complex128]


@pytest.fixture
def threads_split_small():
    """Any gather may be split over the pool (HAULER_GATHER_PARALLEL_MIN=0)."""
    config.set("HAULER_GATHER_PARALLEL_MIN", 0)
    try:
        yield
    finally:
        config.set("HAULER_GATHER_PARALLEL_MIN", None)


@st.composite
def gather_cases(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rows = draw(st.integers(1, 200))
    row_shape = draw(st.sampled_from([(), (1,), (3,), (16,), (2, 5), (64,), (129,), (1024,)]))
    pad = draw(st.sampled_from([0, 0, 1, 7]))           # extra elements between rows (strided rows)
    offset = draw(st.integers(0, 15))                   # byte misalignment of the table
    n = draw(st.one_of(st.just(0), st.integers(1, 400)))
    kind = draw(st.sampled_from(["random", "sorted", "dups", "slice"]))
    width = draw(st.sampled_from([np.int32, np.int64]))
    seed = draw(st.integers(0, 2**32 - 1))
    return dtype, rows, row_shape, pad, offset, n, kind, width, seed


def make_table(dtype, rows, row_shape, pad, offset, seed):
    per_row = int(np.prod(row_shape, dtype=np.int64))
    stride_elems = per_row + pad
    raw = np.random.default_rng(seed).integers(0, 256, rows * stride_elems * dtype.itemsize + offset + 64,
                                               dtype=np.uint8)
    flat = raw[offset:offset + rows * stride_elems * dtype.itemsize].view(dtype).reshape(rows, stride_elems)
    return flat[:, :per_row].reshape((rows,) + row_shape) if pad else flat.reshape((rows,) + row_shape)


def make_index(rows, n, kind, width, seed):
    rng = np.random.default_rng(seed + 1)
    if kind == "slice":
        a = int(rng.integers(0, max(1, rows - n + 1))) if n <= rows else 0
        idx = np.minimum(np.arange(a, a + n), rows - 1)
    elif kind == "dups":
        idx = rng.integers(0, min(rows, 3), n)
    else:
        idx = rng.integers(0, rows, n)
        if kind == "sorted":
            idx.sort()
    return idx.astype(width)


@settings(max_examples=examples(150))
@given(gather_cases(), st.sampled_from([None, True, False]), st.integers(1, 2))
def test_gather_equals_numpy_take_with_poisoned_out(case, stream, threads):
    dtype, rows, row_shape, pad, offset, n, kind, width, seed = case
    table = make_table(dtype, rows, row_shape, pad, offset, seed)
    idx = make_index(rows, n, kind, width, seed)
    expect = table[idx]
    fs = FeatureStore({"t": table})
    for fill in POISONS:
        raw = np.full(expect.nbytes + 3 + 64, fill, np.uint8)
        out = raw[3:3 + expect.nbytes].view(dtype).reshape(expect.shape) if expect.nbytes else \
            np.empty(expect.shape, dtype)
        got = fs.gather("t", idx, out=out, stream=stream, threads=threads)
        assert got is out
        assert out.tobytes() == expect.tobytes(), f"{kind} rows={rows} shape={row_shape} pad={pad}"
        assert (raw[:3] == fill).all() and (raw[3 + expect.nbytes:] == fill).all(), "wrote outside out"
    fresh = fs.gather("t", idx)
    assert isinstance(fresh, np.ndarray) and fresh.dtype == dtype and fresh.shape == expect.shape
    assert fresh.tobytes() == expect.tobytes()


def test_gather_splits_over_threads(threads_split_small):
    table = np.random.default_rng(0).random((5000, 24))
    idx = np.random.default_rng(1).integers(0, 5000, 20001)
    for threads in (1, 2, 3):
        assert np.array_equal(gather(table, idx, threads=threads), table[idx])


def test_multidimensional_index_and_python_lists():
    table = np.arange(60, dtype=np.int32).reshape(20, 3)
    idx = np.array([[1, 2], [19, 0]])
    assert np.array_equal(gather(table, idx), table[idx])
    assert np.array_equal(gather(table, [4, 4, 7]), table[[4, 4, 7]])
    assert gather(table, []).shape == (0, 3)
    one_d = np.arange(10.0)
    assert np.array_equal(gather(one_d, [9, 0]), one_d[[9, 0]])


def test_torch_in_torch_out_dtypes_preserved():
    x = torch.randn(50, 8, dtype=torch.bfloat16)
    fs = FeatureStore({"x": x})
    idx = torch.tensor([3, 1, 3, 49], dtype=torch.int32)
    r = fs.gather("x", idx)
    assert isinstance(r, torch.Tensor) and r.dtype == torch.bfloat16 and torch.equal(r, x[idx.long()])
    # numpy table, torch index -> torch; numpy table, numpy index -> numpy
    a = np.random.default_rng(0).random((10, 2)).astype(np.float32)
    fs.add("a", a)
    assert isinstance(fs.gather("a", torch.tensor([1])), torch.Tensor)
    assert isinstance(fs.gather("a", np.array([1])), np.ndarray)
    out = torch.empty(2, 8, dtype=torch.bfloat16)
    assert fs.gather("x", torch.tensor([0, 1]), out=out) is out and torch.equal(out, x[:2])


@settings(max_examples=examples(60))
@given(st.integers(1, 60), st.integers(0, 300), st.sampled_from([1, 4, 8, 40]), st.integers(0, 2**32 - 1),
       st.integers(1, 2))
def test_scatter_assign_last_writer_wins(rows, n, cols, seed, threads):
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 1000, (rows, cols)).astype(np.int64)
    idx = rng.integers(0, rows, n)
    src = rng.integers(0, 1000, (n, cols)).astype(np.int64)
    expect = table.copy()
    for i, v in enumerate(idx):  # the definition: a loop in index order
        expect[v] = src[i]
    scatter(table, idx, src, threads=threads)
    assert np.array_equal(table, expect)


@settings(max_examples=examples(60))
@given(st.integers(1, 40), st.integers(0, 300), st.sampled_from([np.float32, np.float64, np.int32, np.int64]),
       st.integers(0, 2**32 - 1), st.integers(1, 2))
def test_scatter_add_equals_numpy_add_at_bitwise(rows, n, dtype, seed, threads):
    rng = np.random.default_rng(seed)
    table = (rng.standard_normal((rows, 6)) * 100).astype(dtype)
    idx = rng.integers(0, rows, n)
    src = (rng.standard_normal((n, 6)) * 100).astype(dtype)
    expect = table.copy()
    np.add.at(expect, idx, src)
    config.set("HAULER_GATHER_PARALLEL_MIN", 0)
    try:
        scatter(table, idx, src, reduce="add", threads=threads)
    finally:
        config.set("HAULER_GATHER_PARALLEL_MIN", None)
    assert table.tobytes() == expect.tobytes()


# -- table kinds ----------------------------------------------------------------------------------

def test_mmap_npy_table(tmp_path):
    a = np.random.default_rng(0).random((300, 5))
    p = tmp_path / "feat.npy"
    np.save(p, a)
    fs = FeatureStore({"f": str(p)})
    assert fs.kind("f") == "mmap" and isinstance(fs.table("f"), np.memmap)
    assert np.array_equal(fs.gather("f", [299, 0, 5]), a[[299, 0, 5]])
    with pytest.raises(hauler.ReadOnlyBuffer, match="read-only"):
        fs.scatter("f", [0], np.zeros((1, 5)))
    fs.add("w", p, writable=True)
    fs.scatter("w", [1], np.full((1, 5), 7.0))
    assert (np.load(p)[1] == 7.0).all()
    clone = pickle.loads(pickle.dumps(fs))  # by path, not by value
    assert clone.kind("f") == "mmap" and len(pickle.dumps(fs)) < 2000
    assert np.array_equal(clone.gather("f", [3]), a[[3]])


def test_shared_table_is_one_copy_in_dev_shm():
    a = np.random.default_rng(0).random((100, 4)).astype(np.float32)
    fs = FeatureStore({"a": a}, shared=True)
    path = fs.path("a")
    assert fs.kind("a") == "shared" and os.path.exists(path)
    blob = pickle.dumps(fs)
    assert len(blob) < 2000, "pickling a shared table must send its path, not its rows"
    clone = pickle.loads(blob)
    fs.scatter("a", [2], np.full((1, 4), 5, np.float32))  # visible through the clone's mapping
    assert (clone.gather("a", [2]) == 5).all()
    fs.close()
    assert not os.path.exists(path)
    assert (clone.gather("a", [2]) == 5).all(), "an open mapping outlives the file"


def test_share_moves_memory_tables_and_keeps_torch_dtype():
    x = torch.randn(30, 3, dtype=torch.bfloat16)
    with FeatureStore({"x": x}).share() as fs:
        assert fs.kind("x") == "shared" and fs.dtype("x") == torch.bfloat16
        assert torch.equal(fs.gather("x", torch.tensor([4, 2])), x[[4, 2]])
        clone = pickle.loads(pickle.dumps(fs))
        assert clone.dtype("x") == torch.bfloat16 and torch.equal(clone.table("x"), x)


# -- bad input ------------------------------------------------------------------------------------

def poisoned_out(shape, dtype=np.float64):
    out = np.empty(shape, dtype)
    out.view(np.uint8)[...] = 0xA5
    return out


@pytest.fixture
def store():
    return FeatureStore({"t": np.arange(40.0).reshape(10, 4)})


@pytest.mark.parametrize("index,pattern", [
    (np.array([1, 2, 10]), r"index\[2\] = 10 is out of range for a table of 10 rows"),
    (np.array([0, -1, 3]), r"index\[1\] = -1 is negative"),
    (np.array([5, 2**40], np.int64), r"index\[1\] = 1099511627776 is out of range"),
    (np.array([3, 3, 3, -7], np.int32), r"index\[3\] = -7 is negative"),
])
def test_bad_indices_name_position_and_value_and_write_nothing(store, index, pattern):
    out = poisoned_out((index.size, 4))
    with pytest.raises(hauler.OutOfRange, match=pattern):
        store.gather("t", index, out=out)
    assert (out.view(np.uint8) == 0xA5).all()
    before = store.table("t").copy()
    with pytest.raises(hauler.OutOfRange, match=pattern):
        store.scatter("t", index, np.zeros((index.size, 4)))
    assert np.array_equal(store.table("t"), before)


@pytest.mark.parametrize("index", [np.array([1.0]), np.array([1], np.int16), np.array([1], np.uint64),
                                   torch.tensor([1.0]), torch.tensor([1], dtype=torch.int16), "abc",
                                   [1.5]])
def test_wrong_index_dtype(store, index):
    with pytest.raises(hauler.InvalidArgument, match="index must"):
        store.gather("t", index)


@pytest.mark.parametrize("out,pattern,exc", [
    (np.zeros((3, 5)), r"shape \(3, 5\), the gather needs \(3, 4\)", hauler.InvalidArgument),
    (np.zeros((4, 3)), r"shape \(4, 3\)", hauler.InvalidArgument),
    (np.zeros((3, 4), np.float32), "dtype float32", hauler.InvalidArgument),
    (np.zeros((4, 8))[:3, ::2], "not C-contiguous", hauler.InvalidArgument),
    (np.zeros((3, 4)).T.copy().T, "not C-contiguous", hauler.InvalidArgument),
    (torch.zeros(3, 4, dtype=torch.float64).t().contiguous().t(), "shape|not contiguous", hauler.InvalidArgument),
])
def test_bad_out(store, out, pattern, exc):
    with pytest.raises(exc, match=pattern):
        store.gather("t", [1, 2, 3], out=out)


def test_read_only_out_and_overlap(store):
    out = np.zeros((2, 4))
    out.flags.writeable = False
    with pytest.raises(hauler.ReadOnlyBuffer):
        store.gather("t", [1, 2], out=out)
    t = store.table("t")
    with pytest.raises(hauler.InvalidArgument, match="overlaps the table"):
        store.gather("t", [1, 2], out=t[5:7])


def test_missing_table_and_row_size_mismatch(store):
    with pytest.raises(KeyError, match=r"no table named 'nope'.*tables: 't'"):
        store.gather("nope", [0])
    with pytest.raises(hauler.InvalidArgument, match=r"src has shape \(1, 3\), the scatter needs \(1, 4\)"):
        store.scatter("t", [0], np.zeros((1, 3)))
    with pytest.raises(hauler.InvalidArgument, match="dtype"):
        store.scatter("t", [0], np.zeros((1, 4), np.float32))
    with pytest.raises(hauler.InvalidArgument, match="reduce must be"):
        store.scatter("t", [0], np.zeros((1, 4)), reduce="max")


def test_bad_tables():
    fs = FeatureStore()
    with pytest.raises(hauler.InvalidArgument, match="rows must be C-contiguous"):
        fs.add("f", np.zeros((4, 6))[:, ::2])
    with pytest.raises(hauler.InvalidArgument, match="row stride"):
        fs.add("r", np.zeros((4, 3))[::-1])
    with pytest.raises(hauler.InvalidArgument, match="Python objects"):
        fs.add("o", np.array([[None]], dtype=object))
    with pytest.raises(FileNotFoundError):
        fs.add("p", "/nonexistent/x.npy")
    with pytest.raises(hauler.InvalidArgument, match="numpy array, a CPU torch tensor or a .npy path"):
        fs.add("d", {"a": 1})
    assert len(fs) == 0


def test_pin_without_gpu_says_why(no_gpu):
    fs = FeatureStore({"t": np.zeros((4, 4))})
    with pytest.raises(hauler.NoDevice, match="pin\\(\\) needs a GPU: no (driver|device)"):
        fs.pin()
    with pytest.raises(hauler.NoDevice, match="needs a GPU"):
        fs.gather("t", [0], device="cuda")


def test_gather_threads_setting_is_in_the_table():
    from hauler import config
    assert config.get("HAULER_GATHER_THREADS") == 0 or "HAULER_GATHER_THREADS" in os.environ
    assert _core.gather_copy_kind(64, False) == "fixed" and _core.gather_copy_kind(4096, True) == "stream16"
