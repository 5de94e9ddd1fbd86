"""The device-array path of pack/unpack without a GPU, the mpi4py way: a FakeCudaArray exposes
`__cuda_array_interface__` over host memory. With no GPU the call must fail with NoDevice and
say why; with the GPU library replaced by the host emulation of the kernels (the same index
code the GPU runs), device pack/unpack must give the host engine's bytes; on a real GPU (the
`real_gpu` tests, run by scripts/gpu_check.sh) CuPy and torch CUDA arrays must give them too."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hauler
from hauler.datatype import DOUBLE, INT, SHORT, Datatype
from support import examples
from support.buffers import POISONS, first_diff, poisoned, random_bytes
from support.device import FakeCudaArray, FakeDLPackArray
from support.mpi_types import build_hauler, type_specs
from support.real_gpu import real_gpu  # noqa: F401 (a fixture)

SEEDS = st.integers(0, 2**32 - 1)
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def _geometry(t: Datatype, count: int, margin: int = 8):
    lo = min(0, t.true_lb + min(0, (count - 1) * t.extent)) if count and t.size else 0
    hi = max(t.true_lb + t.true_extent + max(0, (count - 1) * t.extent), 1) if count and t.size else 1
    origin = margin - lo
    return origin, origin + hi + margin


# ---------------------------------------------------------------------------------------------
# (a) no GPU, no emulation
# ---------------------------------------------------------------------------------------------
def test_no_gpu_reports_why(no_gpu):
    assert hauler.cuda_available() is False
    status = hauler.cuda_status()
    assert status and any(w in status for w in ("no driver", "no device", "not built", "failed")), status
    assert "CUDA_ERROR" not in status or "no device" in status


def test_device_arrays_without_a_gpu_raise_no_device(no_gpu):
    t = Datatype.vector(4, 2, 3, INT)
    src = FakeCudaArray(random_bytes(1, 64))
    out_host = poisoned(t.size)
    with pytest.raises(hauler.NoDevice) as e:
        t.pack(src, out=FakeCudaArray(out_host))
    assert type(e.value) is hauler.NoDevice
    assert hauler.cuda_status() in str(e.value), str(e.value)
    assert (out_host == POISONS[0]).all()
    dst_host = poisoned(64)
    with pytest.raises(hauler.NoDevice) as e:
        t.unpack(FakeCudaArray(random_bytes(2, t.size)), FakeCudaArray(dst_host))
    assert hauler.cuda_status() in str(e.value)
    assert (dst_host == POISONS[0]).all()
    # DLPack device arrays take the same path
    with pytest.raises(hauler.NoDevice):
        t.pack(FakeDLPackArray(random_bytes(1, 64)), out=FakeDLPackArray(out_host))
    assert (out_host == POISONS[0]).all()


def test_argument_errors_come_before_the_device_check(no_gpu):
    """A malformed call says what is wrong with it even on a machine without a GPU."""
    t = Datatype.vector(4, 2, 3, INT)
    out_host = poisoned(t.size - 1)
    with pytest.raises(hauler.BufferTooSmall):
        t.pack(FakeCudaArray(random_bytes(1, 64)), out=FakeCudaArray(out_host))
    with pytest.raises(hauler.ReadOnlyBuffer):
        t.pack(FakeCudaArray(random_bytes(1, 64)), out=FakeCudaArray(poisoned(t.size), readonly=True))
    assert (out_host == POISONS[0]).all()


# ---------------------------------------------------------------------------------------------
# (b) host emulation of the GPU kernels against the host engine
# ---------------------------------------------------------------------------------------------
def test_emulation_is_reported(gpu_emulation):
    assert hauler.cuda_available() is True
    assert "emulation" in hauler.cuda_status()


@settings(parent=FIXTURE_OK, max_examples=examples(800))
@given(spec=type_specs(), count=st.integers(0, 3), seed=SEEDS, data=st.data())
def test_emulated_device_pack_unpack_match_the_host_engine(gpu_emulation, spec, count, seed, data):
    t = build_hauler(spec)
    origin, length = _geometry(t, count, data.draw(st.integers(0, 24), label="margin"))
    src_host = random_bytes(seed, length)
    want = t.pack(src_host, count, offset=origin)  # the host engine
    n = len(want)
    # whole message, two poisons, into a larger buffer
    for fill in POISONS:
        big = poisoned(n + 16, fill)
        res_arr = FakeCudaArray(big[:n])
        res = t.pack(FakeCudaArray(src_host), count, out=res_arr, offset=origin)
        assert res is res_arr
        assert np.array_equal(big[:n], want), f"{spec!r} x{count}: {first_diff(big[:n], want)}"
        assert (big[n:] == fill).all()
    # chunks
    cuts = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=5), label="cuts")) | {0, n})
    pieces = []
    for p, q in zip(cuts, cuts[1:]):
        big = poisoned(q - p + 8)
        t.pack(FakeCudaArray(src_host), count, out=FakeCudaArray(big), position=p, nbytes=q - p, offset=origin)
        assert (big[q - p:] == POISONS[0]).all()
        pieces.append(big[:q - p].copy())
    if pieces:
        assert np.array_equal(np.concatenate(pieces), want)
    # unpack, whole and chunked, against the host unpack (same poisoned destination)
    host_dst = poisoned(length)
    t.unpack(want, host_dst, count, offset=origin)
    dev_dst = poisoned(length)
    t.unpack(FakeCudaArray(want.copy()), FakeCudaArray(dev_dst), count, offset=origin)
    assert np.array_equal(dev_dst, host_dst), first_diff(dev_dst, host_dst)
    chunked = poisoned(length)
    for p, q in zip(cuts, cuts[1:]):
        t.unpack(FakeCudaArray(want[p:q].copy()), FakeCudaArray(chunked), count, position=p, nbytes=q - p,
                 offset=origin)
    assert np.array_equal(chunked, host_dst), first_diff(chunked, host_dst)


@settings(parent=FIXTURE_OK, max_examples=examples(200))
@given(n=st.integers(1, 300), bl=st.integers(1, 9), gap=st.integers(0, 9), shift=st.integers(0, 15),
       old=st.sampled_from([DOUBLE, INT, SHORT, Datatype.named("byte")]), seed=SEEDS)
def test_emulated_device_pack_large_and_misaligned(gpu_emulation, n, bl, gap, shift, old, seed):
    """Word-size choice depends on block length, stride and buffer alignment: shift the buffers."""
    t = Datatype.vector(n, bl, bl + gap, old)
    src = random_bytes(seed, t.extent + shift + 16)
    want = t.pack(src[shift:])
    out = poisoned(t.size + shift + 8)
    t.pack(FakeCudaArray(src[shift:]), out=FakeCudaArray(out[shift:shift + t.size]))
    assert np.array_equal(out[shift:shift + t.size], want)
    assert (out[:shift] == POISONS[0]).all() and (out[shift + t.size:] == POISONS[0]).all()


def test_emulated_from_array_device_view(gpu_emulation):
    """from_array of a strided device view (strides in the interface) gives a type over the
    view's device span; packing it on the device gives the view's elements in C order."""
    a = np.arange(120, dtype=np.float64).reshape(6, 20)
    v = a[1:5, ::-3]
    dev = FakeCudaArray(v, strides=v.strides)
    dev.__cuda_array_interface__["data"] = (v.__array_interface__["data"][0], False)
    t, buf, off = Datatype.from_array(dev)
    assert hasattr(buf, "__cuda_array_interface__")
    out = poisoned(t.size)
    t.pack(buf, out=FakeCudaArray(out), offset=off)
    assert np.array_equal(out.view(np.float64), np.ascontiguousarray(v).ravel())


def test_emulated_dlpack_arrays(gpu_emulation):
    t = Datatype.vector(4, 2, 3, INT)
    src = random_bytes(4, 64)
    out = poisoned(t.size)
    t.pack(FakeDLPackArray(src), out=FakeDLPackArray(out))
    assert np.array_equal(out, t.pack(src))


def test_emulated_read_only_device_output(gpu_emulation):
    t = Datatype.vector(4, 2, 3, INT)
    out = poisoned(t.size)
    with pytest.raises(hauler.ReadOnlyBuffer) as e:
        t.pack(FakeCudaArray(random_bytes(1, 64)), out=FakeCudaArray(out, readonly=True))
    assert type(e.value) is hauler.ReadOnlyBuffer and "out" in str(e.value)
    assert (out == POISONS[0]).all()
    dst = poisoned(64)
    with pytest.raises(hauler.ReadOnlyBuffer) as e:
        t.unpack(FakeCudaArray(random_bytes(2, t.size)), FakeCudaArray(dst, readonly=True))
    assert "dst" in str(e.value)
    assert (dst == POISONS[0]).all()


def test_emulated_mixing_host_and_device_buffers(gpu_emulation):
    t = Datatype.vector(4, 2, 3, INT)
    out = poisoned(t.size)
    for kw in (dict(src=FakeCudaArray(random_bytes(1, 64)), out=out),
               dict(src=random_bytes(1, 64), out=FakeCudaArray(out)),
               dict(src=FakeCudaArray(random_bytes(1, 64)), out=None)):
        with pytest.raises(hauler.InvalidArgument) as e:
            t.pack(kw["src"], out=kw["out"])
        assert type(e.value) is hauler.InvalidArgument and "device" in str(e.value)
        assert (out == POISONS[0]).all()
    dst = poisoned(64)
    for packed, d in ((FakeCudaArray(random_bytes(2, t.size)), dst), (random_bytes(2, t.size), FakeCudaArray(dst))):
        with pytest.raises(hauler.InvalidArgument):
            t.unpack(packed, d)
        assert (dst == POISONS[0]).all()


def test_emulated_device_errors_write_nothing(gpu_emulation):
    t = Datatype.vector(4, 3, 5, SHORT)  # 24 packed bytes over 36
    src = FakeCudaArray(random_bytes(1, 36))
    for kw, cls in ((dict(position=25), hauler.OutOfRange), (dict(position=10, nbytes=15), hauler.OutOfRange),
                    (dict(offset=-1), hauler.BufferTooSmall), (dict(count=2), hauler.BufferTooSmall),
                    (dict(count=-1), hauler.InvalidArgument)):
        out = poisoned(40)
        with pytest.raises(cls) as e:
            t.pack(src, out=FakeCudaArray(out), **kw)
        assert type(e.value) is cls, kw
        assert (out == POISONS[0]).all(), kw
    out = poisoned(23)
    with pytest.raises(hauler.BufferTooSmall):
        t.pack(src, out=FakeCudaArray(out))
    assert (out == POISONS[0]).all()
    # overlapping device buffers
    buf = random_bytes(3, 64)
    before = buf.copy()
    with pytest.raises(hauler.InvalidArgument, match="overlap"):
        t.unpack(FakeCudaArray(buf[30:54]), FakeCudaArray(buf))
    assert np.array_equal(buf, before)
    # a non-contiguous device array (strides in the interface)
    a = poisoned(80)
    with pytest.raises(hauler.InvalidArgument, match="contiguous"):
        t.pack(src, out=FakeCudaArray(a[:40], strides=(2,)))
    assert (a == POISONS[0]).all()


def test_emulated_empty_device_arrays_have_any_strides(gpu_emulation):
    """CuPy and torch give an empty array strides such as (0,) or (8, 0): it has no layout, so it is
    no less contiguous than any other; a non-empty one with the same strides is still refused."""
    t = Datatype.vector(4, 2, 3, INT)
    for shape, strides in (((0,), (0,)), ((0,), (16,)), ((0, 3), (24, 0)), ((2, 0), (0, 8))):
        empty = FakeCudaArray(np.empty(shape, np.uint8), strides=strides)
        assert t.pack(FakeCudaArray(random_bytes(1, 64)), count=0, out=empty) is empty
        assert t.unpack(empty, FakeCudaArray(random_bytes(1, 64)), count=0) is not None
        assert t.pack(empty, count=0, out=FakeCudaArray(np.empty(0, np.uint8))) is not None
    out = poisoned(t.size)
    with pytest.raises(hauler.InvalidArgument, match="not C-contiguous"):
        t.pack(FakeCudaArray(random_bytes(1, 64)), out=FakeCudaArray(out, strides=(0,)))
    assert (out == POISONS[0]).all()


class _StreamArray(FakeCudaArray):
    def __init__(self, host, stream):
        super().__init__(host)
        self.__cuda_array_interface__["stream"] = stream


def test_launch_stream_rule():
    """One rule for every device call: the stream= argument (no wait), else torch's current stream
    for torch CUDA tensors, else the first stream an array's interface names (waits for it)."""
    from hauler._buffers import launch_stream
    a, b = _StreamArray(poisoned(8), None), _StreamArray(poisoned(8), 7)
    assert launch_stream(None, a) == (0, True)
    assert launch_stream(None, a, b) == (7, True)
    assert launch_stream(None, _StreamArray(poisoned(8), 1), b) == (1, True)  # the first one named
    assert launch_stream(5, b) == (5, False)
    assert launch_stream(0, b) == (0, False)
    for bad in (-1, 1.5, "x"):
        with pytest.raises(hauler.InvalidArgument):
            launch_stream(bad, a)
    with pytest.raises(hauler.InvalidArgument):
        launch_stream(None, _StreamArray(poisoned(8), -3))


def test_emulated_bad_stream_writes_nothing(gpu_emulation):
    t = Datatype.vector(4, 2, 3, INT)
    out = poisoned(t.size)
    with pytest.raises(hauler.InvalidArgument, match="stream"):
        t.pack(FakeCudaArray(random_bytes(1, 64)), out=FakeCudaArray(out), stream=-1)
    assert (out == POISONS[0]).all()
    dst = poisoned(64)
    with pytest.raises(hauler.InvalidArgument, match="stream"):
        t.unpack(FakeCudaArray(random_bytes(2, t.size)), FakeCudaArray(dst), stream=-1)
    assert (dst == POISONS[0]).all()


def test_empty_device_arrays_without_a_gpu_raise_no_device(no_gpu):
    t = Datatype.vector(4, 2, 3, INT)
    with pytest.raises(hauler.NoDevice):
        t.pack(FakeCudaArray(random_bytes(1, 64)), count=0, out=FakeCudaArray(np.empty(0, np.uint8), strides=(0,)))


# ---------------------------------------------------------------------------------------------
# (c) a real GPU, where there is one (scripts/gpu_check.sh): CuPy and torch CUDA arrays against
# the host engine, on poisoned device outputs; skipped without a GPU
# ---------------------------------------------------------------------------------------------
@settings(parent=FIXTURE_OK, max_examples=examples(150))
@given(spec=type_specs(), count=st.integers(0, 3), seed=SEEDS, data=st.data())
def test_real_gpu_pack_unpack_match_the_host_engine(real_gpu, spec, count, seed, data):
    """Every canonical form (N-D strided and run lists), whole messages and partial windows."""
    g = real_gpu
    t = build_hauler(spec)
    origin, length = _geometry(t, count, data.draw(st.integers(0, 24), label="margin"))
    src_host = random_bytes(seed, length)
    want = t.pack(src_host, count, offset=origin)
    n = len(want)
    d_src = g.bytes(src_host)
    for fill in POISONS:
        big = g.full(n + 16, fill)
        t.pack(d_src, count, out=big[:n], offset=origin)
        got = g.host(big)
        assert np.array_equal(got[:n], want), f"{g.name} {spec!r} x{count}: {first_diff(got[:n], want)}"
        assert (got[n:] == fill).all()
    cuts = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=5), label="cuts")) | {0, n})
    for p, q in zip(cuts, cuts[1:]):
        big = g.full(q - p + 8, POISONS[0])
        t.pack(d_src, count, out=big[:q - p], position=p, nbytes=q - p, offset=origin)
        got = g.host(big)
        assert np.array_equal(got[:q - p], want[p:q]), f"window [{p}, {q}): {first_diff(got[:q - p], want[p:q])}"
        assert (got[q - p:] == POISONS[0]).all()
    host_dst = poisoned(length)
    t.unpack(want, host_dst, count, offset=origin)
    dev_dst = g.bytes(poisoned(length))
    t.unpack(g.bytes(want), dev_dst, count, offset=origin)
    got = g.host(dev_dst)
    assert np.array_equal(got, host_dst), first_diff(got, host_dst)
    chunked = g.bytes(poisoned(length))
    for p, q in zip(cuts, cuts[1:]):
        t.unpack(g.bytes(want[p:q]), chunked, count, position=p, nbytes=q - p, offset=origin)
    got = g.host(chunked)
    assert np.array_equal(got, host_dst), first_diff(got, host_dst)


@settings(parent=FIXTURE_OK, max_examples=examples(150))
@given(n=st.integers(1, 3000), bl=st.integers(1, 40), gap=st.integers(0, 9), shift=st.integers(0, 15),
       oshift=st.integers(0, 15), old=st.sampled_from([DOUBLE, INT, SHORT, Datatype.named("byte")]), seed=SEEDS)
def test_real_gpu_word_sizes_and_misaligned_pointers(real_gpu, n, bl, gap, shift, oshift, old, seed):
    """The kernel picks its word (1 to 16 bytes) from block length, stride and the two pointers'
    alignment: shift both buffers by every offset below 16."""
    g = real_gpu
    t = Datatype.vector(n, bl, bl + gap, old)
    src = random_bytes(seed, t.extent + shift + 16)
    want = t.pack(src[shift:])
    d_src = g.bytes(src)
    out = g.full(t.size + oshift + 8, POISONS[0])
    t.pack(d_src[shift:], out=out[oshift:oshift + t.size])
    got = g.host(out)
    assert np.array_equal(got[oshift:oshift + t.size], want), first_diff(got[oshift:oshift + t.size], want)
    assert (got[:oshift] == POISONS[0]).all() and (got[oshift + t.size:] == POISONS[0]).all()
    host_dst = poisoned(t.extent + shift + 16)
    t.unpack(want, host_dst[shift:])
    dev_dst = g.bytes(poisoned(t.extent + shift + 16))
    packed = g.full(t.size + oshift, POISONS[1])
    packed[oshift:] = g.bytes(want)
    t.unpack(packed[oshift:], dev_dst[shift:])
    got = g.host(dev_dst)
    assert np.array_equal(got, host_dst), first_diff(got, host_dst)


def test_real_gpu_torch_tensors_run_on_the_current_stream(real_gpu):
    """Without stream=, a pack of torch tensors runs on torch's current stream: it sees the bytes
    written there just before, behind a long kernel, and the call waits for them."""
    if real_gpu.name != "torch":
        pytest.skip("torch's current stream applies to torch tensors")
    torch = real_gpu.mod
    t = Datatype.vector(1024, 3, 5, INT)
    want = random_bytes(9, t.extent)
    src = real_gpu.bytes(poisoned(t.extent))
    new = real_gpu.bytes(want)
    out = real_gpu.full(t.size, POISONS[0])
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # keeps the side stream busy well past a launch elsewhere
        src.copy_(new)
        t.pack(src, out=out)  # on the legacy default stream it would read the poison
    assert np.array_equal(real_gpu.host(out), t.pack(want))


def test_real_gpu_streams(real_gpu):
    """With stream= the call returns once queued; work queued on one stream runs in order."""
    g = real_gpu
    s, handle = g.stream()
    types = [Datatype.vector(4096, 3, 7, DOUBLE), Datatype.subarray([64, 48, 16], [20, 48, 5], [7, 0, 3], INT),
             Datatype.indexed([1, 3, 2, 5], [40, 0, 9, 20], SHORT)]
    srcs = [random_bytes(i, t.extent) for i, t in enumerate(types)]
    d_srcs = [g.bytes(x) for x in srcs]
    outs = [g.full(t.size, POISONS[0]) for t in types]
    backs = [g.bytes(poisoned(t.extent)) for t in types]
    for t, d, o, b in zip(types, d_srcs, outs, backs):
        t.pack(d, out=o, stream=handle)
        t.unpack(o, b, stream=handle)  # same stream: runs after the pack
    s.synchronize()
    for t, x, o, b in zip(types, srcs, outs, backs):
        want = t.pack(x)
        assert np.array_equal(g.host(o), want)
        host_dst = poisoned(t.extent)
        t.unpack(want, host_dst)
        assert np.array_equal(g.host(b), host_dst)


def test_real_gpu_from_array_views(real_gpu):
    """Strided N-D device views through from_array: the view's elements in C order."""
    g = real_gpu
    a = np.random.default_rng(7).standard_normal((6, 20, 9))
    d = g.view(g.bytes(a.view(np.uint8)), np.float64, a.shape)
    for sl in ((slice(1, 5), slice(1, None, 3), slice(None)), (slice(None), slice(2, 3), slice(None, None, 2)),
               (slice(None, None, 2), slice(None), slice(4, 5))):
        v, hv = d[sl], a[sl]
        t, buf, off = Datatype.from_array(v)
        out = g.full(t.size + 8, POISONS[0])
        t.pack(buf, out=out[:t.size], offset=off)
        got = g.host(out)
        assert np.array_equal(got[:t.size].view(np.float64), np.ascontiguousarray(hv).ravel()), sl
        assert (got[t.size:] == POISONS[0]).all()


def test_real_gpu_matches_host(real_gpu):
    g = real_gpu
    for t in (Datatype.vector(1000, 3, 7, DOUBLE), Datatype.indexed([1, 3, 2], [9, 0, 5], INT),
              Datatype.subarray([30, 40, 5], [10, 20, 5], [3, 4, 0], SHORT)):
        src = random_bytes(1, t.extent)
        want = t.pack(src)
        d_out = g.full(t.size, 0xA5)
        t.pack(g.bytes(src), out=d_out)
        assert np.array_equal(g.host(d_out), want)
        d_dst = g.full(t.extent, 0xA5)
        t.unpack(g.bytes(want), d_dst)
        host = poisoned(t.extent)
        t.unpack(want, host)
        assert np.array_equal(g.host(d_dst), host)
