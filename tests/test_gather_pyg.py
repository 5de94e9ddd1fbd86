"""The PyG adapter through torch_geometric's own public FeatureStore API, and end to end: a
sampled mini-batch training loop (hauler.sampling's neighbour sampler, since PyG's
NeighborLoader needs pyg-lib/torch-sparse) with the features fetched through the adapter,
in the main process and in two DataLoader workers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import hauler

pyg = pytest.importorskip("torch_geometric", reason="torch_geometric is not installed (pip install torch_geometric)")
from torch_geometric.data import FeatureStore as PyGFeatureStore  # noqa: E402
from torch_geometric.data import TensorAttr  # noqa: E402

from hauler.pyg import HaulerFeatureStore  # noqa: E402
from hauler.sampling import random_graph, sample_neighbors  # noqa: E402


@pytest.fixture
def store():
    s = HaulerFeatureStore()
    assert isinstance(s, PyGFeatureStore)
    return s


def test_put_get_size_attrs_remove(store):
    x = torch.randn(50, 8)
    y = torch.arange(50)
    assert store.put_tensor(x, group_name="paper", attr_name="x", index=None)
    assert store.put_tensor(y, TensorAttr("paper", "y", None))
    idx = torch.tensor([4, 0, 49, 4])
    assert torch.equal(store.get_tensor(group_name="paper", attr_name="x", index=idx), x[idx])
    assert store.get_tensor("paper", "x", None).data_ptr() == x.data_ptr(), "whole table: no copy"
    assert torch.equal(store.get_tensor("paper", "x", slice(2, 10, 3)), x[2:10:3])
    assert torch.equal(store.get_tensor("paper", "y", 7), y[7])
    got = store.multi_get_tensor([TensorAttr("paper", "x", idx), TensorAttr("paper", "y", idx)])
    assert torch.equal(got[0], x[idx]) and torch.equal(got[1], y[idx])
    assert store.get_tensor_size(group_name="paper", attr_name="x") == (50, 8)
    assert store.get_tensor_size("paper", "x", idx) == (4, 8)
    assert store.get_tensor_size("paper", "nope") is None
    attrs = {(a.group_name, a.attr_name) for a in store.get_all_tensor_attrs()}
    assert attrs == {("paper", "x"), ("paper", "y")}
    # numpy index -> numpy rows with convert_type, as PyG defines it (one element: PyG's own
    # is_set() cannot compare a longer numpy index with UNSET)
    rows = store.get_tensor("paper", "x", np.array([2]), convert_type=True)
    assert isinstance(rows, np.ndarray) and np.array_equal(rows, x[[2]].numpy())
    assert store.remove_tensor(group_name="paper", attr_name="x", index=None)
    assert not store.remove_tensor(group_name="paper", attr_name="x", index=None)
    with pytest.raises(KeyError):
        store.get_tensor("paper", "x", idx)


def test_row_updates_views_and_errors(store):
    x = torch.zeros(10, 3)
    store["author", "x", None] = x
    store.put_tensor(torch.ones(2, 3), group_name="author", attr_name="x", index=torch.tensor([3, 3]))
    assert torch.equal(x[3], torch.ones(3)) and x.sum() == 3, "rows written in place"
    assert not store.put_tensor(torch.ones(1, 3), group_name="author", attr_name="z", index=torch.tensor([0]))
    assert torch.equal(store.view(group_name="author").x[torch.tensor([3])], x[[3]])
    assert torch.equal(store["author", "x", torch.tensor([3])], x[[3]])
    store.update_tensor(torch.full((4, 3), 2.0), group_name="author", attr_name="x", index=None)
    assert store.get_tensor_size("author", "x") == (4, 3)
    with pytest.raises(hauler.OutOfRange, match=r"index\[1\] = 4 is out of range for a table of 4 rows"):
        store.get_tensor("author", "x", torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="not fully specified"):
        store.put_tensor(x, group_name="author")


def mean_aggregate(h_src, src, dst, num_dst):
    agg = torch.zeros(num_dst, h_src.shape[1])
    agg.index_add_(0, dst, h_src[src])
    deg = torch.bincount(dst, minlength=num_dst).clamp(min=1).unsqueeze(1)
    return agg / deg


class SAGE(torch.nn.Module):
    def __init__(self, d_in, d_hidden, classes):
        super().__init__()
        self.l1 = torch.nn.Linear(2 * d_in, d_hidden)
        self.l2 = torch.nn.Linear(2 * d_hidden, classes)

    def forward(self, x, hops):
        (s1, d1), (s0, d0) = hops[1], hops[0]  # outer hop first
        n = x.shape[0]
        h = torch.relu(self.l1(torch.cat([x, mean_aggregate(x, s1, d1, n)], 1)))
        return self.l2(torch.cat([h, mean_aggregate(h, s0, d0, n)], 1))


class SampleAndFetch:
    """collate_fn: seeds -> sampled sub-graph -> features and labels from the PyG feature store."""

    def __init__(self, store, rowptr, col, fanouts=(5, 5)):
        self.store, self.rowptr, self.col, self.fanouts = store, rowptr, col, fanouts

    def __call__(self, seeds):
        rng = np.random.default_rng(int(seeds[0]))
        n_id, edges = sample_neighbors(self.rowptr, self.col, np.asarray(seeds), self.fanouts, rng)
        n_id_t = torch.from_numpy(n_id)
        x, y = self.store.multi_get_tensor([TensorAttr("node", "x", n_id_t), TensorAttr("node", "y", n_id_t)])
        hops = [(torch.from_numpy(s), torch.from_numpy(d)) for s, d in edges]
        return {"n_id": n_id_t, "x": x, "y": y, "hops": hops, "seeds": len(seeds)}


@pytest.mark.parametrize("workers", [0, 2])
def test_sampled_minibatch_training_end_to_end(store, workers):
    torch.manual_seed(0)
    num_nodes, d, classes = 2000, 16, 4
    rowptr, col = random_graph(num_nodes, avg_degree=8, seed=1)
    y = torch.randint(0, classes, (num_nodes,))
    centers = torch.randn(classes, d) * 2
    x = centers[y] + torch.randn(num_nodes, d)  # learnable: features carry the label
    store.put_tensor(x, group_name="node", attr_name="x", index=None)
    store.put_tensor(y, group_name="node", attr_name="y", index=None)
    loader = torch.utils.data.DataLoader(torch.arange(num_nodes), batch_size=128, shuffle=True,
                                         num_workers=workers, collate_fn=SampleAndFetch(store, rowptr, col),
                                         **({"multiprocessing_context": "fork"} if workers else {}))
    model = SAGE(d, 32, classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _epoch in range(3):
        for b in loader:
            assert torch.equal(b["x"], x[b["n_id"]]) and torch.equal(b["y"], y[b["n_id"]])
            k = b["seeds"]
            out = model(b["x"], b["hops"])[:k]
            loss = torch.nn.functional.cross_entropy(out, b["y"][:k])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.5 * first, f"training did not progress: {first:.3f} -> {last:.3f}"
