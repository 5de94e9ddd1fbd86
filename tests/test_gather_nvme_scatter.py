"""Scatter into NVMe file tables (backend="file", writable=True) against numpy: assign (last
position wins) and add (numpy.add.at), random/sorted/duplicate/empty indices, rows that straddle
4 KiB blocks (12 B, 100 B, ...), the bytes on disk read back with numpy.fromfile; only the touched
blocks are read and written (one request each); bad input raises before any I/O; a write that fails
for real (RLIMIT_FSIZE: EFBIG; a full file system: ENOSPC) raises and leaves every row outside the
request as it was."""
from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hauler
from hauler.errors import HaulerIOError
from hauler.gather import FeatureStore
from support import examples
from support.tables import BLOCK, expected_blocks, make_index, write_table
from test_io_faults import small_fs  # noqa: F401  (the loop-mounted 8 MiB ext4 file system, root only)

ADD_DTYPES = [np.uint8, np.int16, np.int32, np.int64, np.float32, np.float64]
ASSIGN_ONLY = [np.float16, np.complex128]


@pytest.fixture(scope="module")
def tdir():
    with tempfile.TemporaryDirectory(dir=os.environ.get("HAULER_TEST_NVME_DIR") or None) as d:
        yield d


def oracle(table, idx, src, reduce):
    want = table.copy()
    rows = src.reshape((-1,) + table.shape[1:])
    if reduce == "add":
        np.add.at(want, idx.ravel(), rows)
    else:
        for i, r in enumerate(idx.ravel()):  # a loop in index order: the last position wins
            want[r] = rows[i]
    return want


@st.composite
def cases(draw):
    reduce = draw(st.sampled_from(["assign", "add"]))
    dtype = np.dtype(draw(st.sampled_from(ADD_DTYPES + (ASSIGN_ONLY if reduce == "assign" else []))))
    rows = draw(st.integers(1, 300))
    # 12 B and 100 B rows of float32 straddle block edges; (1500,) rows span blocks
    row_shape = draw(st.sampled_from([(), (3,), (25,), (7,), (2, 5), (129,), (1500,)]))
    n = draw(st.one_of(st.just(0), st.integers(1, 200)))
    kind = draw(st.sampled_from(["random", "sorted", "dups", "2d"]))
    width = draw(st.sampled_from([np.int32, np.int64]))
    raw = draw(st.booleans())
    pad = draw(st.sampled_from([0, 1, 13, 4095])) if raw else 0
    direct = draw(st.sampled_from([None, False]))
    seed = draw(st.integers(0, 2**32 - 1))
    return reduce, dtype, rows, row_shape, n, kind, width, raw, pad, direct, seed


@settings(max_examples=examples(60), deadline=None)
@given(cases())
def test_scatter_matches_numpy(tdir, case):
    reduce, dtype, rows, row_shape, n, kind, width, raw, pad, direct, seed = case
    rng = np.random.default_rng(seed)
    nbytes = rows * int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    if dtype.kind == "f":  # finite values: add is compared bit for bit
        table = rng.standard_normal(nbytes // dtype.itemsize).astype(dtype).reshape((rows,) + row_shape)
    else:
        table = rng.integers(0, 256, nbytes, dtype=np.uint8).view(dtype).reshape((rows,) + row_shape)
    idx = make_index(rng, rows, n, kind, width)
    src_bytes = idx.size * (nbytes // rows)
    if dtype.kind == "f":
        src = rng.standard_normal(src_bytes // dtype.itemsize).astype(dtype)
    else:
        src = rng.integers(0, 256, src_bytes, dtype=np.uint8).view(dtype)
    src = src.reshape(idx.shape + row_shape)
    path = write_table(tdir, table, raw, pad)
    before = np.fromfile(path, np.uint8)
    fs = FeatureStore()
    kw = {"dtype": dtype, "shape": (-1,) + row_shape, "offset": pad} if raw else {}
    fs.add("t", path, backend="file", writable=True, direct=direct, **kw)
    t = fs._get("t")
    data_offset = t.offset
    try:
        fs.scatter("t", idx, src, reduce=reduce)
        want = oracle(table, idx, src, reduce)
        after = np.fromfile(path, np.uint8)
        expect = before.copy()
        expect[data_offset:data_offset + nbytes] = want.reshape(-1).view(np.uint8)
        assert after.size == before.size
        assert after.tobytes() == expect.tobytes()
        blocks = expected_blocks(data_offset, nbytes // rows, idx)
        assert t.blocks_read == t.blocks_written == len(blocks)
        assert t.bytes_read == t.bytes_written == sum(min(BLOCK, before.size - b * BLOCK) for b in blocks)
        assert t.requests == (2 if blocks else 0)  # one read, one write
        assert t.extents_read == t.extents_written == sum(1 for b in blocks if b - 1 not in blocks)
        # the table reads back what was written, through the engine too
        everything = np.arange(rows)
        assert fs.gather("t", everything).tobytes() == want.tobytes()
    finally:
        fs.close()


def test_torch_src_and_pickle_keep_writable(tdir):
    table = np.zeros((50, 3), np.float32)                # 12-byte rows: some straddle a block edge
    path = write_table(tdir, table, raw=False)
    fs = FeatureStore()
    fs.add("t", path, backend="file", writable=True)
    fs2 = pickle.loads(pickle.dumps(fs))
    fs2.scatter("t", torch.tensor([3, 3, 49]), torch.ones(3, 3), reduce="add")
    fs2.close()
    got = np.load(path)
    assert (got[3] == 2).all() and (got[49] == 1).all() and got.sum() == 9
    assert np.array_equal(fs.gather("t", [3, 49, 0]), got[[3, 49, 0]])
    fs.close()


def test_bad_input_before_any_io(tdir):
    table = np.arange(400, dtype=np.float32).reshape(100, 4)
    path = write_table(tdir, table, raw=False)
    before = np.fromfile(path, np.uint8)
    fs = FeatureStore()
    fs.add("ro", path, backend="file")
    fs.add("t", path, backend="file", writable=True)
    t = fs._get("t")
    ones = np.ones((3, 4), np.float32)
    with pytest.raises(hauler.ReadOnlyBuffer, match=r"'ro' is an NVMe table opened read-only.*writable=True"):
        fs.scatter("ro", [1, 2, 3], ones)
    for idx, pattern in [([1, 2, 100], r"index\[2\] = 100 is out of range for a table of 100 rows"),
                         ([0, -1, 3], r"index\[1\] = -1 is negative")]:
        for reduce in ("assign", "add"):
            with pytest.raises(hauler.OutOfRange, match=pattern):
                fs.scatter("t", np.array(idx), ones, reduce=reduce)
    with pytest.raises(hauler.InvalidArgument, match="shape"):
        fs.scatter("t", [1, 2], ones)
    with pytest.raises(hauler.InvalidArgument, match="dtype"):
        fs.scatter("t", [1, 2, 3], ones.astype(np.float64))
    with pytest.raises(hauler.InvalidArgument, match="reduce"):
        fs.scatter("t", [1, 2, 3], ones, reduce="max")
    with pytest.raises(hauler.InvalidArgument, match="int32 or int64"):
        fs.scatter("t", np.array([1.0, 2.0, 3.0]), ones)
    assert t.requests == 0 and t.bytes_read == 0 and t.bytes_written == 0
    fs.add("h", write_table(tdir, np.zeros((10, 4), np.float16), raw=False), backend="file", writable=True)
    h = fs._get("h")
    with pytest.raises(hauler.InvalidArgument, match="reduce='add' supports float32/64"):
        fs.scatter("h", [1], np.ones((1, 4), np.float16), reduce="add")
    assert h.requests == 0
    with pytest.raises(hauler.InvalidArgument, match="shared= does not apply"):
        fs.add("s", path, backend="file", shared=True)
    assert np.array_equal(np.fromfile(path, np.uint8), before)
    fs.close()


@pytest.mark.parametrize("direct", [None, False])
def test_failed_write_keeps_other_rows(tmp_path, direct):
    """RLIMIT_FSIZE below the end of the table (in a subprocess; Python ignores SIGXFSZ): the part
    of the write-back past the limit fails with EFBIG. The scatter raises, and every row the
    request did not name still holds its bytes, including rows sharing a block with written ones."""
    rb, rows = 100, 30000                                # 3 MB of 100-byte rows; the limit at 1 MiB
    table = np.random.default_rng(7).integers(0, 256, (rows, rb), dtype=np.uint8)
    path = str(tmp_path / "t.bin")
    table.tofile(path)
    idx = np.array([5, 10000, 10485, 10486, 20000, 29999, 5])   # rows 10485/6 straddle the 1 MiB edge
    code = textwrap.dedent(f"""
        import resource, numpy as np
        from hauler.gather import FeatureStore
        from hauler.errors import HaulerIOError
        fs = FeatureStore()
        fs.add("t", {path!r}, backend="file", writable=True, dtype=np.uint8, shape=(-1, {rb}), direct={direct!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            fs.scatter("t", np.array({idx.tolist()!r}), np.zeros(({idx.size}, {rb}), np.uint8))
        except HaulerIOError as e:
            assert "EFBIG" in str(e), e
            print("EFBIG")
        else:
            raise SystemExit("no error")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["EFBIG"]
    after = np.fromfile(path, np.uint8).reshape(rows, rb)
    outside = np.setdiff1d(np.arange(rows), idx)
    assert np.array_equal(after[outside], table[outside])
    assert np.array_equal(after[idx], table[idx])         # all or nothing: the rows written are restored


@pytest.mark.parametrize("direct", [None, False])
def test_disk_full_keeps_other_rows(small_fs, direct):
    """A sparse 32 MiB table on a full 8 MiB file system: rows in its written head overwrite in
    place, rows in its holes need new blocks and fail with ENOSPC. The scatter raises, and every
    row the request did not name (in the written head) keeps its bytes."""
    rb, rows, head_rows = 100, (32 << 20) // 100, 4096
    path = small_fs / f"sparse-{direct}.bin"
    head = np.random.default_rng(8).integers(0, 256, (head_rows, rb), dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(head.tobytes())
        f.truncate(rows * rb)
    filler = small_fs / f"filler-{direct}"
    # take every free block: writeback returns delayed-allocation reservations, so fill again
    # after each fsync until not one more 4 KiB block fits
    wrote = True
    while wrote:
        wrote = False
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\xff" * 4096)
                wrote = True
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        finally:
            try:
                os.fsync(fd)
            except OSError:
                pass
            os.close(fd)
    fs = FeatureStore()
    fs.add("t", str(path), backend="file", writable=True, dtype=np.uint8, shape=(rows, rb), direct=direct)
    idx = np.array([3, 2000, rows // 2, rows - 1])            # two in the written head, two in holes
    try:
        with pytest.raises(HaulerIOError, match="ENOSPC"):
            fs.scatter("t", idx, np.full((idx.size, rb), 7, np.uint8))
        after = np.fromfile(path, np.uint8, count=head_rows * rb).reshape(head_rows, rb)
        outside = np.setdiff1d(np.arange(head_rows), idx)
        assert np.array_equal(after[outside], head[outside])
        assert np.array_equal(after[idx[:2]], head[idx[:2]])   # written in place, then restored
    finally:
        fs.close()
        filler.unlink()
        path.unlink()


ADDER = """
import sys, numpy as np
from hauler.gather import FeatureStore
path, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fs = FeatureStore()
fs.add("t", path, backend="file", writable="shared", dtype=np.int32, shape=(-1, 3))
rows = np.arange(first, 4096, 2)          # every other row: each block holds both processes' rows
one = np.ones((rows.size, 3), np.int32)
for _ in range(n):
    fs.scatter("t", rows, one, reduce="add")
fs.close()
"""


def test_concurrent_scatter_adds_from_processes_are_serialized(tmp_path):
    """Two processes adding to disjoint rows that share every 4 KiB block (writable='shared'): the
    byte-range lock makes each read-modify-write wait for the other's, so no update is lost."""
    path = tmp_path / "t.bin"
    np.zeros((4096, 3), np.int32).tofile(path)
    n = 150
    procs = [subprocess.Popen([sys.executable, "-c", ADDER, str(path), str(first), str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for first in (0, 1)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stdout.read()
    assert (np.fromfile(path, np.int32) == n).all()


def test_second_writable_open_refused_naming_the_holder(tmp_path):
    from hauler.tensorstore import StoreLocked
    path = tmp_path / "t.bin"
    np.zeros((64, 4), np.float32).tofile(path)
    fs = FeatureStore()
    fs.add("t", str(path), backend="file", writable=True, dtype=np.float32, shape=(-1, 4))
    code = textwrap.dedent("""
        import sys, numpy as np
        from hauler.gather import FeatureStore
        FeatureStore().add("t", sys.argv[1], backend="file", writable=sys.argv[2] == "1" or "shared",
                           dtype=np.float32, shape=(-1, 4))
    """)
    try:
        for how in ("1", "shared"):
            r = subprocess.run([sys.executable, "-c", code, str(path), how], capture_output=True, text=True,
                               timeout=120)
            assert r.returncode != 0 and "StoreLocked" in r.stderr and f"pid {os.getpid()}" in r.stderr, r.stderr
        with pytest.raises(StoreLocked, match=r"\(this process\)"):
            FeatureStore().add("u", str(path), backend="file", writable=True, dtype=np.float32, shape=(-1, 4))
        ro = FeatureStore()
        ro.add("r", str(path), backend="file", dtype=np.float32, shape=(-1, 4))   # readers take no lock
        ro.close()
        with pytest.raises(hauler.errors.InvalidArgument, match="writable must be"):
            FeatureStore().add("v", str(path), backend="file", writable="yes", dtype=np.float32, shape=(-1, 4))
    finally:
        fs.close()
    fs2 = FeatureStore()
    fs2.add("t", str(path), backend="file", writable=True, dtype=np.float32, shape=(-1, 4))   # free again
    fs2.close()
