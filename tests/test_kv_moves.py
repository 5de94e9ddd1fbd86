"""Block gather/scatter/copy against the numpy reference (fancy indexing of the same tensors), byte for
byte, on poisoned outputs, for every layout pair."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hauler import kv
from hauler.errors import InvalidArgument, OutOfRange, ReadOnlyBuffer
from support.kv_ref import KINDS, make_cache, poison

PAGED = [k for k in KINDS if k != "contiguous"]


def _gather_ref(c, ids):
    return c.blocks(ids)


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
