"""KVLayout: every named constructor over torch / numpy / __cuda_array_interface__ / DLPack tensors
with their real strides, the properties, serialization, and the precise refusals."""
import numpy as np
import pytest

from hauler import kv
from hauler.errors import BufferTooSmall, InvalidArgument
from support.device import FakeCudaArray, FakeDLPackArray
from support.kv_ref import KINDS, fake_cuda, make_cache


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_every_kind_describes_its_tensors(kind, lib):
    c = make_cache(kind, np.random.default_rng(0), L=2, NB=6, BS=4, H=2, D=8, lib=lib)
    l = c.layout
    assert (l.num_layers, l.num_blocks, l.block_size) == (2, 6, 4)
    assert (l.num_planes, l.num_heads, l.head_size) == ((1, 1, 16) if kind == "mla" else (2, 2, 8))
    assert l.block_bytes == 2 * 4 * 16 * 2 * l.num_planes
    assert l.extents_per_block >= l.num_layers * l.num_planes
    assert l.device is None and l.dtype == "float16" and l.elem_size == 2
    # every element's address lies inside the regions
    total = sum(n for _, n in l.regions())
    assert total >= l.block_bytes * l.num_blocks
    assert kv.KVLayout.from_bytes(l.to_bytes()) == l
    assert l.kind in l.describe()


@pytest.mark.parametrize("dtype", sorted(kv.DTYPES))
def test_element_types_from_torch(dtype):
    torch = pytest.importorskip("torch")
    t = torch.zeros(2, 4, 4, 2, 8, dtype=getattr(torch, dtype))
    l = kv.KVLayout.vllm_flash([t, t.clone()])
    assert l.dtype == dtype and l.elem_size == t.element_size()


def test_extents_report_the_cost():
    c = make_cache("vllm_flash_nhd", np.random.default_rng(0), L=32, NB=4, BS=16, H=8, D=128, dtype="bfloat16")
    assert c.layout.extent_bytes == 16 * 8 * 128 * 2 and c.layout.extents_per_block == 64
    h = make_cache("vllm_flash_hnd", np.random.default_rng(0), L=2, NB=4, BS=16, H=8, D=128)
    assert h.layout.extent_bytes == 16 * 8 * 128 * 2  # an HND block is contiguous too
    n = make_cache("sglang", np.random.default_rng(0), L=2, NB=4, BS=16, H=8, D=128)
    assert n.layout.extent_bytes == 16 * 8 * 128 * 2 and n.layout.extents_per_block == 2 + 2 * 8  # V pool head-major


def test_real_strides_of_a_sliced_view():
    torch = pytest.importorskip("torch")
    big = torch.zeros(2, 10, 4, 6, 8, dtype=torch.float16)
    view = big[:, 2:8, :, 1:3]  # blocks 2..7, heads 1..2: strided, not contiguous
    l = kv.KVLayout.vllm_flash([view])
    assert (l.num_blocks, l.num_heads) == (6, 2) and l.extent_bytes == 2 * 8 * 2


def test_device_tensors_are_device_layouts():
    host = np.zeros((2, 4, 4, 2, 8), np.float16)
    l = kv.KVLayout.vllm_flash([FakeCudaArray(host)])
    assert l.device == "cuda" and l.num_blocks == 4
    strided = np.zeros((2, 4, 2, 4, 8), np.float16).transpose(0, 1, 3, 2, 4)
    l2 = kv.KVLayout.vllm_flash([fake_cuda(strided)])
    l3 = kv.KVLayout.vllm_flash([FakeDLPackArray(host)])
    assert l3.device == "cuda:0" and l3.regions() == l.regions()
    assert l2.kind == "vllm_flash_nhd" and l2.extent_bytes == 4 * 2 * 8 * 2  # HND memory: a block is contiguous


def test_dlpack_tensors():
    torch = pytest.importorskip("torch")

    class DL:  # only the DLPack protocol
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, **kw):
            return self.t.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    t = torch.zeros(2, 4, 2, 4, 8, dtype=torch.bfloat16).transpose(2, 3)
    l = kv.KVLayout.vllm_flash([DL(t)])
    assert l.dtype == "bfloat16" and l == kv.KVLayout.vllm_flash([t])


def test_contiguous_layout_like():
    c = make_cache("vllm_legacy", np.random.default_rng(0), L=2, NB=4, BS=4, H=2, D=8, x=4)
    buf = np.zeros(c.layout.block_bytes * 3, np.uint8)
    s = kv.contiguous_layout_like(c.layout, 3, buf)
    assert s.extents_per_block == 2 * 2 and s.regions() == [(buf.ctypes.data, buf.size)]
    with pytest.raises(BufferTooSmall, match=f"buffer holds {buf.size - 1} bytes"):
        kv.contiguous_layout_like(c.layout, 3, buf[:-1])
    with pytest.raises(InvalidArgument, match="not contiguous"):
        kv.contiguous_layout_like(c.layout, 1, buf.reshape(2, -1)[:, ::2])


def _torch():
    return pytest.importorskip("torch")


def test_refusals():
    torch = _torch()
    a = torch.zeros(2, 4, 4, 2, 8, dtype=torch.float16)
    with pytest.raises(InvalidArgument, match=r"caches\[1\] has shape \(2, 5, 4, 2, 8\) but caches\[0\] has \(2, 4, 4, 2, 8\)"):
        kv.KVLayout.vllm_flash([a, torch.zeros(2, 5, 4, 2, 8, dtype=torch.float16)])
    with pytest.raises(InvalidArgument, match="element type float64"):
        kv.KVLayout.vllm_flash([a.double()])
    with pytest.raises(InvalidArgument, match="K and V have different element types"):
        kv.KVLayout.vllm_legacy([torch.zeros(4, 2, 2, 4, 4, dtype=torch.float16)],
                                [torch.zeros(4, 2, 8, 4, dtype=torch.bfloat16)])
    with pytest.raises(InvalidArgument, match="same bytes"):
        kv.KVLayout.vllm_flash([torch.zeros(2, 1, 4, 2, 8, dtype=torch.float16).expand(2, 4, 4, 2, 8)])
    with pytest.raises(InvalidArgument, match="overlap"):
        kv.KVLayout.explicit("float16", 1, 2, 4, 4, 2, 8, [[a.data_ptr(), a.data_ptr() + 64]],
                             {"block": 256, "token": 64, "head": 16, "dim": 2}, device=None)
    with pytest.raises(InvalidArgument, match="dim 0 must be 2"):
        kv.KVLayout.vllm_flash([torch.zeros(3, 4, 4, 2, 8, dtype=torch.float16)])
    with pytest.raises(InvalidArgument, match="one tensor"):
        kv.KVLayout.vllm_flash(a)
    with pytest.raises(InvalidArgument, match="kind='paged'"):
        kv.KVLayout.from_tensors([a], kind="paged")
    with pytest.raises(InvalidArgument, match="not a serialized KVLayout"):
        kv.KVLayout.from_bytes(b"junk")
    with pytest.raises(InvalidArgument, match="x=3 does not divide head_size=8"):
        kv.KVLayout.explicit("float16", 1, 1, 4, 4, 1, 8, [[a.data_ptr()]],
                             {"block": 512, "token": 16, "head": 128, "dim": 2, "dim_hi": 64}, x=3)
    with pytest.raises(AttributeError):
        kv.KVLayout.vllm_flash([a]).num_blocks = 3


def test_host_objects_must_expose_their_memory():
    with pytest.raises(InvalidArgument, match="is not a tensor"):
        kv.KVLayout.mla([[[[0.0]]]])
    ro = np.zeros((2, 4, 4, 2, 8), np.float16)
    ro.setflags(write=False)
    l = kv.KVLayout.vllm_flash([ro])
    c = np.zeros((2, 4, 4, 2, 8), np.float16)
    from hauler.errors import ReadOnlyBuffer
    with pytest.raises(ReadOnlyBuffer, match="read-only"):
        kv.copy_blocks(kv.KVLayout.vllm_flash([c]), l, [[0, 1]])
    kv.copy_blocks(l, kv.KVLayout.vllm_flash([c]), [[0, 1]])
