"""hauler.gather's feature cache (file tables added with cache_bytes=): every gather equals the
file's rows whatever hits and misses (random op sequences of gathers, prefetches and scatters
against a numpy model of the table and the file's bytes, poisoned outputs), what each policy
keeps, the victim buffer and prefetch counters, write-through scatters, DataLoader worker
processes and threads, bad arguments."""
from __future__ import annotations

import os
import pickle
import tempfile
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import hauler
from hauler._gather_cache import PREFETCH_DEPTH
from hauler.gather import FeatureStore, GatherCollate
from support import examples
from support.buffers import POISONS
from support.tables import write_table

@pytest.fixture(scope="module")
def tdir():
    with tempfile.TemporaryDirectory(dir=os.environ.get("HAULER_TEST_NVME_DIR") or None) as d:
        yield d


def table_file(tdir, rows, row_shape=(7,), dtype=np.float32, seed=0, raw=False):
    rng = np.random.default_rng(seed)
    nbytes = rows * int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    table = rng.integers(0, 256, nbytes, dtype=np.uint8).view(dtype).reshape((rows,) + tuple(row_shape))
    return table, write_table(tdir, table, raw)


def add_cached(fs, path, table, **kw):
    kw.setdefault("cache_bytes", 4 * table[0].nbytes)
    if kw.get("policy") in ("static", "hybrid") and "scores" not in kw:
        kw["scores"] = np.arange(table.shape[0], dtype=np.float64)
    fs.add("t", path, backend="file", **kw)


def distinct(idx):
    return np.unique(np.asarray(idx)).size


def check_gather(fs, table, idx):
    """gather equals numpy indexing of the table, into fresh and poisoned outputs."""
    want = table[idx.numpy() if isinstance(idx, torch.Tensor) else idx]
    got = fs.gather("t", idx)
    assert isinstance(got, torch.Tensor) == isinstance(idx, torch.Tensor)
    assert np.asarray(got).tobytes() == want.tobytes()
    for fill in POISONS:
        out = np.full(want.nbytes, fill, np.uint8).view(table.dtype).reshape(want.shape)
        assert fs.gather("t", idx, out=out) is out
        assert out.tobytes() == want.tobytes()


@st.composite
def op_sequences(draw):
    rows = draw(st.integers(1, 200))
    row_shape = draw(st.sampled_from([(), (3,), (129,), (1024,), (1500,)]))
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.int64]))
    slots = draw(st.integers(1, rows + 2))
    victim = draw(st.sampled_from([0, 1, 3, 50]))
    policy = draw(st.sampled_from(["lru", "static", "hybrid"]))
    writable = draw(st.booleans())
    kinds = ["gather", "prefetch"] + (["scatter"] if writable else [])
    ops = draw(st.lists(st.tuples(st.sampled_from(kinds), st.integers(0, 60), st.integers(0, 2**32 - 1)),
                        min_size=1, max_size=10))
    weights = draw(st.sampled_from([(1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.2, 3.0)]))
    half_life = draw(st.sampled_from([1, 4.5, 64]))
    return rows, row_shape, dtype, slots, victim, policy, writable, ops, weights, half_life, draw(st.integers(0, 99))


@settings(max_examples=examples(60), deadline=None)
@given(op_sequences())
def test_every_gather_equals_the_file(tdir, case):
    rows, row_shape, dtype, slots, victim, policy, writable, ops, weights, half_life, seed = case
    table, path = table_file(tdir, rows, row_shape, dtype, seed, raw=seed % 2 == 0)
    model = table.copy()
    rb = table[0].nbytes
    kw = dict(cache_bytes=slots * rb + seed % rb, policy=policy, victim_bytes=victim * rb, writable=writable)
    if policy != "lru":
        kw["scores"] = np.random.default_rng(seed).pareto(1.5, rows)
    if policy == "hybrid":
        kw.update(weights=weights, half_life=half_life)
    fs = FeatureStore()
    if seed % 2 == 0:
        fs.add("t", path, backend="file", dtype=dtype, shape=(-1,) + row_shape, **kw)
    else:
        fs.add("t", path, backend="file", **kw)
    try:
        asked = 0
        for kind, n, s in ops:
            rng = np.random.default_rng(s)
            idx = rng.integers(0, rows, n)
            if s % 3 == 0:
                idx = (idx % max(1, rows // 4)).astype(np.int32)   # a hot corner: hits and evictions
            if kind == "gather":
                check_gather(fs, model, idx)
                asked += 3 * distinct(idx) if n else 0
            elif kind == "prefetch":
                fs.prefetch("t", idx)
            else:
                src = rng.integers(0, 256, n * rb, dtype=np.uint8).view(dtype).reshape((n,) + row_shape)
                reduce = "add" if s % 2 and dtype == np.int64 else "assign"   # integers: no NaN payloads
                fs.scatter("t", idx, src, reduce=reduce)
                if reduce == "add":
                    np.add.at(model, idx, src)
                else:
                    model[idx] = src
        st_ = fs.stats("t")
        assert st_["hits"] + st_["misses"] + st_["victim_hits"] + st_["prefetch_used"] == asked
        assert st_["cached_rows"] <= min(slots, rows)
        assert st_["prefetch_wasted"] <= st_["prefetch_rows"]
        check_gather(fs, model, np.arange(rows))
    finally:
        fs.close()
    with open(path, "rb") as f:
        f.seek(os.path.getsize(path) - model.nbytes)
        assert f.read() == model.tobytes(), "write-through: the file holds every scatter"


def test_repeat_gather_reads_nothing(tdir):
    table, path = table_file(tdir, 1000, (100,))
    fs = FeatureStore()
    add_cached(fs, path, table, cache_bytes=300 * table[0].nbytes)
    idx = np.random.default_rng(1).integers(0, 1000, 200)
    check_gather(fs, table, idx)
    first = fs.stats("t", reset=True)
    assert first["misses"] == distinct(idx) and first["hits"] == 2 * distinct(idx) and first["bytes_read"] > 0
    check_gather(fs, table, torch.from_numpy(idx[::-1].copy()).reshape(-1, 4))
    again = fs.stats("t")
    assert again["bytes_read"] == 0 and again["misses"] == 0 and again["hits"] == 3 * distinct(idx)
    fs.close()


def test_lru_evicts_the_least_recent(tdir):
    table, path = table_file(tdir, 50)
    fs = FeatureStore()
    add_cached(fs, path, table, cache_bytes=3 * table[0].nbytes, policy="lru")
    for idx in ([0, 1, 2], [0, 2], [3]):   # row 1 is the least recently used
        fs.gather("t", idx)
    fs.stats("t", reset=True)
    check_gather(fs, table, [0, 2, 3])
    s = fs.stats("t", reset=True)
    assert s["misses"] == 0 and s["bytes_read"] == 0
    fs.gather("t", [1])
    assert fs.stats("t")["misses"] == 1
    fs.close()


def test_static_keeps_the_best_scores(tdir):
    table, path = table_file(tdir, 100)
    scores = np.zeros(100)
    scores[[10, 20, 30]] = [5, 6, 7]
    fs = FeatureStore()
    add_cached(fs, path, table, cache_bytes=3 * table[0].nbytes, policy="static", scores=torch.from_numpy(scores))
    fs.gather("t", [10, 20, 30])
    for k in range(5):
        check_gather(fs, table, np.arange(40 + 10 * k, 50 + 10 * k))   # low scores: never admitted over them
    fs.stats("t", reset=True)
    fs.gather("t", [30, 10, 20])
    s = fs.stats("t")
    assert s["hits"] == 3 and s["bytes_read"] == 0 and s["evictions"] == 0
    fs.close()


def test_hybrid_keeps_rows_the_batches_show_hot(tdir):
    """Row 5 has the lowest score but every other gather asks for it: hybrid keeps it, static
    evicts it whenever a gather does not ask for it."""
    table, path = table_file(tdir, 200)
    scores = np.ones(200)
    scores[5] = 0.0
    misses = {}
    for policy in ("static", "hybrid"):
        fs = FeatureStore()
        kw = {"weights": (1.0, 4.0), "half_life": 8} if policy == "hybrid" else {}
        add_cached(fs, path, table, cache_bytes=4 * table[0].nbytes, policy=policy, scores=scores, **kw)
        for k in range(30):
            check_gather(fs, table, ([5] if k % 2 == 0 else []) + [50 + k, 120 + k])
        fs.stats("t", reset=True)
        fs.gather("t", [5])
        misses[policy] = fs.stats("t")["misses"]
        fs.close()
    assert misses == {"static": 1, "hybrid": 0}


def test_victim_buffer_serves_evicted_rows(tdir):
    table, path = table_file(tdir, 64, (300,))
    fs = FeatureStore()
    add_cached(fs, path, table, cache_bytes=2 * table[0].nbytes, victim_bytes=3 * table[0].nbytes)
    fs.gather("t", [0, 1])
    fs.gather("t", [2, 3])          # 0 and 1 evicted into the victim buffer
    fs.stats("t", reset=True)
    check_gather(fs, table, [1, 0])
    s = fs.stats("t", reset=True)
    assert s["victim_hits"] == 2 and s["bytes_read"] == 0 and s["misses"] == 0
    fs.gather("t", [10, 11])
    fs.gather("t", [12, 13])        # the ring (3 rows) has overwritten the oldest
    fs.stats("t", reset=True)
    fs.gather("t", [2, 3])
    assert fs.stats("t")["misses"] >= 1
    fs.close()


def test_prefetch_used_and_wasted(tdir):
    table, path = table_file(tdir, 500, (1024,), np.uint8)
    rb = table[0].nbytes
    fs = FeatureStore()
    add_cached(fs, path, table, cache_bytes=8 * rb, victim_bytes=4 * rb)
    fs.prefetch("t", np.array([5, 6, 6, 300], np.int32))
    s = fs.stats("t", reset=True)
    assert s["prefetch_rows"] == 3 and s["bytes_read"] == s["bytes_read_prefetch"] >= 3 * rb
    check_gather(fs, table, [300, 5, 6, 8])
    s = fs.stats("t", reset=True)
    assert s["prefetch_used"] == 3 and s["misses"] == 1 and s["prefetch_wasted"] == 0
    assert s["bytes_read"] == s["blocks_read"] * 4096 and s["blocks_read"] == 1
    fs.prefetch("t", [100, 101])
    fs.gather("t", [100])
    s = fs.stats("t")
    assert s["prefetch_used"] == 1 and s["prefetch_wasted"] == 0 and s["pending_prefetches"] == 1
    for _ in range(PREFETCH_DEPTH - 1):   # the prefetch waits that many gathers for row 101
        fs.gather("t", [100])
    s = fs.stats("t", reset=True)
    assert s["prefetch_used"] == 1 and s["prefetch_wasted"] == 1 and s["pending_prefetches"] == 0
    for k in range(6):   # more announcements than PREFETCH_DEPTH with no gather: the oldest are dropped
        fs.prefetch("t", [200 + k])
    assert fs.stats("t")["prefetch_wasted"] == 2
    fs.gather("t", [0, 1, 2, 3, 4, 7, 8, 9, 10])   # evicts rows into the victim buffer
    fs.stats("t", reset=True)
    fs.prefetch("t", [5, 6])                      # evicted: loaded from the victim buffer, no read
    s = fs.stats("t", reset=True)
    assert s["bytes_read"] == 0 and s["prefetch_rows"] == 2
    check_gather(fs, table, [5, 6])
    assert fs.stats("t")["prefetch_used"] == 2
    fs.close()


def test_prefetch_checks_the_index_first(tdir):
    table, path = table_file(tdir, 50)
    fs = FeatureStore()
    add_cached(fs, path, table)
    with pytest.raises(hauler.OutOfRange, match=r"index\[1\] = 50"):
        fs.prefetch("t", [3, 50])
    with pytest.raises(hauler.OutOfRange, match="negative"):
        fs.prefetch("t", [-1])
    with pytest.raises(hauler.InvalidArgument):
        fs.prefetch("t", np.array([1.0]))
    s = fs.stats("t")
    assert s["prefetch_rows"] == 0 and s["bytes_read"] == 0
    fs.add("plain", path, backend="file")
    with pytest.raises(hauler.InvalidArgument, match="no cache"):
        fs.prefetch("plain", [1])
    fs.add("mem", table)
    with pytest.raises(hauler.InvalidArgument, match="in memory"):
        fs.stats("mem")
    assert fs.stats("plain")["bytes_read"] == 0
    fs.close()


def test_failed_prefetch_is_read_again(tdir):
    """A file that shrank under a prefetch: its read fails on the prefetch thread, the gather
    reads the rows itself and raises the engine's error; rows still in the file are served."""
    table, path = table_file(tdir, 400, (256,), np.uint8, raw=True)
    fs = FeatureStore()
    add_cached(fs, path, table, victim_bytes=2 * 256, dtype=np.uint8, shape=(400, 256))
    os.truncate(path, 100 * 256)
    fs.prefetch("t", [350])
    with pytest.raises(hauler.OutOfRange):
        fs.gather("t", [3, 350])
    s = fs.stats("t")
    assert s["prefetch_failed"] == 1 and s["prefetch_used"] == 0 and s["cached_rows"] == 0
    check_gather(fs, table, [3, 50])   # blocks still whole in the file
    fs.close()


def test_scatter_is_write_through(tdir):
    table, path = table_file(tdir, 40, (5,), np.int64)
    rb = table[0].nbytes
    model = table.copy()
    fs = FeatureStore()
    add_cached(fs, path, table, cache_bytes=4 * rb, victim_bytes=4 * rb, writable=True)
    fs.gather("t", [0, 1, 2, 3])
    fs.gather("t", [4, 5, 6, 7])     # 0..3 in the victim buffer, 4..7 cached
    fs.prefetch("t", [8, 9])         # 8, 9 loaded by a prefetch
    idx = np.array([0, 5, 8, 30, 5])
    src = np.arange(5 * 5, dtype=np.int64).reshape(5, 5)
    fs.scatter("t", idx, src, reduce="add")
    np.add.at(model, idx, src)
    fs.stats("t", reset=True)
    check_gather(fs, model, [0, 5, 8, 9, 30])
    s = fs.stats("t")
    assert s["victim_hits"] == 1 and s["prefetch_used"] == 2 and s["hits"] >= 1
    assert np.fromfile(path, np.int64)[-model.size:].tobytes() == model.tobytes()
    with pytest.raises(hauler.OutOfRange):
        fs.scatter("t", [1, 40], np.zeros((2, 5), np.int64))
    check_gather(fs, model, np.arange(40))
    fs.close()
    ro = FeatureStore()
    add_cached(ro, path, table)
    with pytest.raises(hauler.ReadOnlyBuffer):
        ro.scatter("t", [0], model[:1])
    ro.close()


def test_bad_arguments(tdir):
    table, path = table_file(tdir, 30)
    rb = table[0].nbytes
    fs = FeatureStore()
    bad = [
        (dict(cache_bytes=rb - 1), "holds no row"),
        (dict(cache_bytes=-1), "cache_bytes"),
        (dict(cache_bytes=1.5 * rb), "cache_bytes"),
        (dict(cache_bytes=rb, policy="fifo"), "policy must be one of"),
        (dict(cache_bytes=rb, policy="static"), "needs scores="),
        (dict(cache_bytes=rb, policy="static", scores=np.ones(29)), r"shape \(29,\)"),
        (dict(cache_bytes=rb, policy="static", scores=np.r_[np.ones(29), -1]), r"scores\[29\] = -1"),
        (dict(cache_bytes=rb, policy="hybrid", scores=np.r_[np.nan, np.ones(29)]), r"scores\[0\] = nan"),
        (dict(cache_bytes=rb, policy="static", scores=np.array(["a"] * 30)), "must hold numbers"),
        (dict(cache_bytes=rb, policy="lru", scores=np.ones(30)), "not 'lru'"),
        (dict(cache_bytes=rb, policy="static", scores=np.ones(30), weights=(1, 1)), "'hybrid' only"),
        (dict(cache_bytes=rb, policy="hybrid", scores=np.ones(30), weights=(1,)), r"\(w_static, w_dynamic\)"),
        (dict(cache_bytes=rb, policy="hybrid", scores=np.ones(30), weights=(0, 0)), "both 0"),
        (dict(cache_bytes=rb, policy="hybrid", scores=np.ones(30), weights=(1, -1)), "weights"),
        (dict(cache_bytes=rb, policy="hybrid", scores=np.ones(30), half_life=0), "half_life"),
        (dict(cache_bytes=rb, victim_bytes=rb - 1), "victim_bytes"),
        (dict(policy="lru"), "give cache_bytes="),
        (dict(victim_bytes=rb), "give cache_bytes="),
        (dict(cache_bytes=rb, writable="shared"), "writable='shared'"),
    ]
    for kw, msg in bad:
        with pytest.raises(hauler.InvalidArgument, match=msg):
            fs.add("t", path, backend="file", **kw)
        assert "t" not in fs
    with pytest.raises(hauler.InvalidArgument, match="in memory already"):
        fs.add("m", table, cache_bytes=rb)
    fs.add("t", path, backend="file", cache_bytes=10**12)   # more than the table: one slot per row
    assert fs.stats("t")["slots"] == 30
    fs.close()


def test_pickled_table_keeps_its_cache_options(tdir):
    table, path = table_file(tdir, 60)
    fs = FeatureStore()
    add_cached(fs, path, table, policy="hybrid", weights=(2, 1), half_life=3, victim_bytes=table[0].nbytes * 2)
    fs.gather("t", [1, 2])
    fs2 = pickle.loads(pickle.dumps(fs))
    s = fs2.stats("t")
    assert s["policy"] == "hybrid" and s["slots"] == 4 and s["victim_slots"] == 2 and s["cached_rows"] == 0
    check_gather(fs2, table, [1, 2, 59])
    fs2.close()
    fs.close()


def test_threads_gather_and_prefetch_at_once(tdir):
    table, path = table_file(tdir, 2000, (64,))
    fs = FeatureStore()
    add_cached(fs, path, table, cache_bytes=200 * table[0].nbytes, policy="hybrid",
               scores=np.random.default_rng(0).pareto(1.2, 2000), victim_bytes=50 * table[0].nbytes)
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(30):
                nxt = (rng.pareto(1.0, 300) * 50).astype(np.int64) % 2000
                fs.prefetch("t", nxt)
                got = fs.gather("t", nxt)
                if got.tobytes() != table[nxt].tobytes():
                    errors.append(seed)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    fs.close()


class Ids(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return (i * 7919) % self.n


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_see_the_file(tdir, context):
    table, path = table_file(tdir, 3000, (16,))
    fs = FeatureStore()
    add_cached(fs, path, table, cache_bytes=100 * table[0].nbytes, policy="static",
               scores=np.arange(3000.0) % 17, victim_bytes=20 * table[0].nbytes)
    fs.gather("t", np.arange(0, 3000, 30))   # forked workers start with this cache's copy ...
    fs.prefetch("t", np.arange(1, 3000, 7))  # ... and drop the prefetches in flight at the fork
    loader = DataLoader(Ids(3000), batch_size=64, num_workers=2, collate_fn=GatherCollate(fs, ["t"]),
                        multiprocessing_context=context)
    n = 0
    for epoch in range(2):
        for b in loader:
            assert b["t"].numpy().tobytes() == table[b["index"].numpy()].tobytes()
            n += b["index"].numel()
    assert n == 6000
    fs.close()


def test_device_gather_without_gpu(tdir):
    table, path = table_file(tdir, 10)
    fs = FeatureStore()
    add_cached(fs, path, table)
    if hauler.cuda_available():
        pytest.skip("a GPU is here")
    with pytest.raises(hauler.NoDevice):
        fs.gather("t", [1], device="cuda")
    fs.close()
