"""hauler.gather with torch's DataLoader: two worker processes gather from one table (forked
workers share the parent's pages; spawned workers map the same /dev/shm file, so an update in
the parent is visible to them), and GatherCollate's reusable output buffers."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import hauler
import hauler.gather as hg
from hauler.gather import FeatureStore, GatherCollate


class Ids(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return (i * 7919) % self.n  # a permutation: every row once, out of order


class Probe:
    """collate_fn: GatherCollate plus what the worker process saw."""

    def __init__(self, store, names):
        self.store, self.inner = store, GatherCollate(store, names)

    def __call__(self, batch):
        out = self.inner(batch)
        t = self.store._get("x")
        out["pid"] = torch.tensor([os.getpid()])
        out["addr"] = torch.tensor([t.arr.__array_interface__["data"][0]])
        out["threads"] = torch.tensor([hg._threads(None)])
        out["shm"] = torch.tensor([out["x"].is_shared()])
        return out


def run_epoch(loader):
    return list(loader)


def test_forked_workers_share_one_table():
    x = torch.randn(500, 16)
    y = torch.arange(500)
    fs = FeatureStore({"x": x, "y": y})
    addr = fs._get("x").arr.__array_interface__["data"][0]
    loader = DataLoader(Ids(500), batch_size=32, num_workers=2, collate_fn=Probe(fs, ["x", "y"]),
                        multiprocessing_context="fork")
    batches = run_epoch(loader)
    pids = {int(b["pid"]) for b in batches}
    assert len(pids) == 2 and os.getpid() not in pids, "two worker processes did the gathering"
    assert all(int(b["addr"]) == addr for b in batches), "workers read the parent's table in place"
    assert all(int(b["threads"]) == 1 for b in batches), "one gather thread per worker by default"
    assert all(bool(b["shm"]) for b in batches), "worker outputs are allocated in shared memory"
    seen = torch.cat([b["index"] for b in batches])
    assert sorted(seen.tolist()) == list(range(500))
    for b in batches:
        assert torch.equal(b["x"], x[b["index"]]) and torch.equal(b["y"], y[b["index"]])


def test_spawned_workers_map_the_shared_table_and_see_updates():
    x = np.random.default_rng(0).random((300, 8)).astype(np.float32)
    fs = FeatureStore({"x": x}, shared=True)
    try:
        loader = DataLoader(Ids(300), batch_size=50, num_workers=2, collate_fn=Probe(fs, ["x"]),
                            multiprocessing_context="spawn", persistent_workers=True)
        first = run_epoch(loader)
        for b in first:
            assert np.array_equal(b["x"].numpy(), x[b["index"].numpy()])
        # The parent writes rows; the workers (started before) read the same memory.
        fs.scatter("x", np.arange(300), np.full((300, 8), 3.0, np.float32))
        second = run_epoch(loader)
        assert len({int(b["pid"]) for b in second}) == 2
        assert all((b["x"] == 3.0).all() for b in second), "spawned workers map the parent's table"
    finally:
        fs.close()


def test_collate_reuses_a_ring_of_buffers_in_the_main_process():
    x = torch.randn(100, 4)
    c = GatherCollate(FeatureStore({"x": x}), "x", depth=2)
    b0 = c(list(range(10)))
    b1 = c(list(range(10, 20)))
    ptr0 = b0["x"].data_ptr()
    assert torch.equal(b0["x"], x[:10]) and torch.equal(b1["x"], x[10:20])
    assert not b0["x"].is_pinned() or hauler.cuda_available(), "pinned only where a GPU exists"
    b2 = c(list(range(30, 35)))  # smaller batch: a view of the first buffer again
    assert b2["x"].data_ptr() == ptr0 and torch.equal(b2["x"], x[30:35])
    loader = DataLoader(Ids(100), batch_size=16, num_workers=0, collate_fn=GatherCollate(FeatureStore({"x": x}), "x"))
    for b in loader:
        assert torch.equal(b["x"], x[b["index"]])


def test_collate_rejects_unknown_table():
    with pytest.raises(KeyError):
        GatherCollate(FeatureStore(), ["x"])


def test_neighbour_sampler_edges_are_graph_edges():
    from hauler.sampling import random_graph, sample_neighbors
    rowptr, col = random_graph(500, avg_degree=6, seed=3)
    seeds = np.array([7, 3, 7, 100])
    n_id, hops = sample_neighbors(rowptr, col, seeds, (4, 3), np.random.default_rng(0))
    assert n_id[:3].tolist() == [7, 3, 100] and len(set(n_id.tolist())) == n_id.size
    for src, dst in hops:
        for s, d in zip(n_id[src].tolist(), n_id[dst].tolist()):
            assert s in col[rowptr[d]:rowptr[d + 1]]
