"""The GPU gather without a GPU: device outputs are FakeCudaArrays (`__cuda_array_interface__`
over host memory) and the GPU library is replaced by the host emulation of the kernel grid (the
same gather_index.cuh code the GPU runs). Without the emulation the calls fail with NoDevice. On a
real GPU (the `real_gpu` tests, run by scripts/gpu_check.sh) CuPy and torch CUDA arrays are the
outputs and sources, against numpy."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hauler
from hauler import _core
from hauler.gather import FeatureStore
from support import examples
from support.device import FakeCudaArray
from support.real_gpu import real_gpu  # noqa: F401 (a fixture)


def _gather_case(rng, rows, row_shape, dtype, toff, n, width):
    """A random table `toff` elements into its buffer, an index and the rows numpy gathers."""
    itemsize = np.dtype(dtype).itemsize
    nb = rows * int(np.prod(row_shape)) * itemsize
    raw = rng.integers(0, 256, nb + toff * itemsize + 8, dtype=np.uint8)
    table = raw[toff * itemsize:toff * itemsize + nb].view(dtype).reshape((rows,) + row_shape)
    idx = rng.integers(0, rows, n).astype(width)
    return table, idx, table[idx]


@settings(max_examples=examples(80), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 100), st.sampled_from([(1,), (3,), (8,), (33,), (64,), (300,)]),
       st.sampled_from([np.uint8, np.float16, np.float32, np.float64]), st.integers(0, 31), st.integers(0, 31),
       st.integers(0, 200), st.sampled_from([np.int32, np.int64]), st.integers(0, 2**32 - 1))
def test_emulated_gpu_gather_equals_numpy(gpu_emulation, rows, row_shape, dtype, toff, ooff, n, width, seed):
    rng = np.random.default_rng(seed)
    itemsize = np.dtype(dtype).itemsize
    table, idx, expect = _gather_case(rng, rows, row_shape, dtype, toff, n, width)
    fs = FeatureStore({"t": table}).pin()
    assert fs.pinned
    oraw = np.full(expect.nbytes + ooff * itemsize + 64, 0xA5, np.uint8)
    out = oraw[ooff * itemsize:ooff * itemsize + expect.nbytes].view(dtype).reshape(expect.shape)
    dev = FakeCudaArray(out)
    assert fs.gather("t", idx, out=dev, gpu_blocks=int(rng.integers(0, 3))) is dev
    assert out.tobytes() == expect.tobytes()
    assert (oraw[:ooff * itemsize] == 0xA5).all() and (oraw[ooff * itemsize + expect.nbytes:] == 0xA5).all()
    word, group = _core.gpu_gather_choice(table.__array_interface__["data"][0], table[0].nbytes,
                                          table.strides[0], out.__array_interface__["data"][0])
    assert word in (1, 2, 4, 8, 16) and 1 <= group <= 32
    fs.unpin()


def test_emulated_checks_before_launch(gpu_emulation):
    fs = FeatureStore({"t": np.arange(20.0).reshape(10, 2)})
    out = np.full((2, 2), -1.0)
    with pytest.raises(hauler.InvalidArgument, match="not pinned"):
        fs.gather("t", [1, 2], out=FakeCudaArray(out))
    fs.pin()
    try:  # a registration must not outlive the table (its pages would stay registered)
        with pytest.raises(hauler.OutOfRange, match=r"index\[1\] = 10 is out of range"):
            fs.gather("t", [1, 10], out=FakeCudaArray(out))
        assert (out == -1.0).all()
        with pytest.raises(hauler.ReadOnlyBuffer):
            fs.gather("t", [1, 2], out=FakeCudaArray(out, readonly=True))
        with pytest.raises(hauler.BufferTooSmall, match="too small for 3 rows"):
            fs.gather("t", [1, 2, 3], out=FakeCudaArray(out))
        # tables added after pin() are pinned too
        fs.add("u", np.ones((4, 2)))
        fs.gather("u", [3, 0], out=FakeCudaArray(out))
        assert (out == 1.0).all()
    finally:
        fs.unpin()


def test_dropped_pinned_store_gives_its_pages_back(gpu_emulation):
    table = np.arange(4096.0).reshape(512, 8)
    fs = FeatureStore({"t": table[:256]})  # half the pages: a lingering registration blocks the whole
    fs.pin()
    del fs  # dropped without unpin(): its registration must go with it
    import gc
    gc.collect()
    again = FeatureStore({"t": table})
    again.pin()  # on the same pages: refused while the first registration lingered
    try:
        out = np.full((2, 8), -1.0)
        again.gather("t", [5, 7], out=FakeCudaArray(out))
        assert np.array_equal(out, table[[5, 7]])
    finally:
        again.unpin()


def test_device_gather_without_a_gpu_is_no_device(no_gpu):
    fs = FeatureStore({"t": np.zeros((4, 2))})
    with pytest.raises(hauler.NoDevice, match="needs a GPU"):
        fs.gather("t", [0], out=FakeCudaArray(np.zeros((1, 2))))
    with pytest.raises(hauler.NoDevice):
        _core.host_register(fs.table("t").__array_interface__["data"][0], 64, True)


def _scatter_case(rng, reduce, rows, row_shape, dtype, toff, n, kind, width):
    """A table of small integers `toff` elements into a poisoned buffer, an index of `kind`, the
    source rows and the table numpy says the scatter must leave."""
    itemsize = np.dtype(dtype).itemsize
    nb = rows * int(np.prod(row_shape)) * itemsize
    raw = np.full(nb + toff * itemsize + 64, 0xA5, np.uint8)
    table = raw[toff * itemsize:toff * itemsize + nb].view(dtype).reshape((rows,) + row_shape)
    table[...] = rng.integers(-50, 50, table.shape).astype(dtype)
    idx = rng.integers(0, rows, n).astype(width)
    if kind == "dups" and n:
        idx[: n // 2] = idx[-1]
    elif kind == "sorted":
        idx.sort()
    src = rng.integers(-50, 50, (n,) + row_shape).astype(dtype)
    want = table.copy()
    if reduce == "add":
        np.add.at(want, idx, src)
    else:
        for i, r in enumerate(idx):
            want[r] = src[i]
    return raw, table, idx, src, want


# -- the GPU scatter (src rows on the device) ------------------------------------------------------

@settings(max_examples=examples(80), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["assign", "add"]), st.integers(1, 100), st.sampled_from([(1,), (3,), (8,), (33,), (300,)]),
       st.sampled_from([np.uint8, np.float16, np.int32, np.uint32, np.int64, np.float32, np.float64]),
       st.integers(0, 31), st.integers(0, 31), st.integers(0, 200), st.sampled_from(["random", "dups", "sorted"]),
       st.sampled_from([np.int32, np.int64]), st.integers(0, 2**32 - 1))
def test_emulated_gpu_scatter_equals_numpy(gpu_emulation, reduce, rows, row_shape, dtype, toff, soff, n, kind, width,
                                           seed):
    """The device path against numpy: assign = a loop in index order (last position wins, also on
    the GPU: duplicates are resolved on the host); add = numpy.add.at. Floats hold small integers,
    so sums are exact in any order (the GPU's atomics have none); 8/16-bit adds are refused."""
    rng = np.random.default_rng(seed)
    itemsize = np.dtype(dtype).itemsize
    nb = rows * int(np.prod(row_shape)) * itemsize
    raw, table, idx, rows_src, want = _scatter_case(rng, reduce, rows, row_shape, dtype, toff, n, kind, width)
    sraw = np.zeros(n * table[0].nbytes + soff * itemsize + 64, np.uint8)
    src = sraw[soff * itemsize:soff * itemsize + n * table[0].nbytes].view(dtype).reshape((n,) + row_shape)
    src[...] = rows_src
    raw_before = raw.copy()
    fs = FeatureStore({"t": table}).pin()
    if reduce == "add" and itemsize < 4:
        with pytest.raises(hauler.InvalidArgument, match="add"):
            fs.scatter("t", idx, FakeCudaArray(src), reduce="add")
        assert np.array_equal(raw, raw_before)
        fs.unpin()  # a registration must not outlive its table: the pages would stay registered
        return
    fs.scatter("t", idx, FakeCudaArray(src), reduce=reduce, gpu_blocks=int(rng.integers(0, 3)))
    assert table.tobytes() == want.tobytes()
    lo, hi = toff * itemsize, toff * itemsize + nb
    assert (raw[:lo] == 0xA5).all() and (raw[hi:] == 0xA5).all()       # nothing around the table written
    fs.unpin()


def test_emulated_scatter_checks_before_launch(gpu_emulation, tmp_path):
    table = np.arange(20.0).reshape(10, 2)
    before = table.copy()
    fs = FeatureStore({"t": table})
    src = FakeCudaArray(np.ones((2, 2)))
    with pytest.raises(hauler.InvalidArgument, match="not pinned"):
        fs.scatter("t", [1, 2], src)
    fs.pin()
    try:
        with pytest.raises(hauler.OutOfRange, match=r"index\[1\] = 10 is out of range"):
            fs.scatter("t", [1, 10], src)
        with pytest.raises(hauler.InvalidArgument, match="shape"):
            fs.scatter("t", [1, 2, 3], src)
        with pytest.raises(hauler.InvalidArgument, match="dtype"):
            fs.scatter("t", [1, 2], FakeCudaArray(np.ones((2, 2), np.float32)))
        fs.add("h", np.zeros((4, 2), np.int16))
        with pytest.raises(hauler.InvalidArgument, match="no atomic add"):
            fs.scatter("h", [0, 0], FakeCudaArray(np.ones((2, 2), np.int16)), reduce="add")
        assert np.array_equal(table, before) and not fs.table("h").any()
        ro = np.zeros((4, 2))
        ro.flags.writeable = False
        fs.add("ro", ro)
        with pytest.raises(hauler.ReadOnlyBuffer):
            fs.scatter("ro", [0], FakeCudaArray(np.ones((1, 2))))
        fs.scatter("t", [], FakeCudaArray(np.ones((0, 2))))                  # nothing to do
        assert np.array_equal(table, before)
        np.save(tmp_path / "f.npy", np.zeros((4, 2)))
        fs.add("f", str(tmp_path / "f.npy"), backend="file", writable=True)
        with pytest.raises(hauler.InvalidArgument, match="NVMe table .* move the rows through host memory"):
            fs.scatter("f", [0], FakeCudaArray(np.ones((1, 2))))
        assert not np.load(tmp_path / "f.npy").any()
    finally:
        fs.unpin()


def test_device_scatter_without_a_gpu_is_no_device(no_gpu):
    fs = FeatureStore({"t": np.zeros((4, 2))})
    with pytest.raises(hauler.NoDevice, match="needs a GPU"):
        fs.scatter("t", [0], FakeCudaArray(np.ones((1, 2))))


# -- a real GPU, where there is one (scripts/gpu_check.sh); skipped without a GPU -------------------

def _offset_rows(g, nbytes, off, dtype, shape, fill=0xA5, content=None):
    """A device array of `shape` starting `off` bytes into a poisoned device buffer (the
    misaligned case when off is not a multiple of 16), and that buffer."""
    raw = g.full(nbytes + off + 64, fill)
    if content is not None:
        raw[off:off + nbytes] = g.bytes(np.ascontiguousarray(content).view(np.uint8))
    return g.view(raw[off:off + nbytes], dtype, shape), raw


@settings(max_examples=examples(60), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 3000), st.sampled_from([(1,), (3,), (8,), (33,), (64,), (300,), (1024,)]),
       st.sampled_from([np.uint8, np.float16, np.float32, np.float64]), st.integers(0, 31), st.integers(0, 31),
       st.integers(0, 2000), st.sampled_from([np.int32, np.int64]), st.integers(0, 2**32 - 1))
def test_real_gpu_gather_equals_numpy(real_gpu, rows, row_shape, dtype, toff, ooff, n, width, seed):
    """Every row size and alignment of table and output, straight from pinned host memory."""
    g = real_gpu
    rng = np.random.default_rng(seed)
    itemsize = np.dtype(dtype).itemsize
    table, idx, expect = _gather_case(rng, rows, row_shape, dtype, toff, n, width)
    fs = FeatureStore({"t": table}).pin()
    try:
        lo = ooff * itemsize
        out, oraw = _offset_rows(g, expect.nbytes, lo, dtype, expect.shape)
        assert fs.gather("t", idx, out=out, gpu_blocks=int(rng.integers(0, 3))) is out
        got = g.host(oraw)
        assert got[lo:lo + expect.nbytes].tobytes() == expect.tobytes()
        assert (got[:lo] == 0xA5).all() and (got[lo + expect.nbytes:] == 0xA5).all()
    finally:
        fs.unpin()


@settings(max_examples=examples(60), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["assign", "add"]), st.integers(1, 500), st.sampled_from([(1,), (3,), (8,), (33,), (300,)]),
       st.sampled_from([np.uint8, np.float16, np.int32, np.uint32, np.int64, np.float32, np.float64]),
       st.integers(0, 31), st.integers(0, 31), st.integers(0, 2000), st.sampled_from(["random", "dups", "sorted"]),
       st.sampled_from([np.int32, np.int64]), st.integers(0, 2**32 - 1))
def test_real_gpu_scatter_equals_numpy(real_gpu, reduce, rows, row_shape, dtype, toff, soff, n, kind, width, seed):
    """Device rows into a pinned host table: assign (last position wins), add (atomics over the
    link into host memory; small integers, so float sums are exact in any order)."""
    g = real_gpu
    rng = np.random.default_rng(seed)
    itemsize = np.dtype(dtype).itemsize
    nb = rows * int(np.prod(row_shape)) * itemsize
    raw, table, idx, src, want = _scatter_case(rng, reduce, rows, row_shape, dtype, toff, n, kind, width)
    d_src, _ = _offset_rows(g, src.nbytes, soff * itemsize, dtype, src.shape, content=src)
    raw_before = raw.copy()
    fs = FeatureStore({"t": table}).pin()
    try:
        if reduce == "add" and itemsize < 4:
            with pytest.raises(hauler.InvalidArgument, match="add"):
                fs.scatter("t", idx, d_src, reduce="add")
            assert np.array_equal(raw, raw_before)
            return
        fs.scatter("t", idx, d_src, reduce=reduce, gpu_blocks=int(rng.integers(0, 3)))
        assert table.tobytes() == want.tobytes()
        lo, hi = toff * itemsize, toff * itemsize + nb
        assert (raw[:lo] == 0xA5).all() and (raw[hi:] == 0xA5).all()
    finally:
        fs.unpin()


def test_real_gpu_gather_to_a_new_device_tensor(real_gpu):
    """gather(device="cuda"): the zero-copy kernel from a pinned table, the host gather and a copy
    from an unpinned one (with its warning); both equal to numpy."""
    if real_gpu.name != "torch":
        pytest.skip("device= makes torch tensors")
    torch = real_gpu.mod
    table = np.random.default_rng(3).standard_normal((5000, 37)).astype(np.float32)
    idx = np.random.default_rng(4).integers(0, 5000, (70, 3))
    fs = FeatureStore({"t": table})
    with pytest.warns(RuntimeWarning, match="not pinned"):
        host_path = fs.gather("t", idx, device="cuda")
    fs.pin()
    try:
        zero_copy = fs.gather("t", torch.from_numpy(idx), device="cuda")
        torch.cuda.synchronize()
        for got in (host_path, zero_copy):
            assert got.is_cuda and tuple(got.shape) == (70, 3, 37)
            assert got.cpu().numpy().tobytes() == table[idx].tobytes()
    finally:
        fs.unpin()


def test_real_gpu_gather_into_a_torch_tensor_runs_on_the_current_stream(real_gpu):
    """gather(out=<torch tensor>) queues the kernel on torch's current stream, after the work
    already there: a fill queued behind a long kernel lands first, the rows after it."""
    if real_gpu.name != "torch":
        pytest.skip("torch's current stream applies to torch tensors")
    torch = real_gpu.mod
    table = np.random.default_rng(5).standard_normal((3000, 24)).astype(np.float32)
    idx = np.random.default_rng(6).integers(0, 3000, 500)
    fs = FeatureStore({"t": table}).pin()
    try:
        out = torch.zeros((500, 24), dtype=torch.float32, device="cuda")
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            torch.cuda._sleep(50_000_000)  # keeps the side stream busy well past a launch elsewhere
            out.fill_(-1.0)
            fs.gather("t", idx, out=out)  # on the legacy default stream the fill would win
        torch.cuda.synchronize()
        assert out.cpu().numpy().tobytes() == table[idx].tobytes()
    finally:
        fs.unpin()
