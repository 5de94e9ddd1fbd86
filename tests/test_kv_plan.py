"""kv.plan: coalescing (whole blocks, runs of consecutive blocks), token regrouping between block
sizes, head slices, NHD <-> HND, K/V element orders, the Datatype form, and every bad input."""
import numpy as np
import pytest

from hauler import kv
from hauler.datatype import Datatype
from hauler.errors import BufferTooSmall, InvalidArgument, OutOfRange
from support.kv_ref import make_cache, poison


def _staging(layout, n):
    buf = np.zeros(layout.block_bytes * n, np.uint8)
    return buf, kv.contiguous_layout_like(layout, n, buf)


def test_whole_blocks_are_one_piece_and_consecutive_blocks_merge():
    c = make_cache("vllm_flash_nhd", np.random.default_rng(0), L=3, NB=8, BS=4, H=2, D=8)
    buf, st = _staging(c.layout, 4)
    p = kv.plan(c.layout, [5, 1, 2, 7], st, np.arange(4))
    blk = 4 * 2 * 8 * 2
    # blocks 1, 2 are consecutive in the cache and in the staging buffer: one piece
    assert p.num_segments == 3 * 2 * 3
    assert sorted(set(p.segments()[:, 2].tolist())) == [blk, 2 * blk]
    assert p.nbytes == 3 * 2 * 4 * blk
    # staging -> staging of the same shape is one piece per plane run: the whole buffer
    buf2, st2 = _staging(c.layout, 4)
    q = kv.plan(st, np.arange(4), st2, np.arange(4))
    assert q.num_segments == 1 and q.segments()[0].tolist() == [st.regions()[0][0], st2.regions()[0][0], buf.size]


def test_hnd_to_hnd_moves_whole_blocks_and_hnd_to_nhd_moves_rows():
    rng = np.random.default_rng(1)
    a = make_cache("vllm_flash_hnd", rng, L=1, NB=4, BS=4, H=2, D=8)
    b = make_cache("vllm_flash_hnd", rng, L=1, NB=4, BS=4, H=2, D=8)
    p = kv.plan(a.layout, [0, 2], b.layout, [3, 1])
    assert p.num_segments == 2 * 2 and (p.segments()[:, 2] == 4 * 2 * 8 * 2).all()
    n = make_cache("vllm_flash_nhd", rng, L=1, NB=4, BS=4, H=2, D=8)
    q = kv.plan(a.layout, [0], n.layout, [0])
    assert q.num_segments == 2 * 4 * 2 and (q.segments()[:, 2] == 8 * 2).all()


def test_token_regrouping_between_block_sizes():
    rng = np.random.default_rng(2)
    src = make_cache("vllm_flash_nhd", rng, L=2, NB=8, BS=4, H=2, D=8)
    dst = make_cache("vllm_flash_nhd", rng, L=2, NB=4, BS=8, H=2, D=8)
    poison(dst)
    ids = [6, 1, 3]  # 12 tokens -> 1.5 destination blocks
    p = kv.plan(src.layout, ids, dst.layout, [2, 0])
    assert p.num_tokens == 12
    kv.run_plan(p)
    assert dst.tokens([2, 0])[:, :, :12].tobytes() == src.tokens(ids).tobytes()
    assert (dst.tokens([0])[:, :, 4:] == 0xA5A5).all()  # the rest of the half-used block is untouched
    # and back: 8-token blocks into 4-token blocks, num_tokens cutting the last one
    back = make_cache("vllm_flash_nhd", rng, L=2, NB=8, BS=4, H=2, D=8)
    kv.run_plan(kv.plan(dst.layout, [2, 0], back.layout, [7, 0, 4], num_tokens=10))
    assert back.tokens([7, 0, 4])[:, :, :10].tobytes() == src.tokens(ids)[:, :, :10].tobytes()


def test_head_slices_land_where_asked():
    rng = np.random.default_rng(3)
    src = make_cache("vllm_flash_nhd", rng, L=2, NB=4, BS=4, H=4, D=8)
    narrow = make_cache("vllm_flash_hnd", rng, L=2, NB=4, BS=4, H=2, D=8)
    kv.run_plan(kv.plan(src.layout, [1, 3], narrow.layout, [0, 2], heads=(2, 4)))
    assert narrow.blocks([0, 2]).tobytes() == src.blocks([1, 3], heads=(2, 4)).tobytes()
    wide = make_cache("vllm_flash_nhd", rng, L=2, NB=4, BS=4, H=4, D=8)
    poison(wide)
    kv.run_plan(kv.plan(narrow.layout, [0], wide.layout, [3], dst_heads=(1, 3)))
    assert wide.blocks([3], heads=(1, 3)).tobytes() == narrow.blocks([0]).tobytes()
    assert (wide.blocks([3], heads=(0, 1)) == 0xA5A5).all() and (wide.blocks([3], heads=(3, 4)) == 0xA5A5).all()


def test_legacy_x_packed_key_to_flash():
    rng = np.random.default_rng(4)
    leg = make_cache("vllm_legacy", rng, L=2, NB=4, BS=4, H=2, D=16, x=8)
    fl = make_cache("vllm_flash_nhd", rng, L=2, NB=4, BS=4, H=2, D=16)
    p = kv.plan(leg.layout, [3, 0], fl.layout, [1, 2])
    kv.run_plan(p)
    assert fl.blocks([1, 2]).tobytes() == leg.blocks([3, 0]).tobytes()
    # K: runs of x dims (8 elements = 16 bytes); V: single elements (the value cache is dim-major)
    assert set(p.segments()[:, 2].tolist()) == {16, 2}


def _span(layout):
    """A writable numpy view of the memory the layout spans, and the address it starts at."""
    regs = layout.regions()
    lo, hi = regs[0][0], max(a + n for a, n in regs)
    arr = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint8 * (hi - lo)).from_address(lo))
    return arr, lo


# single-tensor layouts, so one numpy span covers each side and nothing else
@pytest.mark.parametrize("dst_kind", ["cross_layer_nhd", "lmcache_chunk", "explicit", "contiguous"])
def test_datatypes_perform_the_move(dst_kind):
    rng = np.random.default_rng(5)
    src = make_cache("cross_layer_hnd", rng, L=2, NB=4, BS=4, H=2, D=8)
    dst = make_cache(dst_kind, rng, L=2, NB=4, BS=4, H=2, D=8, x=4)
    poison(dst)
    p = kv.plan(src.layout, [2, 0, 2], dst.layout, [1, 3, 0])
    assert isinstance(p.src_type, Datatype) and p.src_type.size == p.dst_type.size == p.nbytes
    sbuf, slo = _span(src.layout)
    packed = p.src_type.pack(sbuf, offset=-slo)   # displacements are absolute: origin 0 = MPI_BOTTOM
    dbuf, dlo = _span(dst.layout)
    p.dst_type.unpack(packed, dbuf, offset=-dlo)
    assert dst.blocks([1, 3, 0]).tobytes() == src.blocks([2, 0, 2]).tobytes()


def test_plan_building_never_touches_memory():
    rng = np.random.default_rng(6)
    c = make_cache("vllm_flash_nhd", rng, L=2, NB=4, BS=4, H=2, D=8)
    remote = kv.KVLayout.from_bytes(c.layout.to_bytes())
    assert remote.remote and remote == kv.KVLayout.from_bytes(c.layout.to_bytes())
    fake = kv.KVLayout.explicit("bfloat16", 2, 2, 4, 4, 2, 8, [[1 << 40, (1 << 40) + 4096], [1 << 41, (1 << 41) + 4096]],
                                {"block": 256, "token": 32, "head": 16, "dim": 2})
    p = kv.plan(c.layout, [0, 1], fake if c.layout.dtype == "bfloat16" else
                kv.KVLayout.explicit(c.layout.dtype, 2, 2, 4, 4, 2, 8, [[1 << 40, (1 << 40) + 4096],
                                                                       [1 << 41, (1 << 41) + 4096]],
                                     {"block": 256, "token": 32, "head": 16, "dim": 2}), [2, 3])
    assert p.segments()[:, 1].min() >= 1 << 40


@pytest.mark.parametrize("call, exc, match", [
    (lambda s, d: kv.plan(s, [0, 4], d, [0, 1]), OutOfRange, r"src_blocks\[1\]=4 is outside the src layout's 4 blocks"),
    (lambda s, d: kv.plan(s, [0], d, [-1]), OutOfRange, r"dst_blocks\[0\]=-1"),
    (lambda s, d: kv.plan(s, [0, 1, 2], d, [0, 1]), BufferTooSmall, "12 source tokens"),
    (lambda s, d: kv.plan(s, [0, 1], d, [0, 0]), InvalidArgument, r"dst_blocks\[1\]=0 repeats dst_blocks\[0\]"),
    (lambda s, d: kv.plan(s, [0], d, [0], num_tokens=5), OutOfRange, "num_tokens=5 exceeds the 4 tokens"),
    (lambda s, d: kv.plan(s, [0], d, [0], heads=(1, 3)), OutOfRange, r"heads \(1, 3\)"),
    (lambda s, d: kv.plan(s, [0], d, [0], heads=(0, 1), dst_heads=(0, 2)), InvalidArgument, "spans 2 heads"),
    (lambda s, d: kv.plan(s, [0], d, [0], layers=[0, 2]), OutOfRange, r"layers\[1\]=2"),
    (lambda s, d: kv.plan(s, [0], d, [0], layers=[1, 1]), InvalidArgument, "names a layer twice"),
    (lambda s, d: kv.plan(s, np.array([0.0]), d, [0]), InvalidArgument, "int32 or int64"),
    (lambda s, d: kv.plan(s, np.zeros((1, 1), np.int64), d, [0]), InvalidArgument, "1-D"),
])
def test_bad_plans_name_both_sides(call, exc, match):
    rng = np.random.default_rng(7)
    s = make_cache("vllm_flash_nhd", rng, L=2, NB=4, BS=4, H=2, D=8).layout
    d = make_cache("vllm_flash_hnd", rng, L=2, NB=4, BS=4, H=2, D=8).layout
    with pytest.raises(exc, match=match):
        call(s, d)


@pytest.mark.parametrize("other, match", [
    (dict(D=16), "head sizes differ: src has 8, dst has 16"),
    (dict(L=3), "layer counts differ: src has 2, dst has 3"),
    (dict(dtype="float32"), "element types differ: src is float16, dst is float32"),
])
def test_incompatible_layouts(other, match):
    rng = np.random.default_rng(8)
    s = make_cache("vllm_flash_nhd", rng, L=2, NB=4, BS=4, H=2, D=8)
    kw = dict(L=2, NB=4, BS=4, H=2, D=8)
    kw.update(other)
    d = make_cache("vllm_flash_nhd", rng, **kw)
    with pytest.raises(InvalidArgument, match=match):
        kv.plan(s.layout, [0], d.layout, [0])
    m = make_cache("mla", rng, L=2, NB=4, BS=4, H=2, D=8)
    with pytest.raises(InvalidArgument, match="plane counts"):
        kv.plan(s.layout, [0], m.layout, [0])
