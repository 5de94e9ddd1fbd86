"""hauler.kv block moves as torch custom ops: torch.compile(fullgraph=True) traces gather/scatter/copy
over torch caches, the compiled result equals eager and fancy indexing, the compiled writes land in
the caches, and what cannot be traced or differentiated is refused precisely."""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hauler  # noqa: E402
from hauler import kv  # noqa: E402
from hauler import _torch_ops  # noqa: E402
from test_torch_ops import recording_backend, targets  # noqa: E402

L, NB, BS, H, D = 3, 12, 4, 2, 8


def flash_caches(seed=0, order="NHD"):
    g = torch.Generator().manual_seed(seed)
    shape = (2, NB, BS, H, D) if order == "NHD" else (2, NB, H, BS, D)
    return [torch.randn(shape, generator=g).to(torch.bfloat16) for _ in range(L)]


def compile_call(fn, *args):
    return torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)


def ref_gather(caches, blocks):
    """[layers, planes, n, block_size, heads, head_size] of NHD vLLM-flash caches by fancy indexing."""
    return torch.stack([c[:, blocks] for c in caches])


def test_moves_over_numpy_caches_do_not_import_torch():
    code = ("import sys, numpy as np\nfrom hauler import kv\n"
            "c = [np.arange(2 * 6 * 4 * 2 * 8, dtype=np.float32).reshape(2, 6, 4, 2, 8) for _ in range(2)]\n"
            "l = kv.KVLayout.vllm_flash(c)\ng = kv.gather_blocks(l, [5, 1])\n"
            "assert g.shape == (2, 2, 2, 4, 2, 8) and (g[1, 0, 0] == c[1][0, 5]).all()\n"
            "kv.scatter_blocks(l, [0, 2], g)\nkv.copy_blocks(l, l, [[3, 4]])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_gather_equals_eager_and_fancy_indexing(backend):
    caches = flash_caches()
    layout = kv.KVLayout.vllm_flash(caches)

    def f(blocks):
        return kv.gather_blocks(layout, blocks).float() * 2 + 1

    blocks = torch.tensor([7, 0, 11, 7])
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    got = compiled(blocks)
    assert got.shape == (L, 2, 4, BS, H, D)
    assert torch.equal(got, f(blocks))
    assert torch.equal(got, ref_gather(caches, blocks).float() * 2 + 1)
    other = torch.tensor([3, 2], dtype=torch.int32)   # another length and dtype
    assert torch.equal(compiled(other), ref_gather(caches, other.long()).float() * 2 + 1)


def test_the_traced_graph_holds_the_ops_not_a_break():
    layout = kv.KVLayout.vllm_flash(flash_caches())
    graphs = []

    def step(b):
        g = kv.gather_blocks(layout, b)
        kv.scatter_blocks(layout, b + 2, g)
        kv.copy_blocks(layout, layout, torch.stack([b, b + 4], 1))
        return g.sum()

    torch.compile(step, fullgraph=True, backend=recording_backend(graphs))(torch.tensor([1, 2]))
    assert len(graphs) == 1
    assert {"hauler.kv_gather.default", "hauler.kv_scatter_.default", "hauler.kv_copy_.default"} <= targets(graphs)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_scatter_writes_the_caches_and_a_later_gather_sees_it(backend):
    caches = flash_caches(1)
    before = [c.clone() for c in caches]
    layout = kv.KVLayout.vllm_flash(caches)

    def step(blocks, src):
        kv.scatter_blocks(layout, blocks, src)
        return kv.gather_blocks(layout, blocks)

    blocks = torch.tensor([9, 2, 5])
    src = torch.randn(L, 2, 3, BS, H, D).to(torch.bfloat16)
    got = torch.compile(step, fullgraph=True, backend=backend)(blocks, src)
    assert torch.equal(got, src)                                  # the gather in the graph read the new blocks
    for c, b, s in zip(caches, before, src):
        b[:, blocks] = s
        assert torch.equal(c, b)                                  # the caches themselves were written, only there


def test_compiled_scatter_into_views_of_one_tensor_writes_the_base():
    base = torch.zeros(L, 2, NB, BS, H, D)
    layout = kv.KVLayout.vllm_flash(list(base.unbind(0)))
    src = torch.arange(L * 2 * 2 * BS * H * D, dtype=torch.float32).reshape(L, 2, 2, BS, H, D)
    torch.compile(lambda b, s: kv.scatter_blocks(layout, b, s), fullgraph=True, backend="aot_eager")(
        torch.tensor([4, 0]), src)
    want = torch.zeros_like(base)
    want[:, :, [4, 0]] = src
    assert torch.equal(base, want)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_copy_inside_one_cache_and_between_orders(backend):
    caches = flash_caches(2)
    hnd = [torch.zeros(2, NB, H, BS, D, dtype=torch.bfloat16) for _ in range(L)]
    src, dst = kv.KVLayout.vllm_flash(caches), kv.KVLayout.vllm_flash(hnd, "HND")
    want = [c.clone() for c in caches]
    for w in want:
        w[:, [10, 11]] = w[:, [1, 3]]

    def step(m_in, m_out):
        kv.copy_blocks(src, src, m_in)        # inside one cache
        kv.copy_blocks(src, dst, m_out)       # NHD -> HND

    torch.compile(step, fullgraph=True, backend=backend)(torch.tensor([[1, 10], [3, 11]]),
                                                        torch.tensor([[10, 0], [5, 6]]))
    for c, w, h in zip(caches, want, hnd):
        assert torch.equal(c, w)
        assert torch.equal(h[:, 0], w[:, 10].transpose(1, 2)) and torch.equal(h[:, 6], w[:, 5].transpose(1, 2))
        assert torch.equal(h[:, 1], torch.zeros_like(h[:, 1]))


def test_compiled_copy_checks_overlap_as_eager_across_two_layouts_of_the_same_tensors():
    caches = flash_caches(5)
    before = [c.clone() for c in caches]
    a, b = kv.KVLayout.vllm_flash(caches), kv.KVLayout.vllm_flash(caches)
    copy = torch.compile(lambda m: kv.copy_blocks(a, b, m), fullgraph=True, backend="aot_eager")
    with pytest.raises(hauler.InvalidArgument, match="a block both read and written in one move"):
        copy(torch.tensor([[1, 2], [2, 5]]))           # as the plain path: block 2 is read and written
    assert all(torch.equal(c, w) for c, w in zip(caches, before))
    copy(torch.tensor([[1, 10], [3, 11]]))
    for c, w in zip(caches, before):
        w[:, [10, 11]] = w[:, [1, 3]]
        assert torch.equal(c, w)


def test_compiled_moves_reading_other_views_of_the_written_caches_are_refused():
    base = torch.zeros(L, 2, NB, BS, H, D)
    a, b = kv.KVLayout.vllm_flash(list(base.unbind(0))), kv.KVLayout.vllm_flash(list(base.unbind(0)))
    with pytest.raises(Exception, match="the source caches are views of the memory of the caches the move writes"):
        compile_call(lambda m: kv.copy_blocks(a, b, m), torch.tensor([[1, 10]]))
    flat = torch.zeros(2, NB * BS * H * D)
    c = kv.KVLayout.vllm_flash([flat.view(2, NB, BS, H, D)])
    with pytest.raises(Exception, match="src is a view of the memory of the caches the move writes"):
        compile_call(lambda b, s: kv.scatter_blocks(c, b, s), torch.tensor([0]), flat[0, :2 * BS * H * D])


def test_compiled_moves_take_lists_and_empty_block_sets():
    caches = flash_caches(6)
    before = [c.clone() for c in caches]
    l = kv.KVLayout.vllm_flash(caches)
    assert torch.equal(compile_call(lambda: kv.gather_blocks(l, [3, 1])), ref_gather(caches, [3, 1]))
    empty = torch.tensor([], dtype=torch.int64)
    assert compile_call(lambda b: kv.gather_blocks(l, b), empty).shape == (L, 2, 0, BS, H, D)
    compile_call(lambda b, s: kv.scatter_blocks(l, b, s), empty, torch.empty(0, dtype=torch.bfloat16))
    compile_call(lambda m: kv.copy_blocks(l, l, m), empty.reshape(0, 2))
    assert all(torch.equal(c, b) for c, b in zip(caches, before))


def test_compiled_gather_into_a_staging_buffer_writes_the_same_bytes():
    caches = flash_caches(3)
    layout = kv.KVLayout.vllm_flash(caches)
    blocks = torch.tensor([6, 1])
    eager = torch.zeros(2 * layout.block_bytes + 5, dtype=torch.uint8)
    kv.gather_blocks(layout, blocks, eager)
    staged = torch.zeros_like(eager)
    torch.compile(lambda b, o: kv.gather_blocks(layout, b, o), fullgraph=True, backend="aot_eager")(blocks, staged)
    assert torch.equal(staged, eager) and staged[-5:].eq(0).all()


def every_kind():
    """One layout of each kind the ops rebuild, over torch tensors (non-contiguous views included)."""
    g = torch.Generator().manual_seed(4)

    def t(*shape):
        return torch.randn(shape, generator=g)

    return {
        "vllm_flash_nhd": kv.KVLayout.vllm_flash([t(2, NB, BS, H, D) for _ in range(L)]),
        "vllm_flash_hnd": kv.KVLayout.vllm_flash([t(2, NB, H, BS, D) for _ in range(L)], "HND"),
        "mla": kv.KVLayout.mla([t(NB, BS, 16)[:, :, :12] for _ in range(L)]),
        "cross_layer_nhd": kv.KVLayout.cross_layer(t(NB, L, 2, BS, H, D)),
        "cross_layer_hnd": kv.KVLayout.cross_layer(t(NB, L, 2, H, BS, D), "HND"),
        "vllm_legacy": kv.KVLayout.vllm_legacy([t(NB, H, D // 4, BS, 4) for _ in range(L)],
                                               [t(NB, H, D, BS) for _ in range(L)]),
        "sglang": kv.KVLayout.sglang([t(NB * BS + 3, H, D) for _ in range(L)],
                                     [t(NB * BS + 3, H, D) for _ in range(L)], BS),
        "lmcache_chunk": kv.KVLayout.lmcache_chunk(t(2, L, NB * BS, H * D), BS, num_heads=H),
    }


def test_every_kind_is_rebuilt_from_its_own_tensors_as_it_was():
    layouts = every_kind()
    assert set(layouts) == set(_torch_ops._KV_KINDS)
    for kind, l in layouts.items():
        assert l.kind == kind
        rebuilt = _torch_ops._kv_layout(*_torch_ops._kv_spec(l, "layout"), l._owners)
        assert rebuilt == l and rebuilt._owners == (), kind   # same addresses, strides, geometry; holds nothing


@pytest.mark.parametrize("kind", sorted(_torch_ops._KV_KINDS))
def test_compiled_gather_and_scatter_of_every_kind_equal_eager(kind):
    layout = every_kind()[kind]
    blocks = torch.tensor([5, 0, 11])
    want = kv.gather_blocks(layout, blocks, torch.empty(3 * layout.block_bytes, dtype=torch.uint8))
    got = torch.compile(lambda b: kv.gather_blocks(layout, b), fullgraph=True, backend="aot_eager")(blocks)
    assert got.dtype == torch.float32 and torch.equal(got.reshape(-1).view(torch.uint8), want)
    # scatter blocks 5 and 0's contents into 1 and 2, then check by an eager gather
    torch.compile(lambda b, s: kv.scatter_blocks(layout, b, s), fullgraph=True, backend="aot_eager")(
        torch.tensor([1, 2]), got[:, :, :2].contiguous())
    assert torch.equal(kv.gather_blocks(layout, [1, 2]), got[:, :, :2])


def test_eager_gather_without_out_returns_an_array_like_the_caches():
    npc = [np.arange(2 * NB * BS * H * D, dtype=np.float16).reshape(2, NB, BS, H, D) + l for l in range(L)]
    g = kv.gather_blocks(kv.KVLayout.vllm_flash(npc), [3, 3, 0])
    assert isinstance(g, np.ndarray) and g.dtype == np.float16 and g.shape == (L, 2, 3, BS, H, D)
    assert all(np.array_equal(g[l], c[:, [3, 3, 0]]) for l, c in enumerate(npc))
    caches = flash_caches()
    t = kv.gather_blocks(kv.KVLayout.vllm_flash(caches), torch.tensor([2]))
    assert isinstance(t, torch.Tensor) and torch.equal(t, ref_gather(caches, [2]))
    assert kv.gather_blocks(kv.KVLayout.vllm_flash(caches), []).shape == (L, 2, 0, BS, H, D)


# -- refused, precisely ---------------------------------------------------------------------------

def test_moves_autograd_would_have_to_record_are_refused():
    caches = [c.float().requires_grad_() for c in flash_caches()]
    layout = kv.KVLayout.vllm_flash(caches)
    plain = kv.KVLayout.vllm_flash(flash_caches())
    with pytest.raises(hauler.InvalidArgument, match="KV moves are not differentiable"):
        kv.gather_blocks(layout, [1])
    with pytest.raises(hauler.InvalidArgument, match="KV moves are not differentiable"):
        kv.scatter_blocks(layout, [1], torch.zeros(L, 2, 1, BS, H, D))
    with pytest.raises(hauler.InvalidArgument, match="KV moves are not differentiable"):
        kv.scatter_blocks(plain, [1], torch.zeros(L, 2, 1, BS, H, D, dtype=torch.bfloat16, requires_grad=True))
    with pytest.raises(hauler.InvalidArgument, match="KV moves are not differentiable"):
        kv.copy_blocks(layout, plain, [[0, 1]])
    with pytest.raises(Exception, match="KV moves are not differentiable"):
        torch.compile(lambda b: kv.gather_blocks(layout, b), fullgraph=True, backend="aot_eager")(torch.tensor([1]))
    assert all(c.grad is None for c in caches)
    with torch.no_grad():                     # a cache update outside autograd is what engines do
        g = kv.gather_blocks(layout, [1, 4])
        kv.scatter_blocks(layout, [0, 2], g)
    assert not g.requires_grad and torch.equal(caches[1][:, [0, 2]], caches[1][:, [1, 4]])


def test_layouts_the_ops_cannot_rebuild_are_refused_when_traced():
    caches = flash_caches()
    l = kv.KVLayout.vllm_flash(caches)
    explicit = kv.KVLayout.explicit("bfloat16", 1, 1, NB, BS, H, D, [[caches[0].data_ptr()]],
                                    {"block": BS * H * D * 2, "token": H * D * 2, "head": D * 2, "dim": 2})
    with pytest.raises(Exception, match="named constructor built from torch tensors .*; layout is a 'explicit' layout"):
        compile_call(lambda b: kv.gather_blocks(explicit, b, torch.empty(2 * explicit.block_bytes,
                                                                         dtype=torch.uint8)), torch.tensor([0]))
    remote = kv.KVLayout.from_bytes(l.to_bytes())
    with pytest.raises(Exception, match="src_layout is another process's memory"):
        compile_call(lambda m: kv.copy_blocks(remote, l, m), torch.tensor([[0, 1]]))
    npl = kv.KVLayout.vllm_flash([c.float().numpy() for c in caches])
    with pytest.raises(Exception, match="traces KV moves over torch caches; dst_layout holds a ndarray"):
        compile_call(lambda m: kv.copy_blocks(l, npl, m), torch.tensor([[0, 1]]))
    with pytest.raises(hauler.InvalidArgument, match="raw addresses: pass out="):
        kv.gather_blocks(explicit, [0])


def test_bad_block_ids_and_buffers_are_refused_when_traced():
    caches = flash_caches()
    before = [c.clone() for c in caches]
    l = kv.KVLayout.vllm_flash(caches)
    with pytest.raises(Exception, match="blocks must hold int32 or int64 block ids, got torch.float32"):
        compile_call(lambda b: kv.gather_blocks(l, b), torch.tensor([1.0]))
    with pytest.raises(Exception, match=r"blocks must be 1-D, got shape \(1, 2\)"):
        compile_call(lambda b: kv.gather_blocks(l, b), torch.tensor([[1, 2]]))
    with pytest.raises(Exception, match=r"mapping must be \(n, 2\)"):
        compile_call(lambda m: kv.copy_blocks(l, l, m), torch.tensor([1, 2]))
    with pytest.raises(Exception, match="src holds 16 bytes; 1 blocks need"):
        compile_call(lambda b, s: kv.scatter_blocks(l, b, s), torch.tensor([1]), torch.zeros(4))
    with pytest.raises(Exception, match="src with shape .* is not contiguous"):
        compile_call(lambda b, s: kv.scatter_blocks(l, b, s), torch.tensor([1]),
                     torch.zeros(L, 2, 1, BS, H, 2 * D, dtype=torch.bfloat16)[..., ::2])
    with pytest.raises(Exception, match="out holds 8 bytes"):
        compile_call(lambda b, o: kv.gather_blocks(l, b, o), torch.tensor([1]), torch.zeros(8, dtype=torch.uint8))
    with pytest.raises(Exception, match="traces copy_blocks without threads=, stream= "):
        compile_call(lambda m: kv.copy_blocks(l, l, m, threads=2, stream=0), torch.tensor([[0, 1]]))
    with pytest.raises(Exception, match="traces gather_blocks without plan= "):
        p = kv.plan(l, [1], l, [2])
        compile_call(lambda b: kv.gather_blocks(l, b, plan=p), torch.tensor([1]))
    with pytest.raises(Exception, match="scatter_blocks from a torch tensor src, got ndarray"):
        src = np.zeros((L, 2, 1, BS, H, D), np.float32)
        compile_call(lambda b: kv.scatter_blocks(l, b, src), torch.tensor([1]))
    assert all(torch.equal(c, b) for c, b in zip(caches, before))


def test_out_of_range_blocks_raise_out_of_range_from_the_compiled_call_and_write_nothing():
    caches = flash_caches()
    before = [c.clone() for c in caches]
    l = kv.KVLayout.vllm_flash(caches)
    scatter = torch.compile(lambda b, s: kv.scatter_blocks(l, b, s), fullgraph=True, backend="aot_eager")
    src = torch.ones(L, 2, 2, BS, H, D, dtype=torch.bfloat16)
    with pytest.raises(hauler.OutOfRange, match=str(NB)):
        scatter(torch.tensor([1, NB]), src)
    with pytest.raises(hauler.OutOfRange):
        compile_call(lambda b: kv.gather_blocks(l, b), torch.tensor([-1]))
    assert all(torch.equal(c, b) for c, b in zip(caches, before))
