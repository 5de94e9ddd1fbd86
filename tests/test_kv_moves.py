"""Block gather/scatter/copy against the numpy reference (fancy indexing of the same tensors), byte for
byte, on poisoned outputs, for every layout pair."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hauler import kv
from hauler.errors import InvalidArgument, OutOfRange, ReadOnlyBuffer
from support.kv_ref import KINDS, make_cache, poison

PAGED = [k for k in KINDS if k != "contiguous"]


@pytest.mark.parametrize("kind", PAGED)
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_gather_scatter_match_numpy(kind, lib):
    rng = np.random.default_rng(1)
    c = make_cache(kind, rng, lib=lib)
    ids = np.array([3, 0, 5, 3, 1], dtype=np.int32)  # repeats and out of order
    es = c.layout.elem_size
    out = np.full(c.layout.block_bytes * len(ids), 0xA5, np.uint8)
    kv.gather_blocks(c.layout, ids, out)
    ref = c.blocks(ids)
    assert out.view(ref.dtype).reshape(ref.shape).tobytes() == ref.tobytes()
    # scatter back into distinct blocks of a poisoned copy: exactly those blocks change
    before = c.snapshot()
    dst_ids = np.array([4, 2, 0], dtype=np.int64)
    src = rng.integers(0, 256, c.layout.block_bytes * 3, dtype=np.uint8)
    kv.scatter_blocks(c.layout, dst_ids, src)
    want = src.view(ref.dtype).reshape(c.layout.num_layers, c.layout.num_planes, 3, -1)
    got = c.blocks(dst_ids).reshape(want.shape)
    assert got.tobytes() == want.tobytes()
    untouched = [b for b in range(c.layout.num_blocks) if b not in dst_ids]
    for v, w in zip(c.planes, before):
        assert v[untouched].tobytes() == w[untouched].tobytes()
    assert es == c.layout.elem_size


@pytest.mark.parametrize("src_kind", PAGED)
@pytest.mark.parametrize("dst_kind", PAGED)
def test_copy_between_every_layout_pair(src_kind, dst_kind):
    rng = np.random.default_rng(hash((src_kind, dst_kind)) & 0xFFFF)
    s = make_cache(src_kind, rng)
    d = make_cache(dst_kind, rng)
    if (s.layout.num_planes, s.layout.num_heads) != (d.layout.num_planes, d.layout.num_heads):
        with pytest.raises(InvalidArgument):
            kv.copy_blocks(s.layout, d.layout, [[0, 0]])
        return
    poison(d)
    before = d.snapshot()
    mapping = np.array([[5, 1], [2, 0], [2, 4]])
    kv.copy_blocks(s.layout, d.layout, mapping)
    assert d.blocks(mapping[:, 1]).tobytes() == s.blocks(mapping[:, 0]).tobytes()
    rest = [b for b in range(d.layout.num_blocks) if b not in mapping[:, 1]]
    for v, w in zip(d.planes, before):
        assert v[rest].tobytes() == w[rest].tobytes()


def test_copy_inside_one_cache_refuses_a_block_read_and_written():
    c = make_cache("vllm_flash_nhd", np.random.default_rng(2))
    before = c.snapshot()
    with pytest.raises(InvalidArgument, match="both read and written"):
        kv.copy_blocks(c.layout, c.layout, [[1, 2], [2, 3]])
    assert all(v.tobytes() == w.tobytes() for v, w in zip(c.planes, before))
    kv.copy_blocks(c.layout, c.layout, [[1, 2], [1, 3]])
    assert c.blocks([2, 3]).tobytes() == c.blocks([1, 1]).tobytes()


def test_bad_moves_raise_before_writing():
    rng = np.random.default_rng(3)
    c = make_cache("vllm_flash_nhd", rng)
    out = np.full(c.layout.block_bytes * 2, 0xA5, np.uint8)
    with pytest.raises(OutOfRange, match=r"blocks\[1\]=6 is outside"):
        kv.gather_blocks(c.layout, [0, 6], out)
    assert (out == 0xA5).all()
    ro = out.copy()
    ro.setflags(write=False)
    with pytest.raises(ReadOnlyBuffer):
        kv.gather_blocks(c.layout, [0, 1], ro)
    remote = kv.KVLayout.from_bytes(c.layout.to_bytes())
    with pytest.raises(InvalidArgument, match="another process"):
        kv.copy_blocks(remote, c.layout, [[0, 1]])


_KINDS_H = [k for k in PAGED if k != "mla"]


@st.composite
def _move(draw):
    mla = draw(st.integers(0, 7)) == 0
    sk = "mla" if mla else draw(st.sampled_from(_KINDS_H + ["contiguous"]))
    dk = "mla" if mla else draw(st.sampled_from(_KINDS_H + ["contiguous"]))
    L = draw(st.integers(1, 3))
    H = draw(st.integers(1, 3))
    D = draw(st.sampled_from([4, 8, 16]))
    x = draw(st.sampled_from([1, 2, 4]))
    dtype = draw(st.sampled_from(sorted(kv.DTYPES)))
    bs_s, bs_d = draw(st.sampled_from([1, 2, 4, 8])), draw(st.sampled_from([1, 2, 4, 8]))
    nb_s, nb_d = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    src_ids = draw(st.lists(st.integers(0, nb_s - 1), max_size=6))            # repeats, any order, empty
    T_max = nb_d * bs_d
    src_ids = src_ids[:T_max // bs_s]
    T = len(src_ids) * bs_s
    num_tokens = draw(st.integers(0, T)) if draw(st.booleans()) else None
    used = -(-(T if num_tokens is None else num_tokens) // bs_d)
    dst_ids = draw(st.permutations(range(nb_d)))[:max(used, 0)]
    heads = dst_heads = None
    H_d = H
    if not mla and draw(st.booleans()):
        h0 = draw(st.integers(0, H - 1))
        h1 = draw(st.integers(h0 + 1, H))
        heads = (h0, h1)
        H_d = draw(st.sampled_from([h1 - h0, H]))
    layers = None
    if draw(st.booleans()):
        layers = draw(st.lists(st.integers(0, L - 1), min_size=1, max_size=L, unique=True))
    libs = (draw(st.sampled_from(["numpy", "torch", "fake_cuda"])), draw(st.sampled_from(["numpy", "torch", "fake_cuda"])))
    return dict(sk=sk, dk=dk, L=L, H=H, H_d=H_d, D=D, x=x, dtype=dtype, bs=(bs_s, bs_d), nb=(nb_s, nb_d),
                src_ids=src_ids, dst_ids=list(dst_ids), num_tokens=num_tokens, heads=heads, layers=layers, libs=libs,
                seed=draw(st.integers(0, 2 ** 32 - 1)))


@settings(max_examples=150)
@given(_move())
def test_any_move_equals_the_numpy_reference(m):
    from hauler import _core
    from support.kv_ref import Cache
    before_emu = _core._gpu_emulation()
    _core._use_gpu_emulation(True)
    try:
        _check_move(m, Cache)
    finally:
        _core._use_gpu_emulation(before_emu)


def _check_move(m, Cache):
    rng = np.random.default_rng(m["seed"])
    D = m["D"]
    H, H_d = (1, 1) if m["sk"] == "mla" else (m["H"], m["H_d"])
    dim = D * m["H"] if m["sk"] == "mla" else D
    s = make_cache(m["sk"], rng, L=m["L"], NB=m["nb"][0], BS=m["bs"][0], H=H, D=dim, dtype=m["dtype"],
                   lib=m["libs"][0], x=min(m["x"], dim))
    d = make_cache(m["dk"], rng, L=m["L"], NB=m["nb"][1], BS=m["bs"][1], H=H_d, D=dim, dtype=m["dtype"],
                   lib=m["libs"][1], x=min(m["x"], dim))
    poison(d)
    shadow = Cache(d.layout, d.snapshot(), [])
    src_ids = np.array(m["src_ids"], dtype=np.int64)
    dst_ids = np.array(m["dst_ids"], dtype=np.int32)
    heads = m["heads"]
    dst_heads = None
    if heads is not None and H_d != heads[1] - heads[0]:
        dst_heads = heads
    p = kv.plan(s.layout, src_ids, d.layout, dst_ids, layers=m["layers"], heads=heads, dst_heads=dst_heads,
                num_tokens=m["num_tokens"])
    T = p.num_tokens
    kv.run_plan(p)
    if T:
        vals = s.tokens(src_ids, layers=m["layers"], heads=heads)[:, :, :T]
        shadow.set_tokens(dst_ids, vals, layers=m["layers"], heads=p.dst_heads)
    for i, (v, w) in enumerate(zip(d.planes, shadow.planes)):
        assert v.tobytes() == w.tobytes(), f"plane {i} differs after {p.describe()}"
    assert p.nbytes == T * len(p.layers) * s.layout.num_planes * (p.heads[1] - p.heads[0]) * dim * s.layout.elem_size


def test_device_layouts_run_the_emulated_kernel(gpu_emulation):
    from hauler import _core
    rng = np.random.default_rng(11)
    c = make_cache("vllm_legacy", rng, L=2, NB=5, BS=4, H=2, D=8, x=4, lib="fake_cuda")
    assert c.layout.device == "cuda"
    host = np.full(c.layout.block_bytes * 3, 0xA5, np.uint8)
    from support.device import FakeCudaArray
    dev_out = FakeCudaArray(np.full(c.layout.block_bytes * 3, 0x5A, np.uint8))
    kv.gather_blocks(c.layout, [4, 0, 4], dev_out)      # device -> device
    kv.gather_blocks(c.layout, [4, 0, 4], host)         # device -> (pinned) host: the same one launch
    ref = c.blocks([4, 0, 4]).tobytes()
    assert dev_out.host.tobytes() == ref and host.tobytes() == ref
    assert _core._gpu_emulation()


def test_device_layouts_without_a_gpu_raise_no_device(no_gpu):
    from hauler.errors import NoDevice
    c = make_cache("vllm_flash_nhd", np.random.default_rng(12), lib="fake_cuda")
    out = np.full(c.layout.block_bytes, 0xA5, np.uint8)
    with pytest.raises(NoDevice, match="needs a GPU"):
        kv.gather_blocks(c.layout, [1], out)
    assert (out == 0xA5).all()


def test_more_bad_moves_raise_before_writing():
    from hauler.errors import BufferTooSmall
    rng = np.random.default_rng(13)
    c = make_cache("vllm_flash_hnd", rng, L=2, NB=4, BS=4, H=2, D=8)
    before = c.snapshot()
    small = np.zeros(c.layout.block_bytes * 2 - 1, np.uint8)
    with pytest.raises(BufferTooSmall, match=f"buffer holds {small.size} bytes"):
        kv.scatter_blocks(c.layout, [0, 1], small)
    with pytest.raises(InvalidArgument, match="repeats"):
        kv.scatter_blocks(c.layout, [2, 2], np.zeros(c.layout.block_bytes * 2, np.uint8))
    with pytest.raises(InvalidArgument, match=r"shape \(n, 2\)"):
        kv.copy_blocks(c.layout, c.layout, [1, 2])
    other = make_cache("vllm_flash_nhd", rng, L=2, NB=4, BS=8, H=2, D=8)
    with pytest.raises(InvalidArgument, match="block sizes differ: src 4, dst 8"):
        kv.copy_blocks(c.layout, other.layout, [[0, 0]])
    with pytest.raises(OutOfRange, match=r"dst_blocks\[0\]=4"):
        kv.copy_blocks(c.layout, make_cache("vllm_flash_nhd", rng, L=2, NB=4, BS=4, H=2, D=8).layout, [[0, 4]])
    # a plan for other blocks or buffers is refused, not silently run
    out = np.zeros(c.layout.block_bytes * 2, np.uint8)
    p = kv.plan(c.layout, [0, 1], kv.contiguous_layout_like(c.layout, 2, out), [0, 1])
    with pytest.raises(InvalidArgument, match="other block ids"):
        kv.gather_blocks(c.layout, [1, 0], out, plan=p)
    with pytest.raises(InvalidArgument, match="other layouts or buffers"):
        kv.gather_blocks(c.layout, [0, 1], np.zeros_like(out), plan=p)
    assert all(v.tobytes() == w.tobytes() for v, w in zip(c.planes, before))
    kv.gather_blocks(c.layout, [0, 1], out, plan=p)
    assert out.tobytes() == c.blocks([0, 1]).tobytes()


def test_threads_split_a_move_by_bytes(parallel_always):
    c = make_cache("vllm_flash_nhd", np.random.default_rng(14), L=2, NB=64, BS=16, H=2, D=64)
    ids = np.random.default_rng(15).integers(0, 64, 100)
    for threads in (1, 2, 3, 7):
        out = np.full(c.layout.block_bytes * len(ids), 0xA5, np.uint8)
        kv.gather_blocks(c.layout, ids, out, threads=threads)
        assert out.tobytes() == c.blocks(ids).tobytes(), threads


def test_stream_is_for_device_moves(gpu_emulation):
    from support.device import FakeCudaArray
    c = make_cache("cross_layer_hnd", np.random.default_rng(16), lib="fake_cuda")
    out = FakeCudaArray(np.full(c.layout.block_bytes * 2, 0xA5, np.uint8))
    kv.gather_blocks(c.layout, [5, 2], out, stream=7)  # queued on stream 7 (the emulation runs at once)
    assert out.host.tobytes() == c.blocks([5, 2]).tobytes()
    h = make_cache("cross_layer_hnd", np.random.default_rng(17))
    with pytest.raises(InvalidArgument, match="stream= applies to device layouts"):
        kv.gather_blocks(h.layout, [5, 2], np.zeros(h.layout.block_bytes * 2, np.uint8), stream=7)
    with pytest.raises(InvalidArgument, match="stream must be >= 0"):
        kv.gather_blocks(c.layout, [5, 2], out, stream=-1)


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
@pytest.mark.parametrize("other", ["vllm_flash_nhd", "vllm_flash_hnd", "contiguous"])
def test_legacy_caches_move_as_tiled_transposes(dtype, other):
    """vLLM's legacy caches keep the dims of a head apart (dim-major value, x-packed key): their moves
    to and from token-major layouts are boxes, equal to the numpy reference on poisoned outputs both
    ways, and segments() still lists the canonical pieces of the same move."""
    from hauler import _core
    rng = np.random.default_rng(21)
    leg = make_cache("vllm_legacy", rng, L=2, NB=7, BS=19, H=3, D=40, dtype=dtype, x=8 if dtype == "int8" else 4)
    tok = make_cache(other, rng, L=2, NB=7, BS=19, H=3, D=40, dtype=dtype)
    for s, d, sb, db in ((leg, tok, [6, 1, 6, 3], [0, 4, 2, 5]), (tok, leg, [2, 0, 5], [1, 6, 3])):
        poison(d)
        before = d.snapshot()
        p = kv.plan(s.layout, sb, d.layout, db)
        segs, boxes = p._moves
        assert len(boxes) and len(segs) == 0
        assert p.nbytes == int(p.segments()[:, 2].sum()) == len(sb) * s.layout.block_bytes
        assert p.num_segments > 10 * len(boxes)
        kv.run_plan(p)
        assert d.blocks(db).tobytes() == s.blocks(sb).tobytes()
        rest = [b for b in range(d.layout.num_blocks) if b not in db]
        for v, w in zip(d.planes, before):
            assert v[rest].tobytes() == w[rest].tobytes()
        poison(d)  # the canonical pieces move the same bytes
        _core.kv_copy_host(p.segments(), np.zeros((0, 12), np.int64), 1)
        assert d.blocks(db).tobytes() == s.blocks(sb).tobytes()


def test_legacy_copy_inside_one_cache_moves_whole_rows(parallel_always):
    c = make_cache("vllm_legacy", np.random.default_rng(22), L=1, NB=6, BS=16, H=2, D=32)
    p = kv.plan(c.layout, [4, 0], c.layout, [1, 5])
    boxes = p._moves[1]
    assert len(boxes) and (boxes[:, 2] > 64).all()   # both sides dim-major alike: whole rows per piece
    want = c.blocks([4, 0]).tobytes()
    kv.copy_blocks(c.layout, c.layout, [[4, 1], [0, 5]], plan=p, threads=3)
    assert c.blocks([1, 5]).tobytes() == want


def test_a_reused_plan_checks_what_the_call_passes():
    """The repeated-call path (plan given) still refuses ids changed in place, a buffer made read-only
    and a torch buffer re-pointed since the plan was built, before writing anything."""
    import torch
    c = make_cache("vllm_flash_nhd", np.random.default_rng(23), L=2, NB=6, BS=4, H=2, D=8)
    ids = np.array([4, 1, 4], np.int64)
    out = np.full(c.layout.block_bytes * 3, 0xA5, np.uint8)
    p = kv.plan(c.layout, ids, kv.contiguous_layout_like(c.layout, 3, out), np.arange(3))
    kv.gather_blocks(c.layout, ids, out, plan=p)
    assert out.tobytes() == c.blocks(ids).tobytes()
    ids[1] = 2                                   # the plan keeps its own copy of the ids
    assert list(p.src_blocks) == [4, 1, 4]
    out[...] = 0xA5
    with pytest.raises(InvalidArgument, match="other block ids"):
        kv.gather_blocks(c.layout, ids, out, plan=p)
    assert (out == 0xA5).all()
    ids[1] = 1
    out.setflags(write=False)
    with pytest.raises(ReadOnlyBuffer):
        kv.gather_blocks(c.layout, ids, out, plan=p)
    t = torch.zeros(c.layout.block_bytes * 3, dtype=torch.uint8)
    pt = kv.plan(c.layout, ids, kv.contiguous_layout_like(c.layout, 3, t), np.arange(3))
    kv.gather_blocks(c.layout, ids, t, plan=pt)
    assert t.numpy().tobytes() == c.blocks(ids).tobytes()
    t.set_(torch.zeros(c.layout.block_bytes * 3, dtype=torch.uint8))
    with pytest.raises(InvalidArgument, match="other layouts or buffers"):
        kv.gather_blocks(c.layout, ids, t, plan=pt)
    assert (t == 0).all()
    # scatter and copy with their plans, repeated
    src = np.arange(c.layout.block_bytes * 2, dtype=np.uint64).astype(np.uint8)
    dst_ids = np.array([5, 0], np.int64)
    ps = kv.plan(kv.contiguous_layout_like(c.layout, 2, src), np.arange(2), c.layout, dst_ids)
    for _ in range(2):
        kv.scatter_blocks(c.layout, dst_ids, src, plan=ps)
    assert c.blocks(dst_ids).tobytes() == src.tobytes()
    m = np.array([[5, 2], [0, 3]], np.int64)
    pc = kv.plan(c.layout, m[:, 0], c.layout, m[:, 1])
    kv.copy_blocks(c.layout, c.layout, m, plan=pc)
    assert c.blocks([2, 3]).tobytes() == src.tobytes()
    m[1, 1] = 4
    with pytest.raises(InvalidArgument, match="other block ids"):
        kv.copy_blocks(c.layout, c.layout, m, plan=pc)
