"""mpi4py and torch habits of hauler.datatype: buffer specs, mpi4py datatypes where a Datatype is
expected, structured numpy dtypes as struct types, describe() with argument names, torch in ->
torch out, unsupported torch devices named."""
from __future__ import annotations

import numpy as np
import pytest

from hauler.datatype import BYTE, DOUBLE, INT, Datatype
from hauler.errors import InvalidArgument


def test_structured_dtype_is_the_struct_of_its_fields():
    dt = np.dtype([("a", "i4"), ("b", "f8"), ("c", "i2", (3,))], align=True)
    t = Datatype.from_numpy_dtype(dt)
    assert t.kind == "resized" and t.extent == dt.itemsize == 24 and t.lb == 0
    assert t.size == 4 + 8 + 6  # data bytes only: padding is not part of the type map
    d = t.describe()
    assert "struct(blocklengths=[1, 1, 3], displacements=[0, 8, 16])" in d
    assert "types[0]: int32" in d and "types[1]: double" in d and "types[2]: int16" in d
    rng = np.random.default_rng(0)
    arr = np.frombuffer(rng.integers(0, 256, 5 * dt.itemsize, dtype=np.uint8).tobytes(), dtype=dt).copy()
    want = b"".join(e["a"].tobytes() + e["b"].tobytes() + e["c"].tobytes() for e in arr)
    assert t.pack(arr, 5).tobytes() == want
    # np.zeros zeroes the padding too; np.zeros_like assigns zero field by field and can leave the
    # padding as the allocator gave it, arr's own bytes once in CI (the check below then failed)
    back = np.zeros(arr.shape, dt)
    t.unpack(t.pack(arr, 5), back, 5)
    assert back.tobytes() != arr.tobytes() or dt.itemsize == t.size  # padding left untouched (zeros)
    for name in dt.names:
        assert np.array_equal(back[name], arr[name])


def test_nested_and_unordered_structured_dtypes():
    inner = np.dtype([("x", "f4"), ("y", "f4")])
    dt = np.dtype({"names": ["p", "id"], "formats": [inner, "u2"], "offsets": [4, 0], "itemsize": 16})
    t = Datatype.from_numpy_dtype(dt)
    assert (t.size, t.extent) == (10, 16)
    arr = np.zeros(3, dt)
    arr["p"]["x"], arr["p"]["y"], arr["id"] = [1, 2, 3], [4, 5, 6], [7, 8, 9]
    # struct members pack in the order the fields are listed, not by offset
    want = b"".join(e["p"].tobytes() + e["id"].tobytes() for e in arr)
    assert t.pack(arr, 3).tobytes() == want
    assert Datatype.from_numpy_dtype(np.dtype(("f8", (2, 3)))).size == 48
    with pytest.raises(InvalidArgument, match="not a numpy dtype"):
        Datatype.from_numpy_dtype("no-such-dtype")


def test_describe_names_every_argument():
    t = Datatype.subarray([4, 6], [2, 3], [1, 2], Datatype.resized(DOUBLE, 0, 16), order="F")
    d = t.describe()
    assert 'subarray(sizes=[4, 6], subsizes=[2, 3], starts=[1, 2], order="F")' in d
    assert "oldtype: resized(lb=0, extent=16)" in d and "  oldtype: double" in d
    big = Datatype.indexed(list(range(1, 21)), list(range(0, 400, 20)), INT).describe()
    assert "blocklengths=[1, 2, 3, 4, 5, 6, ... (20 values)]" in big
    from hauler.datatype import DEFAULT_DARG
    assert f"darray(size=4, rank=1, gsizes=[8], distribs=[block], dargs=[{DEFAULT_DARG}], psizes=[4], " \
        'order="C")' in Datatype.darray(4, 1, [8], ["block"], [DEFAULT_DARG], [4], INT).describe()


def test_hauler_buffer_specs():
    a = np.arange(12.0)
    v = Datatype.vector(3, 1, 2, DOUBLE)
    assert np.array_equal(DOUBLE.pack([a, 4, DOUBLE]).view(np.float64), a[:4])
    assert np.array_equal(DOUBLE.pack((a, DOUBLE)).view(np.float64), a)  # count = bytes / extent
    # extent 40 (5 doubles): 96 // 40 = 2 elements, the second starting at a[5]
    assert np.array_equal(v.pack([a, v]).view(np.float64), np.r_[a[0:5:2], a[5:10:2]])
    out = np.zeros(64, np.uint8)
    DOUBLE.pack([a, 2, DOUBLE], out=[out, 16, BYTE])
    assert np.array_equal(out[:16].view(np.float64), a[:2]) and not out[16:].any()
    dst = np.zeros(12)
    DOUBLE.unpack([out, 16, BYTE], [dst, 2, DOUBLE])
    assert np.array_equal(dst[:2], a[:2]) and not dst[2:].any()
    with pytest.raises(InvalidArgument, match="not of this type"):
        v.pack([a, 2, DOUBLE])
    with pytest.raises(InvalidArgument, match="disagrees with the count 4"):
        DOUBLE.pack([a, 4, DOUBLE], count=3)
    with pytest.raises(InvalidArgument, match="MPI.BYTE or MPI.PACKED"):
        DOUBLE.pack(a, out=[out, 16, DOUBLE])


def test_mpi4py_buffer_specs_and_datatypes():
    MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed")
    a = np.arange(10, dtype=np.int32)
    assert np.array_equal(INT.pack([a, 3, MPI.INT]).view(np.int32), a[:3])
    assert np.array_equal(INT.pack([a, MPI.INT]).view(np.int32), a)
    vec = MPI.DOUBLE.Create_vector(3, 1, 2)
    vec.Commit()
    try:
        ht = Datatype.vector(3, 1, 2, MPI.DOUBLE)        # an mpi4py type where a Datatype goes
        b = np.arange(12.0)
        assert np.array_equal(ht.pack([b, 1, vec]).view(np.float64), b[0:6:2])
        packed = np.zeros(24, np.uint8)
        ht.pack(b, out=[packed, MPI.PACKED])
        lib = bytearray(24)
        assert vec.Pack(b[:5], lib, 0, MPI.COMM_SELF) == 24  # one element: b[:5] spans its extent
        assert packed.tobytes() == bytes(lib)
        st = Datatype.struct([1, 1], [0, 8], [MPI.INT, DOUBLE])
        assert (st.size, st.extent) == (12, 16)
        with pytest.raises(InvalidArgument, match="not of this type"):
            ht.pack([b, 1, MPI.DOUBLE])
    finally:
        vec.Free()
    with pytest.raises(InvalidArgument, match="hauler Datatype or an mpi4py datatype"):
        Datatype.contiguous(2, "double")


def test_torch_in_torch_out_and_unsupported_devices():
    torch = pytest.importorskip("torch")
    x = torch.arange(8, dtype=torch.float64)
    t = Datatype.vector(4, 1, 2, DOUBLE)
    p = t.pack(x)
    assert isinstance(p, torch.Tensor) and p.dtype == torch.uint8
    assert torch.equal(p.view(torch.float64), x[::2])
    assert isinstance(t.pack(x.numpy()), np.ndarray)
    out = np.zeros(32, np.uint8)
    assert t.pack(x, out=out) is out       # a given out is returned as it is
    meta = torch.empty(8, dtype=torch.float64, device="meta")
    with pytest.raises(InvalidArgument, match="on device 'meta': that device is not supported"):
        t.pack(meta)
