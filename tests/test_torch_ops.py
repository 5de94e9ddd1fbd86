"""FeatureStore.gather/scatter as torch custom ops: torch.compile(fullgraph=True) traces them,
autograd differentiates the gather (dense and sparse, as index_select / nn.Embedding), and a
gradient that would be lost is refused."""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hauler  # noqa: E402
from hauler.gather import FeatureStore, gather  # noqa: E402


def recording_backend(graphs):
    """A torch.compile backend that keeps each traced graph and runs it as traced (eager)."""
    def backend(gm, example_inputs):
        graphs.append(gm.graph)
        return gm.forward
    return backend


def targets(graphs):
    return {str(n.target) for g in graphs for n in g.nodes if n.op == "call_function"}


def test_gathering_without_torch_does_not_import_it(tmp_path):
    code = ("import sys, numpy as np\nfrom hauler.gather import FeatureStore\nfs = FeatureStore()\n"
            "fs.add('x', np.arange(12.0).reshape(6, 2))\nassert fs.gather('x', [5, 0])[0, 1] == 11.0\n"
            "fs.scatter('x', [1], np.zeros((1, 2)))\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_over_gather_equals_eager(backend, tmp_path):
    x = torch.randn(100, 16)
    y = np.arange(300, dtype=np.float32).reshape(100, 3)
    np.save(tmp_path / "z.npy", np.arange(200, dtype=np.int64).reshape(100, 2))
    fs = FeatureStore()
    fs.add("x", x)                     # a torch table
    fs.add("y", y)                     # a numpy table
    fs.add("z", tmp_path / "z.npy")    # a memory-mapped file

    def f(idx):
        return fs.gather("x", idx) * 2 + fs.gather("y", idx).sum(-1, keepdim=True) + fs.gather("z", idx)[..., :1]

    idx = torch.tensor([5, 3, 99, 3, 0])
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    got = compiled(idx)
    assert torch.equal(got, f(idx))
    assert torch.equal(got, x[idx] * 2 + torch.from_numpy(y)[idx].sum(1, keepdim=True) + idx[:, None] * 2)
    idx2 = torch.tensor([[1, 2], [7, 7]], dtype=torch.int32)   # another shape and dtype: traced again
    assert torch.equal(compiled(idx2), f(idx2))


def test_the_traced_graph_holds_the_op_not_a_break():
    fs = FeatureStore({"x": torch.randn(10, 4)})
    graphs = []
    out = torch.compile(lambda i: fs.gather("x", i).relu(), fullgraph=True, backend=recording_backend(graphs))(
        torch.tensor([1, 2]))
    assert out.shape == (2, 4)
    assert len(graphs) == 1 and "hauler.gather.default" in targets(graphs)


def test_compiled_scatter_writes_the_table_and_a_later_gather_sees_it():
    table = torch.zeros(8, 3)
    fs = FeatureStore({"emb": table})

    def step(idx, src):
        fs.scatter("emb", idx, src, reduce="add")
        return fs.gather("emb", idx)

    idx = torch.tensor([1, 6, 1])
    src = torch.arange(9.0).reshape(3, 3)
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(idx, src)
    want = torch.zeros(8, 3).index_add_(0, idx, src)
    assert torch.equal(table, want)            # the store's own tensor was written
    assert torch.equal(got, want[idx])         # and the gather in the same graph read the new rows


def test_compiled_scatter_into_a_numpy_table_is_refused_precisely():
    fs = FeatureStore({"emb": np.zeros((8, 3), np.float32)})

    def step(idx, src):
        fs.scatter("emb", idx, src)

    with pytest.raises(Exception, match="tables added as torch tensors; table 'emb' is a memory table"):
        torch.compile(step, fullgraph=True, backend="aot_eager")(torch.tensor([1]), torch.ones(1, 3))


def test_compiled_gather_with_out_is_refused_precisely():
    fs = FeatureStore({"x": torch.randn(10, 4)})
    out = torch.empty(2, 4)
    with pytest.raises(Exception, match="torch.compile traces gather without out="):
        torch.compile(lambda i: fs.gather("x", i, out=out), fullgraph=True, backend="aot_eager")(torch.tensor([1, 2]))


# -- autograd --------------------------------------------------------------------------------------

def repeated_index():
    return torch.tensor([[3, 0, 3], [7, 3, 0]])


def test_gradient_equals_index_select_bit_for_bit_with_repeated_indices():
    w = torch.randn(9, 5, dtype=torch.float32, requires_grad=True)
    fs = FeatureStore({"w": w})
    idx = repeated_index()
    g = torch.randn(2, 3, 5)
    out = fs.gather("w", idx)
    assert out.requires_grad and out.shape == (2, 3, 5)
    (out * g).sum().backward()
    w2 = w.detach().clone().requires_grad_()
    (torch.index_select(w2, 0, idx.reshape(-1)).reshape(2, 3, 5) * g).sum().backward()
    assert torch.equal(w.grad, w2.grad)
    assert w.grad[3].abs().sum() > 0 and torch.equal(w.grad[1], torch.zeros(5))   # untouched rows: zero


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gradient_of_half_tables_equals_index_select(dtype):
    w = torch.randn(9, 4).to(dtype).requires_grad_()
    idx = torch.tensor([2, 2, 8, 2])
    g = torch.randn(4, 4).to(dtype)
    (gather(w, idx) * g).sum().backward()
    w2 = w.detach().clone().requires_grad_()
    (w2.index_select(0, idx) * g).sum().backward()
    assert torch.equal(w.grad, w2.grad)


@pytest.mark.parametrize("index", [torch.tensor([4, 1, 4, 4]), repeated_index(), torch.tensor(6),
                                   torch.tensor([], dtype=torch.int64)], ids=["1d", "2d", "scalar", "empty"])
def test_gradcheck(index):
    w = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gather(t, index), (w,))


def test_sparse_gradient_like_embedding_sparse():
    w = torch.randn(10, 4, requires_grad=True)
    fs = FeatureStore({"w": w})
    idx = torch.tensor([[1, 5], [5, 9]])
    g = torch.randn(2, 2, 4)
    (fs.gather("w", idx, sparse=True) * g).sum().backward()
    emb = torch.nn.Embedding(10, 4, sparse=True)
    with torch.no_grad():
        emb.weight.copy_(w)
    (emb(idx) * g).sum().backward()
    assert w.grad.is_sparse and w.grad.shape == (10, 4)
    assert torch.equal(w.grad.coalesce().indices(), emb.weight.grad.coalesce().indices())
    assert torch.equal(w.grad.coalesce().values(), emb.weight.grad.coalesce().values())
    # and a sparse optimizer step takes it
    torch.optim.SGD([w], lr=0.1).step()


def test_gradient_through_a_compiled_function_equals_eager():
    w = torch.randn(20, 6, dtype=torch.float64, requires_grad=True)
    fs = FeatureStore({"w": w})
    idx = torch.tensor([0, 19, 0, 7])

    def loss(i):
        return (fs.gather("w", i).tanh() ** 2).sum()

    torch.compile(loss, fullgraph=True, backend="aot_eager")(idx).backward()
    compiled_grad, w.grad = w.grad.clone(), None
    loss(idx).backward()
    assert torch.equal(compiled_grad, w.grad)


def test_sparse_gradient_through_a_compiled_function_equals_eager():
    w = torch.randn(20, 4, requires_grad=True)
    fs = FeatureStore({"w": w})
    idx = torch.tensor([1, 5, 5])
    torch.compile(lambda i: fs.gather("w", i, sparse=True).pow(2).sum(), fullgraph=True,
                  backend="aot_eager")(idx).backward()
    compiled_grad, w.grad = w.grad, None
    fs.gather("w", idx, sparse=True).pow(2).sum().backward()
    assert compiled_grad.is_sparse and torch.equal(compiled_grad.to_dense(), w.grad.to_dense())


def test_gradient_reaches_a_table_computed_from_parameters():
    base = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    table = (base * 3).contiguous()
    fs = FeatureStore({"t": table})
    fs.gather("t", [1, 1, 4]).sum().backward()
    assert torch.equal(base.grad, torch.tensor([0, 6, 0, 0, 3, 0], dtype=torch.float64)[:, None].expand(6, 2))


def test_no_grad_gathers_take_the_plain_path_and_carry_no_gradient():
    w = torch.randn(5, 2, requires_grad=True)
    fs = FeatureStore({"w": w})
    with torch.no_grad():
        out = fs.gather("w", [0, 4])
    assert not out.requires_grad and torch.equal(out, w.detach()[[0, 4]])


# -- gradients that would be lost are refused -----------------------------------------------------

def test_a_requires_grad_table_cannot_be_shared():
    w = torch.randn(5, 2, requires_grad=True)
    fs = FeatureStore()
    with pytest.raises(hauler.InvalidArgument, match="table 'w' requires grad: a shared table is a copy"):
        fs.add("w", w, shared=True)
    fs.add("w", w)
    fs.add("plain", torch.zeros(3, 2))
    with pytest.raises(hauler.InvalidArgument, match="table 'w' requires grad"):
        fs.share()
    assert fs.kind("w") == "memory" and fs.kind("plain") == "memory"   # nothing moved
    fs.close()


def test_gather_into_out_or_a_device_from_a_requires_grad_table_is_refused():
    w = torch.randn(5, 2, requires_grad=True)
    fs = FeatureStore({"w": w})
    out = torch.empty(2, 2)
    with pytest.raises(hauler.InvalidArgument, match="table 'w' requires grad and out= would lose its gradient"):
        fs.gather("w", [0, 1], out=out)
    with pytest.raises(hauler.InvalidArgument, match="device='cuda' would lose its gradient"):
        fs.gather("w", [0, 1], device="cuda")
    with torch.no_grad():
        assert fs.gather("w", [0, 1], out=out) is out


def test_scatter_autograd_would_have_to_record_is_refused():
    w = torch.zeros(5, 2, requires_grad=True)
    fs = FeatureStore({"w": w, "plain": torch.zeros(5, 2)})
    with pytest.raises(hauler.InvalidArgument, match="table 'w' requires grad: scatter writes it in place"):
        fs.scatter("w", [1], torch.ones(1, 2))
    src = torch.ones(1, 2, requires_grad=True)
    with pytest.raises(hauler.InvalidArgument, match="src requires grad: scatter writes table 'plain' in place"):
        fs.scatter("plain", [1], src)
    assert torch.equal(w.detach(), torch.zeros(5, 2)) and torch.equal(fs.table("plain"), torch.zeros(5, 2))
    with torch.no_grad():                      # an optimizer-style update of the parameter table
        fs.scatter("w", [1, 1], torch.ones(2, 2), reduce="add")
    assert torch.equal(w.detach()[1], torch.full((2,), 2.0))
