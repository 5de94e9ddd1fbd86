"""The Python API of hauler.datatype: canonical-form equivalence, from_array on numpy views and
torch tensors, the buffer kinds pack/unpack accept, poisoned outputs, threads, describe() and the
named constants."""
from __future__ import annotations

import ctypes
import gc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hauler
from hauler import _core
from hauler.datatype import (AINT, BYTE, C_BOOL, C_DOUBLE_COMPLEX, C_FLOAT_COMPLEX, CHAR, COUNT, DOUBLE,
                             DOUBLE_INT, FLOAT, FLOAT16, FLOAT_INT, INT, INT8, INT16, INT32, INT64, LONG,
                             LONG_DOUBLE, LONG_DOUBLE_INT, LONG_INT, LONG_LONG, NAMED_TYPES, OFFSET, SHORT,
                             SHORT_INT, TWO_INT, UINT8, UINT16, UINT32, UINT64, UNSIGNED, UNSIGNED_LONG,
                             UNSIGNED_SHORT, WCHAR, Datatype)
from support import examples
from support.buffers import POISONS, first_diff, poisoned, random_bytes
from support.mpi_types import NAMED, Spec, build_hauler, byte_index, named, ref_bounds, repeat_map, typemap

SEEDS = st.integers(0, 2**32 - 1)
BASIC = [DOUBLE, INT, SHORT, CHAR, FLOAT, LONG, C_DOUBLE_COMPLEX, DOUBLE_INT]


def _strip(lay: dict) -> dict:
    """The parts of layout() that define the canonical form."""
    return {k: lay[k] for k in ("form", "runs", "dims", "bytes", "span")}


def _reference_pack(spec: Spec, src: np.ndarray, origin: int, count: int = 1) -> np.ndarray:
    ext = lambda s: ref_bounds(s).extent  # noqa: E731
    return src[origin + byte_index(repeat_map(typemap(spec, ext), count, ref_bounds(spec).extent))]


# ---------------------------------------------------------------------------------------------
# Canonical-form equivalence
# ---------------------------------------------------------------------------------------------
@settings(max_examples=examples(500))
@given(count=st.integers(2, 9), bl=st.integers(1, 4), gap=st.integers(-3, 6), old=st.sampled_from(BASIC),
       nrep=st.integers(1, 3))
def test_equivalent_constructions_reach_one_canonical_form(count, bl, gap, old, nrep):
    stride = bl + gap if bl + gap != 0 else bl + 1  # elements
    sb = stride * old.extent
    disps = [i * sb for i in range(count)]
    forms = {  # nrep > 1 repeats at each type's own extent: equal for all but the subarray
        "vector": Datatype.vector(count, bl, stride, old),
        "hvector": Datatype.hvector(count, bl, sb, old),
        "indexed": Datatype.indexed([bl] * count, [i * stride for i in range(count)], old),
        "hindexed": Datatype.hindexed([bl] * count, disps, old),
        "indexed_block": Datatype.indexed_block(bl, [i * stride for i in range(count)], old),
        "hindexed_block": Datatype.hindexed_block(bl, disps, old),
        "struct of equal members": Datatype.struct([bl] * count, disps, [old] * count),
        "vector of contiguous": Datatype.hvector(count, 1, sb, Datatype.contiguous(bl, old)),
        "dup": Datatype.dup(Datatype.vector(count, bl, stride, old)),
    }
    if stride >= bl:  # a 2-D subarray whose rows are `stride` elements long, placed back at 0
        sub = Datatype.subarray([count + 1, stride], [count, bl], [1, 0], old)
        forms["subarray"] = Datatype.hindexed([1], [-stride * old.extent], sub)
    want = _strip(forms["vector"].layout(1))
    for name, t in forms.items():
        got = _strip(t.layout(1))
        assert got == want, f"{name}: {got} != vector's {want}"
        if name == "subarray":
            continue
        want_n, got = _strip(forms["vector"].layout(nrep)), _strip(t.layout(nrep))
        assert got == want_n, f"{name} x{nrep}: {got} != vector's {want_n}"


def test_canonical_forms_fold_and_flatten():
    # a vector whose stride equals the block: one dense block
    assert Datatype.vector(8, 2, 2, DOUBLE).layout()["dims"] == []
    assert Datatype.vector(8, 2, 2, DOUBLE).layout()["runs"] == [(0, 128)]
    # a 3-D subarray that is dense in its two inner dimensions: 2 adjacent planes, one block
    lay = Datatype.subarray([5, 6, 4], [2, 6, 4], [1, 0, 0], DOUBLE).layout()
    assert lay["runs"] == [(192, 384)] and lay["dims"] == []
    # ... and dense in its inner dimension only: 2 x 3 rows of 4 doubles
    lay = Datatype.subarray([5, 6, 4], [2, 3, 4], [1, 2, 0], DOUBLE).layout()
    assert lay["runs"] == [(256, 96)] and lay["dims"] == [(2, 192)]
    # count-1 streams vanish; hvector of hvector with stride = inner span merges
    assert Datatype.hvector(1, 1, 999, Datatype.vector(4, 1, 3, INT)).layout() == Datatype.vector(4, 1, 3, INT).layout()
    inner = Datatype.hvector(4, 1, 16, INT)
    assert _strip(Datatype.hvector(3, 1, 64, inner).layout()) == _strip(Datatype.hvector(12, 1, 16, INT).layout())
    # an irregular indexed type: the run-list form, sorted by type-map order, adjacent runs merged
    lay = Datatype.indexed([1, 2, 1], [0, 5, 7], INT).layout()
    assert lay["form"] == "runs" and lay["runs"] == [(0, 4), (20, 12)]
    # count > 1 repeats at the extent
    lay = Datatype.resized(INT, 0, 12).layout(5)
    assert lay["dims"] == [(5, 12)] and lay["bytes"] == 20


def _view_strategy():
    """A numpy base array and a random view of it: slices with any step (negative too), then a
    random axis permutation."""
    dtypes = st.sampled_from(["f8", ">f8", "<i2", ">i4", "u1", "c16", "f2", "?", "V3", "S5", "i8",
                              [("a", "<i2"), ("b", ">f8")]])

    @st.composite
    def build(draw):
        nd = draw(st.integers(0, 4))
        shape = tuple(draw(st.integers(0, 5)) for _ in range(nd))
        dtype = np.dtype(draw(dtypes))
        order = draw(st.sampled_from("CF"))
        base = np.zeros(shape, dtype=dtype, order=order)
        raw = base.reshape(-1, order="A").view(np.uint8) if base.size else base
        if base.size:
            raw[...] = random_bytes(draw(SEEDS), raw.size)
        idx = []
        for n in shape:
            step = draw(st.sampled_from([1, 1, 2, 3, -1, -2]))
            a = draw(st.integers(0, n))
            b = draw(st.integers(0, n))
            idx.append(slice(a, b, step) if step > 0 else slice(b, a, step))
        view = base[tuple(idx) + (Ellipsis,)]  # a view even when 0-d
        perm = draw(st.permutations(range(view.ndim)))
        return base, view.transpose(perm), tuple(idx), tuple(perm)

    return build()


@settings(max_examples=examples(1000))
@given(case=_view_strategy())
def test_from_array_packs_the_view_in_c_order_and_unpacks_back(case):
    base, view, idx, perm = case
    t, buf, off = Datatype.from_array(view)
    want = np.ascontiguousarray(view).view(np.uint8).ravel() if view.size else np.zeros(0, np.uint8)
    assert t.size == view.size * view.itemsize
    got = t.pack(buf, offset=off)
    assert np.array_equal(got, want), f"{view.dtype} {view.shape} {view.strides}: {first_diff(got, want)}"
    # unpack into a fresh base through the same view: exactly the view's elements change
    base2 = np.zeros_like(base)
    view2 = base2[idx + (Ellipsis,)].transpose(perm)
    t2, buf2, off2 = Datatype.from_array(view2)
    assert _strip(t2.layout()) == _strip(t.layout())
    t2.unpack(got, buf2, offset=off2)
    expect = np.zeros_like(base)
    expect[idx + (Ellipsis,)] = base[idx + (Ellipsis,)]
    assert expect.tobytes() == base2.tobytes()


def test_from_array_cases():
    a = np.arange(48, dtype=np.float64).reshape(6, 8)
    # 0-d
    t, buf, off = Datatype.from_array(np.float64(2.5))
    assert np.array_equal(t.pack(buf, offset=off).view(np.float64), [2.5])
    # empty
    t, buf, off = Datatype.from_array(a[3:3])
    assert t.size == 0 and len(t.pack(buf, offset=off)) == 0
    # transposed, reversed in both axes
    v = a[::-1, ::-3].T
    t, buf, off = Datatype.from_array(v)
    assert np.array_equal(t.pack(buf, offset=off).view(np.float64), np.ascontiguousarray(v).ravel())
    # stride 0 (broadcast): rows repeat
    b = np.broadcast_to(np.arange(3, dtype=np.int32), (4, 3))
    t, buf, off = Datatype.from_array(b)
    assert np.array_equal(t.pack(buf, offset=off).view(np.int32), np.tile(np.arange(3, dtype=np.int32), 4))
    # misaligned memory
    raw = bytearray(8 * 6 + 1)
    m = np.frombuffer(raw, dtype=np.float64, offset=1, count=6)
    m[...] = np.arange(6)
    t, buf, off = Datatype.from_array(m[::2])
    assert np.array_equal(t.pack(buf, offset=off).view(np.float64), [0, 2, 4])
    # a strided view equals the matching vector type
    t, buf, off = Datatype.from_array(a[1:5, 2])
    assert _strip(t.layout()) == _strip(Datatype.vector(4, 1, 8, DOUBLE).layout())
    # a block of a C array equals the subarray placed at its first element
    t, buf, off = Datatype.from_array(a[1:4, 2:7])
    sub = Datatype.hindexed([1], [-(1 * 8 + 2) * 8], Datatype.subarray([6, 8], [3, 5], [1, 2], DOUBLE))
    assert _strip(t.layout()) == _strip(sub.layout())
    # a block of a Fortran array, transposed, equals the Fortran-order subarray
    f = np.asfortranarray(a)
    t, buf, off = Datatype.from_array(f[1:4, 2:7].T)
    subf = Datatype.hindexed([1], [-(2 * 6 + 1) * 8], Datatype.subarray([6, 8], [3, 5], [1, 2], DOUBLE, order="F"))
    assert _strip(t.layout()) == _strip(subf.layout())


def test_from_array_more_dimensions_than_the_strided_form_holds():
    """10-D views: the canonical strided form holds 8 dimensions; the rest become runs."""
    a = np.arange(4**10, dtype=np.uint16).reshape((4,) * 10)
    for v in (a[(slice(None, None, 2),) * 10], a[(slice(1, None, 2),) * 5 + (slice(None, None, -3),) * 5],
              a.transpose(9, 0, 8, 1, 7, 2, 6, 3, 5, 4)[:, ::3, 1:, ::2]):
        t, buf, off = Datatype.from_array(v)
        lay = t.layout()
        assert len(lay["dims"]) <= 8
        assert np.array_equal(t.pack(buf, offset=off).view(np.uint16), np.ascontiguousarray(v).ravel())
        for p in (0, 1, 77, t.size // 2 + 3):
            assert np.array_equal(t.pack(buf, offset=off, position=p, nbytes=t.size // 3),
                                  np.ascontiguousarray(v).view(np.uint8).ravel()[p:p + t.size // 3])


def test_from_array_buffer_keeps_the_memory_alive():
    a = np.arange(100, dtype=np.int64)
    t, buf, off = Datatype.from_array(a[10:90:7])
    want = np.arange(10, 90, 7, dtype=np.int64)
    del a
    gc.collect()
    junk = [np.full(100, -1, dtype=np.int64) for _ in range(50)]  # reuse freed memory if it was freed
    assert np.array_equal(t.pack(buf, offset=off).view(np.int64), want)
    del junk


# ---------------------------------------------------------------------------------------------
# torch CPU tensors
# ---------------------------------------------------------------------------------------------
def _torch():
    return pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[test,torch]')")


def test_from_array_torch_views():
    torch = _torch()
    x = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    for v in (x[:, 1:3, ::2], x.transpose(0, 2), x[1], x[:, :, 3], x.permute(2, 0, 1)[1:, ::3],
              x.expand(2, 3, 4, 5)[:, 1], torch.zeros(0, 3), torch.tensor(7.0)):
        t, buf, off = Datatype.from_array(v)
        want = v.contiguous().reshape(-1).numpy().view(np.uint8)
        assert np.array_equal(t.pack(buf, offset=off), want), tuple(v.stride())
    w = torch.arange(20, dtype=torch.float64, requires_grad=True)
    t, buf, off = Datatype.from_array(w[::3])
    assert np.array_equal(t.pack(buf, offset=off).view(np.float64), np.arange(0, 20, 3))


def test_from_array_torch_bfloat16():
    """bfloat16 is the common dtype of GPU tensors, and numpy has no bfloat16: from_array (and
    pack/unpack of a bfloat16 tensor) must not go through Tensor.numpy(), which refuses it
    (runtime/datatype.py _from_array and runtime/_buffers.py host_object call .numpy())."""
    torch = _torch()
    x = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)
    v = x[:, ::2]
    t, buf, off = Datatype.from_array(v)
    want = v.contiguous().view(torch.int16).numpy().view(np.uint8).ravel()
    assert t.size == want.size
    assert np.array_equal(t.pack(buf, offset=off), want)
    packed = Datatype.contiguous(12, INT16).pack(x)  # a bfloat16 tensor as a plain source buffer
    assert np.array_equal(packed, x.view(torch.int16).numpy().view(np.uint8).ravel())


def test_pack_unpack_accept_torch_cpu_tensors():
    torch = _torch()
    t = Datatype.vector(5, 2, 3, INT)
    src = torch.arange(20, dtype=torch.int32)
    want = np.concatenate([np.arange(i * 3, i * 3 + 2) for i in range(5)]).astype(np.int32).view(np.uint8)
    assert np.array_equal(t.pack(src), want)
    out = torch.full((t.size + 8,), 0xA5, dtype=torch.uint8)
    t.pack(src, out=out[: t.size])
    assert np.array_equal(out[: t.size].numpy(), want) and bool((out[t.size:] == 0xA5).all())
    dst = torch.full((20,), -1, dtype=torch.int32)
    t.unpack(torch.from_numpy(want.copy()), dst)
    exp = np.full(20, -1, dtype=np.int32)
    for i in range(5):
        exp[i * 3:i * 3 + 2] = [i * 3, i * 3 + 1]
    assert np.array_equal(dst.numpy(), exp)


# ---------------------------------------------------------------------------------------------
# Buffer kinds, poisoned outputs
# ---------------------------------------------------------------------------------------------
def _kinds(arr: np.ndarray, writable: bool):
    """The same bytes, fresh each time, as a numpy array (uint8 and int32), a bytearray, a
    memoryview and, for sources, bytes and a read-only array."""
    yield "numpy", arr.copy()
    if arr.size % 4 == 0:
        yield "numpy int32", arr.copy().view(np.int32)
    yield "bytearray", bytearray(arr.tobytes())
    yield "memoryview", memoryview(bytearray(arr.tobytes()))
    if not writable:
        yield "bytes", arr.tobytes()
        yield "read-only numpy", np.frombuffer(arr.tobytes(), dtype=np.uint8)


def _as_np(obj) -> np.ndarray:
    return np.frombuffer(obj, dtype=np.uint8) if not isinstance(obj, np.ndarray) else obj.view(np.uint8).ravel()


@pytest.mark.parametrize("spec", [
    Spec("vector", (6, 2, -3), (named("short"),)),                          # negative stride
    Spec("indexed", ((1, 3, 2), (7, -4, 1)), (named("double"),)),            # run list, negative displacement
    Spec("resized", (-16, 40), (Spec("hvector", (3, 1, 12), (named("int"),)),)),
], ids=repr)
def test_buffer_kinds_for_src_out_packed_and_dst(spec):
    t = build_hauler(spec)
    count = 3
    lo = min(0, t.true_lb + min(0, (count - 1) * t.extent))
    hi = max(t.true_lb + t.true_extent + max(0, (count - 1) * t.extent), 1)
    origin = 8 - lo
    length = (origin + hi + 8 + 3) // 4 * 4
    src = random_bytes(11, length)
    want = _reference_pack(spec, src, origin, count)
    n = len(want)
    for name, s in _kinds(src, writable=False):
        got = t.pack(s, count, offset=origin)
        assert np.array_equal(got, want), name
        for oname, fill in (("numpy", 0), ("bytearray", 1), ("memoryview", 2)):
            big = poisoned(n + 12, POISONS[fill % 2])
            out = big[:n] if oname == "numpy" else (bytearray(big.tobytes()) if oname == "bytearray"
                                                    else memoryview(bytearray(big.tobytes()))[:n])
            res = t.pack(s, count, out=out, offset=origin)
            assert res is out
            assert np.array_equal(_as_np(out)[:n], want), (name, oname)
            if oname == "numpy":
                assert (big[n:] == POISONS[fill % 2]).all()
    # unpack: every packed kind into every writable dst kind; outside the map stays poisoned
    expect = poisoned(length)
    expect[origin + byte_index(repeat_map(typemap(spec, lambda s: ref_bounds(s).extent), count,
                                          ref_bounds(spec).extent))] = want
    for pname, p in _kinds(want, writable=False):
        for dname, d in _kinds(poisoned(length), writable=True):
            res = t.unpack(p, d, count, offset=origin)
            assert res is d
            assert np.array_equal(_as_np(d), expect), (pname, dname, first_diff(_as_np(d), expect))


def test_pack_window_into_larger_out_touches_only_nbytes():
    t = Datatype.vector(50, 3, 7, SHORT)
    src = random_bytes(3, 50 * 7 * 2)
    full = t.pack(src)
    for p, n in [(0, 1), (5, 17), (299, 1), (100, 0), (0, 300), (150, 150)]:
        for fill in POISONS:
            big = poisoned(400, fill)
            t.pack(src, out=big, position=p, nbytes=n)
            assert np.array_equal(big[:n], full[p:p + n])
            assert (big[n:] == fill).all(), (p, n)
        got = t.pack(src, position=p, nbytes=n)
        assert len(got) == n and np.array_equal(got, full[p:p + n])


# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------
@st.composite
def _big_specs(draw):
    old = named(draw(st.sampled_from(["byte", "short", "int", "double", "double_int", "c_double_complex"])))
    kind = draw(st.sampled_from(["vector", "indexed", "subarray", "struct"]))
    if kind == "vector":
        bl = draw(st.integers(1, 5))
        return Spec("vector", (draw(st.integers(500, 3000)), bl, bl + draw(st.integers(-bl, 4))), (old,))
    if kind == "indexed":
        n = draw(st.integers(1, 6))
        inner = Spec("indexed", (tuple(draw(st.integers(1, 4)) for _ in range(n)),
                                 tuple(draw(st.integers(-10, 30)) for _ in range(n))), (old,))
        return Spec("contiguous", (draw(st.integers(300, 900)),), (Spec("resized", (0, 8 * 40), (inner,)),))
    if kind == "subarray":
        sizes = (draw(st.integers(20, 40)), draw(st.integers(10, 40)), draw(st.integers(1, 9)))
        subs = tuple(draw(st.integers(1, s)) for s in sizes)
        return Spec("subarray", (sizes, subs, tuple(s - n for s, n in zip(sizes, subs)),
                                 draw(st.sampled_from("CF"))), (old,))
    kids = (old, named("char"))
    return Spec("contiguous", (draw(st.integers(400, 1200)),),
                (Spec("struct", ((1, 2), (0, draw(st.integers(16, 40)))), kids),))


@settings(max_examples=examples(150), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_big_specs(), count=st.integers(1, 3), seed=SEEDS, data=st.data())
def test_threads_give_the_same_bytes(parallel_always, spec, count, seed, data):
    """Windows of 24 KiB and more (the engine splits windows of at least 8 KiB) packed and
    unpacked with 1, 2 and 3 threads, HAULER_PACK_PARALLEL_MIN=0: the same bytes."""
    t = build_hauler(spec)
    count = max(count, -(-3 * 8192 // t.size))
    lo = min(0, t.true_lb + min(0, (count - 1) * t.extent))
    hi = max(t.true_lb + t.true_extent + max(0, (count - 1) * t.extent), 1)
    origin = -lo
    src = random_bytes(seed, origin + hi)
    want = _reference_pack(spec, src, origin, count)
    total = len(want)
    p = data.draw(st.integers(0, total // 4), label="position")
    n = data.draw(st.integers(total - p - total // 4, total - p), label="nbytes")
    outs = {}
    for threads in (1, 2, 3):
        big = poisoned(n + 16)
        t.pack(src, count, out=big, position=p, nbytes=n, offset=origin, threads=threads)
        assert (big[n:] == POISONS[0]).all()
        outs[threads] = big[:n].copy()
        assert np.array_equal(outs[threads], want[p:p + n]), f"threads={threads}: {first_diff(outs[threads], want[p:p+n])}"
    ref = None
    for threads in (1, 2, 3):
        dst = poisoned(len(src))
        t.unpack(want, dst, count, offset=origin, threads=threads)
        if ref is None:
            ref = dst
        assert np.array_equal(dst, ref), f"unpack threads={threads}"


def test_concurrent_python_threads_share_one_type():
    """pack/unpack release the GIL and share the type's plan cache: many Python threads packing
    different counts and windows of one type at once get the serial results."""
    import threading

    t = Datatype.indexed([2, 1, 3], [0, 5, 9], DOUBLE)  # run list
    src = random_bytes(8, t.extent * 40 + 64)
    want = {c: t.pack(src, c) for c in range(1, 40)}
    errors = []

    def worker(k):
        try:
            for i in range(200):
                c = 1 + (i * 7 + k) % 39
                p = (i * 13) % (t.size * c)
                got = t.pack(src, c, position=p)
                if not np.array_equal(got, want[c][p:]):
                    errors.append((k, c, p))
                dst = poisoned(len(src))
                t.unpack(want[c], dst, c)
                if not np.array_equal(t.pack(dst, c), want[c]):
                    errors.append(("unpack", k, c))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:5]


def test_threads_argument_validated():
    with pytest.raises(hauler.InvalidArgument, match="threads"):
        DOUBLE.pack(np.zeros(8, np.uint8), threads=0)
    assert _core.threads() >= 1


# ---------------------------------------------------------------------------------------------
# describe(), named constants
# ---------------------------------------------------------------------------------------------
def test_describe_shows_the_canonical_form():
    t = Datatype.vector(1024, 1, 4, DOUBLE)
    d = t.describe()
    assert "vector(count=1024, blocklength=1, stride=4)" in d and "oldtype: double" in d and "canonical:" in d
    assert "strided block" in d and "(1024, 32)" in d
    assert "strided-1d" in d
    r = Datatype.indexed([1, 2, 1], [0, 5, 7], INT).describe()
    assert "run list" in r and "(+0, 4)" in r and "(+20, 12)" in r
    assert "empty" in Datatype.contiguous(0, INT).describe()
    d3 = t.describe(3)
    assert f"{3 * 1024 * 8} B total" in d3
    assert "Datatype vector" in repr(t)


def test_named_constants_match_numpy_and_ctypes():
    c = ctypes
    table = {
        CHAR: c.sizeof(c.c_char), BYTE: 1, SHORT: c.sizeof(c.c_short), UNSIGNED_SHORT: c.sizeof(c.c_ushort),
        INT: c.sizeof(c.c_int), UNSIGNED: c.sizeof(c.c_uint), LONG: c.sizeof(c.c_long),
        UNSIGNED_LONG: c.sizeof(c.c_ulong), LONG_LONG: c.sizeof(c.c_longlong), FLOAT: c.sizeof(c.c_float),
        DOUBLE: c.sizeof(c.c_double), LONG_DOUBLE: c.sizeof(c.c_longdouble), C_BOOL: c.sizeof(c.c_bool),
        WCHAR: c.sizeof(c.c_wchar), INT8: 1, INT16: 2, INT32: 4, INT64: 8, UINT8: 1, UINT16: 2, UINT32: 4,
        UINT64: 8, AINT: c.sizeof(c.c_ssize_t), OFFSET: 8, COUNT: 8, FLOAT16: np.dtype(np.float16).itemsize,
        C_FLOAT_COMPLEX: np.dtype(np.complex64).itemsize, C_DOUBLE_COMPLEX: np.dtype(np.complex128).itemsize,
    }
    for t, size in table.items():
        assert (t.size, t.extent, t.lb, t.true_lb) == (size, size, 0, 0), repr(t)
    # pair types: size of the data, extent of the C struct {T a; int b;}
    pairs = {FLOAT_INT: np.float32, DOUBLE_INT: np.float64, LONG_INT: np.int64, TWO_INT: np.int32,
             SHORT_INT: np.int16, LONG_DOUBLE_INT: np.longdouble}
    for i, (t, first) in enumerate(pairs.items()):
        st_ = np.dtype([("a", first), ("b", np.int32)], align=True)
        assert t.size == np.dtype(first).itemsize + 4, repr(t)
        assert t.extent == st_.itemsize, repr(t)
        arr = np.frombuffer(random_bytes(i, 3 * st_.itemsize).tobytes(), dtype=st_).copy()
        want = b"".join(e["a"].tobytes() + e["b"].tobytes() for e in arr)
        assert t.pack(arr, 3).tobytes() == want, repr(t)
    assert set(NAMED_TYPES) >= {name for name in NAMED}
    for dt in ["f8", "f4", "f2", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "c8", "c16", "?", "V7", "S3",
               "M8[s]", np.longdouble]:
        assert Datatype.from_numpy_dtype(dt).size == np.dtype(dt).itemsize, dt


def test_import_does_not_initialize_mpi():
    import subprocess
    import sys

    code = ("import sys, hauler, hauler.datatype; "
            "assert 'mpi4py.MPI' not in sys.modules, 'import hauler imported mpi4py.MPI'")
    subprocess.run([sys.executable, "-c", code], check=True, env=_env_with_path())


def _env_with_path():
    import os
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def test_unpack_of_tiny_blocks_at_every_small_stride_writes_only_the_blocks():
    """Blocks of 1..7 bytes at strides up to 64 over runs of several KiB take the vector unpack
    paths on CPUs that have them (64 destination bytes per step: a byte permute where the stride
    divides 64, else an expand-load with the phase kept modulo the stride): every block lands
    where numpy puts it and the poisoned gaps stay as they were. Packing it back (byte shuffles
    for blocks of 1, 2 and 4 bytes, one to four loads per 16 output bytes) gives the bytes again."""
    rng = np.random.default_rng(11)
    for b in range(1, 8):
        blk = Datatype.contiguous(b, BYTE)
        for stride in range(b + 1, 65):
            for n in (4096 // stride + 1, 5000 + int(rng.integers(0, 64))):
                t = Datatype.hvector(n, 1, stride, blk)
                span = (n - 1) * stride + b
                packed = rng.integers(0, 256, n * b, dtype=np.uint8)
                dst = np.full(span + 64, 0xA5, np.uint8)
                t.unpack(packed, dst)
                want = np.full(span + 64, 0xA5, np.uint8)
                want[(np.arange(n)[:, None] * stride + np.arange(b)[None, :]).ravel()] = packed
                assert np.array_equal(dst, want), (b, stride, n)
                assert np.array_equal(t.pack(dst, threads=1), packed), (b, stride, n)


@pytest.mark.parametrize("stride", [2, 4, 8, 16, 32, 64])
def test_unpack_at_strides_dividing_64_writes_only_the_blocks(stride, parallel_always):
    """A stride that divides 64 puts every 64-byte window of the destination at the same phase:
    on CPUs with AVX-512 VBMI each window is one masked load, one byte permute and one masked
    store. Every block size below the stride, destinations at unaligned addresses, spans that
    are not a multiple of 64, windows of the packed bytes that start and end inside a block, and
    a thread split: the blocks land where numpy puts them, the poisoned gaps and the bytes
    around the type stay as they were."""
    rng = np.random.default_rng(stride)
    for b in range(1, stride):
        blk = Datatype.contiguous(b, BYTE)
        n = int(rng.integers(128 // stride + 2, 12000 // stride + 40))
        if ((n - 1) * stride + b) % 64 == 0:
            n += 1
        t = Datatype.hvector(n, 1, stride, blk)
        span = (n - 1) * stride + b
        where = (np.arange(n)[:, None] * stride + np.arange(b)[None, :]).ravel()
        packed = rng.integers(0, 256, n * b, dtype=np.uint8)
        pos = int(rng.integers(0, min(n * b, 3 * b + 1)))
        nb = n * b - pos - int(rng.integers(0, min(n * b - pos, 2 * b + 1)))
        for off, fill, threads in ((1 + int(rng.integers(0, 63)), POISONS[0], 1), (0, POISONS[1], 2)):
            dst = poisoned(off + span + 67, fill)
            t.unpack(packed[pos:pos + nb], dst, position=pos, offset=off, nbytes=nb, threads=threads)
            want = poisoned(off + span + 67, fill)
            want[off + where[pos:pos + nb]] = packed[pos:pos + nb]
            assert np.array_equal(dst, want), (b, stride, n, off, pos, nb, first_diff(dst, want))
            # and back: pack of the same window from the unaligned source
            src_off = off + 3
            src = poisoned(src_off + span + 5, fill)
            src[src_off + where] = packed
            out = poisoned(nb + 16, fill)
            t.pack(src, out=out, position=pos, offset=src_off, nbytes=nb, threads=threads)
            assert np.array_equal(out[:nb], packed[pos:pos + nb]), (b, stride, n, src_off, pos, nb)
            assert np.all(out[nb:] == fill), (b, stride, n)
