"""Bad input to the datatype API: each mistake raises its precise exception class (also the
built-in class a Python user would catch), the message names the offending value, and nothing
is written: every output buffer is poisoned first and must come back byte-for-byte unchanged."""
from __future__ import annotations

import numpy as np
import pytest

import hauler
from hauler.datatype import DEFAULT_DARG, DOUBLE, INT, SHORT, Datatype
from support.buffers import poisoned, random_bytes


def raises(cls, *match):
    """pytest.raises for exactly `cls` (not a subclass or sibling), whose message contains every
    string in `match`."""

    class _Ctx:
        def __enter__(self):
            self._c = pytest.raises(cls)
            self.info = self._c.__enter__()
            return self.info

        def __exit__(self, *exc):
            r = self._c.__exit__(*exc)
            e = self.info.value
            assert type(e) is cls, f"expected exactly {cls.__name__}, got {type(e).__name__}: {e}"
            for m in match:
                assert str(m) in str(e), f"message {str(e)!r} does not mention {m!r}"
            return r

    return _Ctx()


# ---------------------------------------------------------------------------------------------
# Constructors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, cls, words", [
    (lambda: Datatype.contiguous(-1, INT), hauler.InvalidArgument, ["count", "-1"]),
    (lambda: Datatype.vector(-2, 1, 1, INT), hauler.InvalidArgument, ["count", "-2"]),
    (lambda: Datatype.vector(2, -3, 1, INT), hauler.InvalidArgument, ["blocklength", "-3"]),
    (lambda: Datatype.hvector(2, -1, 8, INT), hauler.InvalidArgument, ["blocklength", "-1"]),
    (lambda: Datatype.indexed([1, -4], [0, 2], INT), hauler.InvalidArgument, ["block length", "-4"]),
    (lambda: Datatype.hindexed_block(-5, [0], INT), hauler.InvalidArgument, ["blocklength", "-5"]),
    (lambda: Datatype.struct([1, -1], [0, 8], [INT, INT]), hauler.InvalidArgument, ["block length", "-1"]),
    # overflow of sizes, strides, displacements
    (lambda: Datatype.hvector(2**40, 1, 2**40, DOUBLE), hauler.Overflow, [str(2**40), "64 bits"]),
    (lambda: Datatype.vector(3, 1, 2**61, DOUBLE), hauler.Overflow, ["stride", str(2**61)]),
    (lambda: Datatype.contiguous(2**61, DOUBLE), hauler.Overflow, [str(2**61 - 1)]),
    (lambda: Datatype.contiguous(2**40, Datatype.contiguous(2**30, DOUBLE)), hauler.Overflow, []),
    (lambda: Datatype.indexed([1], [2**61], DOUBLE), hauler.Overflow, ["displacement", str(2**61)]),
    (lambda: Datatype.hindexed([1, 1], [-(2**63), 2**63 - 1], DOUBLE), hauler.Overflow, []),
    (lambda: Datatype.resized(INT, 2**62, 2**62), hauler.Overflow, [str(2**62)]),
    (lambda: Datatype.subarray([2**40, 2**40], [1, 1], [0, 0], DOUBLE), hauler.Overflow, [str(2**40)]),
    (lambda: Datatype.contiguous(2**63, INT), hauler.Overflow, ["count", str(2**63)]),
    (lambda: Datatype.vector(1, 1, -(2**63) - 1, INT), hauler.Overflow, ["stride"]),
    # not integers
    (lambda: Datatype.contiguous(2.0, INT), hauler.InvalidArgument, ["count", "float", "2.0"]),
    (lambda: Datatype.contiguous(True, INT), hauler.InvalidArgument, ["count", "bool"]),
    (lambda: Datatype.vector(2, 1, 1.5, INT), hauler.InvalidArgument, ["stride", "1.5"]),
    (lambda: Datatype.contiguous("3", INT), hauler.InvalidArgument, ["count", "str"]),
    (lambda: Datatype.indexed([1, 2.5], [0, 4], INT), hauler.InvalidArgument, ["blocklengths[1]", "2.5"]),
    (lambda: Datatype.hindexed(3, [0], INT), hauler.InvalidArgument, ["blocklengths", "int"]),
    (lambda: Datatype.contiguous(2, "double"), hauler.InvalidArgument, ["Datatype", "str"]),
    (lambda: Datatype.struct([1], [0], [np.float64]), hauler.InvalidArgument, ["Datatype"]),
    # mismatched lists
    (lambda: Datatype.indexed([1, 2], [0], INT), hauler.InvalidArgument, ["2 block lengths", "1 displacements"]),
    (lambda: Datatype.hindexed([1], [0, 8, 16], INT), hauler.InvalidArgument, ["1 block lengths", "3 displacements"]),
    (lambda: Datatype.struct([1, 1], [0, 8], [INT]), hauler.InvalidArgument, ["2 block lengths", "1 types"]),
    (lambda: Datatype.subarray([4, 4], [2], [0, 0], INT), hauler.InvalidArgument, ["same length"]),
    (lambda: Datatype.darray(2, 0, [8, 8], ["block"], [DEFAULT_DARG] * 2, [2, 1], INT), hauler.InvalidArgument,
     ["same length"]),
    # bad strings
    (lambda: Datatype.subarray([4], [2], [0], INT, order="X"), hauler.InvalidArgument, ["order", "'X'"]),
    (lambda: Datatype.darray(1, 0, [4], ["blocky"], [DEFAULT_DARG], [1], INT), hauler.InvalidArgument,
     ["distribution", "'blocky'"]),
    (lambda: Datatype.darray(1, 0, [4], ["block"], [DEFAULT_DARG], [1], INT, order="row"), hauler.InvalidArgument,
     ["order", "'row'"]),
    (lambda: Datatype.named("quadruple"), hauler.InvalidArgument, ["'quadruple'"]),
    # subarray ranges
    (lambda: Datatype.subarray([4], [2], [3], INT), hauler.InvalidArgument, ["start", "got 3"]),
    (lambda: Datatype.subarray([4], [2], [-1], INT), hauler.InvalidArgument, ["start", "got -1"]),
    (lambda: Datatype.subarray([4, 5], [2, 6], [0, 0], INT), hauler.InvalidArgument, ["subsize", "got 6"]),
    (lambda: Datatype.subarray([4], [0], [0], INT), hauler.InvalidArgument, ["subsize", "got 0"]),
    (lambda: Datatype.subarray([0], [0], [0], INT), hauler.InvalidArgument, ["size", "got 0"]),
    (lambda: Datatype.subarray([], [], [], INT), hauler.InvalidArgument, ["ndims"]),
    # darray grids
    (lambda: Datatype.darray(4, 0, [8], ["block"], [DEFAULT_DARG], [2], INT), hauler.InvalidArgument,
     ["2 processes", "size is 4"]),
    (lambda: Datatype.darray(2, 2, [8], ["block"], [DEFAULT_DARG], [2], INT), hauler.InvalidArgument,
     ["rank", "got 2"]),
    (lambda: Datatype.darray(2, 0, [8], ["none"], [DEFAULT_DARG], [2], INT), hauler.InvalidArgument, ["psize 1"]),
    (lambda: Datatype.darray(2, 0, [9], ["block"], [4], [2], INT), hauler.InvalidArgument,
     ["block size 4", "gsize 9"]),
    (lambda: Datatype.darray(0, 0, [9], ["block"], [DEFAULT_DARG], [1], INT), hauler.InvalidArgument, ["size"]),
], ids=lambda x: "" if callable(x) or isinstance(x, list) else getattr(x, "__name__", str(x)))
def test_constructor_errors(call, cls, words):
    with raises(cls, *words):
        call()


@pytest.mark.parametrize("dist", ["block", "cyclic"])
def test_darray_bad_block_size_message_names_the_value(dist):
    """A darg of 0 is refused; the message should say which value was given, as every other
    constructor error does (csrc/datatype/type.cpp, darray: "block size must be >= 1" and
    "cyclic block size must be >= 1" omit it)."""
    with raises(hauler.InvalidArgument, "block size", "got 0", "dimension 0"):
        Datatype.darray(2, 0, [9], [dist], [0], [2], INT)


def test_error_classes_are_builtin_classes_too():
    assert issubclass(hauler.InvalidArgument, ValueError)
    assert issubclass(hauler.BufferTooSmall, ValueError)
    assert issubclass(hauler.OutOfRange, IndexError)
    assert issubclass(hauler.Overflow, OverflowError)
    assert issubclass(hauler.ReadOnlyBuffer, TypeError)
    assert issubclass(hauler.NoDevice, RuntimeError)
    for c in (hauler.InvalidArgument, hauler.BufferTooSmall, hauler.OutOfRange, hauler.Overflow,
              hauler.ReadOnlyBuffer, hauler.NoDevice):
        assert issubclass(c, hauler.HaulerError)


def test_numpy_integers_are_integers():
    t = Datatype.vector(np.int64(3), np.int32(2), np.uint8(4), DOUBLE)
    assert t.size == 48
    assert t.pack(np.zeros(t.extent, np.uint8), count=np.int16(1)).size == 48


# ---------------------------------------------------------------------------------------------
# pack / unpack: nothing written on error
# ---------------------------------------------------------------------------------------------
VEC = Datatype.vector(4, 3, 5, SHORT)      # 24 packed bytes, true extent 36 (bytes [0, 36))
NEG = Datatype.hvector(3, 1, -16, DOUBLE)  # 24 packed bytes, true bytes [-32, 8)


def _src(t, count=1, offset=0):
    return random_bytes(5, offset + t.true_lb + t.true_extent + (count - 1) * max(t.extent, 0))


def _unchanged(buf: np.ndarray, fill: int = 0xA5) -> None:
    assert (np.asarray(buf) == fill).all(), "an output byte was written by a call that failed"


@pytest.mark.parametrize("kw, cls, words", [
    (dict(count=-1), hauler.InvalidArgument, ["count", "-1"]),
    (dict(count=1.0), hauler.InvalidArgument, ["count", "float"]),
    (dict(position=25), hauler.OutOfRange, ["position 25", "24 bytes"]),
    (dict(position=-1), hauler.OutOfRange, ["position -1"]),
    (dict(position=10, nbytes=15), hauler.OutOfRange, ["15 bytes", "position 10"]),
    (dict(position=0, nbytes=25), hauler.OutOfRange, ["25 bytes"]),
    (dict(nbytes=-3), hauler.InvalidArgument, ["byte count", "-3"]),
    (dict(offset=-1), hauler.BufferTooSmall, ["offset -1"]),
    (dict(offset=2**63 - 1), hauler.Overflow, ["offset", str(2**63 - 1)]),
    (dict(count=2**62), hauler.Overflow, [str(2**62 - 1)]),
    (dict(count=5), hauler.BufferTooSmall, ["src", "36"]),
    (dict(threads=0), hauler.InvalidArgument, ["threads", "0"]),
    (dict(threads=-2), hauler.InvalidArgument, ["threads", "-2"]),
])
def test_pack_errors_write_nothing(kw, cls, words):
    src = _src(VEC)
    assert len(src) == 36
    before = src.copy()
    out = poisoned(64)
    with raises(cls, *words):
        VEC.pack(src, out=out, **kw)
    _unchanged(out)
    assert np.array_equal(src, before)


@pytest.mark.parametrize("kw, cls, words", [
    (dict(count=-1), hauler.InvalidArgument, ["count", "-1"]),
    (dict(position=30), hauler.OutOfRange, ["position 30"]),
    (dict(position=20, nbytes=5), hauler.OutOfRange, ["5 bytes", "position 20"]),
    (dict(offset=-1), hauler.BufferTooSmall, ["dst", "offset -1"]),
    (dict(offset=1), hauler.BufferTooSmall, ["dst", "36"]),
    (dict(count=2), hauler.BufferTooSmall, ["dst"]),
])
def test_unpack_errors_write_nothing(kw, cls, words):
    packed = random_bytes(9, 24)
    before = packed.copy()
    dst = poisoned(36)
    with raises(cls, *words):
        VEC.unpack(packed, dst, **kw)
    _unchanged(dst)
    assert np.array_equal(packed, before)


def test_output_too_small():
    out = poisoned(23)
    with raises(hauler.BufferTooSmall, "23 bytes", "24 packed bytes"):
        VEC.pack(_src(VEC), out=out)
    _unchanged(out)
    # a window needs only its own bytes
    out = poisoned(10)
    VEC.pack(_src(VEC), out=out, position=14)
    with raises(hauler.BufferTooSmall, "10 bytes", "11 packed bytes"):
        VEC.pack(_src(VEC), out=poisoned(10), position=13)
    # packed input too small for unpack
    dst = poisoned(36)
    with raises(hauler.BufferTooSmall, "packed", "23 bytes"):
        VEC.unpack(random_bytes(1, 23), dst)
    _unchanged(dst)


def test_source_smaller_than_the_true_extent():
    out = poisoned(24)
    with raises(hauler.BufferTooSmall, "35 bytes", "[0, 36)"):
        VEC.pack(random_bytes(2, 35), out=out)
    _unchanged(out)
    # a type reaching below its origin: needs offset >= 32
    src = random_bytes(3, 40)
    with raises(hauler.BufferTooSmall, "offset 0", "[-32, 8)"):
        NEG.pack(src, out=out)
    with raises(hauler.BufferTooSmall, "offset 31"):
        NEG.pack(src, out=out, offset=31)
    _unchanged(out)
    NEG.pack(src, out=out, offset=32)
    assert np.array_equal(out, np.concatenate([src[32:40], src[16:24], src[0:8]]))
    with raises(hauler.BufferTooSmall, "offset 33"):
        NEG.pack(src, out=poisoned(24), offset=33)


def test_read_only_outputs():
    src = _src(VEC)
    with raises(hauler.ReadOnlyBuffer, "out"):
        VEC.pack(src, out=bytes(24))
    ro = poisoned(24)
    ro.setflags(write=False)
    with raises(hauler.ReadOnlyBuffer, "out"):
        VEC.pack(src, out=ro)
    _unchanged(ro)
    with raises(hauler.ReadOnlyBuffer, "out"):
        VEC.pack(src, out=memoryview(poisoned(24).tobytes()))
    packed = VEC.pack(src)
    dst = poisoned(36)
    dst.setflags(write=False)
    with raises(hauler.ReadOnlyBuffer, "dst"):
        VEC.unpack(packed, dst)
    _unchanged(dst)
    with raises(hauler.ReadOnlyBuffer, "dst"):
        VEC.unpack(packed, bytes(36))
    # a read-only view from from_array (a broadcast array) cannot be unpacked into
    b = np.broadcast_to(np.arange(3, dtype=np.int16), (4, 3))
    t, buf, off = Datatype.from_array(b)
    with raises(hauler.ReadOnlyBuffer):
        t.unpack(np.zeros(t.size, np.uint8), buf, offset=off)
    assert np.array_equal(b[0], [0, 1, 2])


def test_non_contiguous_and_non_buffer_arguments():
    a = np.zeros((8, 10), np.uint8)
    out = poisoned(24)
    with raises(hauler.InvalidArgument, "src", "contiguous"):
        VEC.pack(a[:, ::2], out=out)
    _unchanged(out)
    big = poisoned(48)
    with raises(hauler.InvalidArgument, "out", "contiguous"):
        VEC.pack(_src(VEC), out=big[::2])
    _unchanged(big)
    dst = poisoned((8, 10))
    with raises(hauler.InvalidArgument, "dst", "contiguous"):
        VEC.unpack(random_bytes(1, 24), dst[:, ::2])
    _unchanged(dst)
    with raises(hauler.InvalidArgument, "src", "list"):
        VEC.pack([0] * 36, out=out)
    with raises(hauler.InvalidArgument, "src", "None"):
        VEC.pack(None, out=out)
    _unchanged(out)


def test_packed_buffer_overlapping_the_typed_buffer():
    buf = random_bytes(4, 64)
    before = buf.copy()
    with raises(hauler.InvalidArgument, "overlaps"):
        VEC.unpack(buf[30:54], buf)  # packed bytes inside dst
    assert np.array_equal(buf, before)
    with raises(hauler.InvalidArgument, "overlaps"):
        VEC.pack(buf, out=buf[40:64])  # out inside src
    assert np.array_equal(buf, before)
    with raises(hauler.InvalidArgument, "overlaps"):
        VEC.unpack(buf[0:24], buf[20:56])  # partly overlapping
    assert np.array_equal(buf, before)
    # adjacent is fine
    VEC.pack(buf[:36], out=buf[36:60])


def test_pack_with_default_out_and_bad_window():
    with raises(hauler.OutOfRange, "position 30"):
        VEC.pack(_src(VEC), position=30)
    with raises(hauler.OutOfRange):
        VEC.pack(_src(VEC), position=4, nbytes=21)


def test_zero_count_needs_no_buffer():
    out = poisoned(8)
    VEC.pack(b"", 0, out=out)
    _unchanged(out)
    VEC.unpack(b"", bytearray(0), 0)
    assert VEC.pack(b"", 0).size == 0


def test_too_irregular_type_is_refused_before_allocating():
    """A struct whose members cannot share one strided form is expanded into runs; past the run
    limit (2**26) the engine refuses with a precise error instead of exhausting memory."""
    big = Datatype.vector(2**14, 1, 2, Datatype.vector(2**14, 1, 2, Datatype.named("byte")))
    s = Datatype.struct([1, 1], [0, 1], [big, Datatype.named("byte")])
    with raises(hauler.InvalidArgument, "too irregular", str(2**28)):
        s.layout()
    out = poisoned(16)
    with raises(hauler.InvalidArgument, "too irregular"):
        s.pack(np.zeros(16, np.uint8), out=out)
    _unchanged(out)


def test_pack_size_and_layout_counts():
    with raises(hauler.InvalidArgument, "count", "-2"):
        VEC.pack_size(-2)
    with raises(hauler.InvalidArgument, "count", "-1"):
        VEC.layout(-1)
    with raises(hauler.Overflow):
        VEC.pack_size(2**62)
    with raises(hauler.InvalidArgument, "Datatype"):
        Datatype(42)


def test_from_mpi_bad_arguments():
    MPI = pytest.importorskip("mpi4py.MPI")
    with raises(hauler.InvalidArgument, "mpi4py", "int"):
        Datatype.from_mpi(3)
    with raises(hauler.InvalidArgument, "DATATYPE_NULL"):
        Datatype.from_mpi(MPI.DATATYPE_NULL)
