"""Decoding an mpi4py datatype into hauler's IR through MPI_Type_get_envelope
and MPI_Type_get_contents. Every decoded node takes its lower bound and extent
from the MPI library (MPI_Type_get_extent), so hauler lays data out exactly as
that library does, including where Open MPI and MPICH disagree."""
from __future__ import annotations

from typing import Any, Dict

from . import _core
from .errors import HaulerError, InvalidArgument

# mpi4py attribute names of predefined types -> hauler named types. Several
# names may alias one handle (MPI_INT32_T and MPI_INT); any of them will do.
_PREDEFINED = [
    ("BYTE", "byte"), ("CHAR", "char"), ("SIGNED_CHAR", "signed_char"), ("UNSIGNED_CHAR", "unsigned_char"),
    ("PACKED", "packed"), ("C_BOOL", "c_bool"), ("SHORT", "short"), ("UNSIGNED_SHORT", "unsigned_short"),
    ("INT", "int"), ("UNSIGNED", "unsigned"), ("LONG", "long"), ("UNSIGNED_LONG", "unsigned_long"),
    ("LONG_LONG", "long_long"), ("UNSIGNED_LONG_LONG", "unsigned_long_long"), ("WCHAR", "wchar"),
    ("INT8_T", "int8"), ("INT16_T", "int16"), ("INT32_T", "int32"), ("INT64_T", "int64"),
    ("UINT8_T", "uint8"), ("UINT16_T", "uint16"), ("UINT32_T", "uint32"), ("UINT64_T", "uint64"),
    ("AINT", "aint"), ("OFFSET", "offset"), ("COUNT", "count"), ("FLOAT", "float"), ("DOUBLE", "double"),
    ("LONG_DOUBLE", "long_double"), ("C_FLOAT_COMPLEX", "c_float_complex"),
    ("C_DOUBLE_COMPLEX", "c_double_complex"), ("C_LONG_DOUBLE_COMPLEX", "c_long_double_complex"),
    ("FLOAT_INT", "float_int"), ("DOUBLE_INT", "double_int"), ("LONG_INT", "long_int"), ("TWOINT", "2int"),
    ("INT_INT", "2int"), ("SHORT_INT", "short_int"), ("LONG_DOUBLE_INT", "long_double_int"),
]


def _handle(MPI: Any, t: Any) -> int:
    h = getattr(t, "handle", None)
    return int(h) if h is not None else int(MPI._handleof(t))


def _named_table(MPI: Any) -> Dict[int, str]:
    table: Dict[int, str] = {}
    for attr, name in _PREDEFINED:
        t = getattr(MPI, attr, None)
        if t is None or t == MPI.DATATYPE_NULL:
            continue
        table.setdefault(_handle(MPI, t), name)
    return table


def decode(t: Any) -> Any:
    from mpi4py import MPI

    if not isinstance(t, MPI.Datatype):
        raise InvalidArgument(f"expected an mpi4py MPI.Datatype, got {type(t).__name__}")
    if t == MPI.DATATYPE_NULL:
        raise InvalidArgument("MPI.DATATYPE_NULL has no layout")
    return _Decoder(MPI).decode(t)


class _Decoder:
    def __init__(self, MPI: Any):
        self.MPI = MPI
        self.named = _named_table(MPI)
        self.byte = _core.named("byte")

    def decode(self, t: Any) -> Any:
        MPI = self.MPI
        combiner = t.Get_envelope()[-1]
        if combiner == MPI.COMBINER_NAMED:
            node = self._named(t)
        else:
            contents = t.Get_contents()
            ints, addrs, types = list(contents[0]), list(contents[1]), list(contents[-1])
            if len(contents) == 4 and len(contents[2]) > 0:
                raise InvalidArgument("large-count (MPI-4 _c) datatype constructors are not decoded yet")
            try:
                olds = [self.decode(x) for x in types]
            finally:
                for x in types:  # contents hand back new handles for derived types
                    if x.Get_envelope()[-1] != MPI.COMBINER_NAMED:
                        x.Free()
            node = self._build(combiner, ints, addrs, olds)
        lb, extent = t.Get_extent()
        if node.size != t.Get_size():
            raise HaulerError(f"decoding the MPI datatype gave {node.size} bytes of data but the MPI library "
                              f"reports {t.Get_size()}")
        return _core.with_bounds(node, lb, extent)

    def _named(self, t: Any) -> Any:
        name = self.named.get(_handle(self.MPI, t))
        if name is not None:
            node = _core.named(name)
            if node.size == t.Get_size():
                return node
        # A predefined type hauler has no name for (or of another size here): its bytes.
        return _core.contiguous(t.Get_size(), self.byte)

    def _build(self, c: int, ints: list, addrs: list, olds: list) -> Any:
        MPI = self.MPI
        order = {MPI.ORDER_C: "C", MPI.ORDER_FORTRAN: "F"}
        if c == MPI.COMBINER_DUP:
            return _core.dup(olds[0])
        if c == MPI.COMBINER_CONTIGUOUS:
            return _core.contiguous(ints[0], olds[0])
        if c == MPI.COMBINER_VECTOR:
            return _core.vector(ints[0], ints[1], ints[2], olds[0])
        if c in (MPI.COMBINER_HVECTOR, getattr(MPI, "COMBINER_HVECTOR_INTEGER", -1)):
            return _core.hvector(ints[0], ints[1], addrs[0] if addrs else ints[2], olds[0])
        if c == MPI.COMBINER_INDEXED:
            n = ints[0]
            return _core.indexed(ints[1:1 + n], ints[1 + n:1 + 2 * n], olds[0])
        if c in (MPI.COMBINER_HINDEXED, getattr(MPI, "COMBINER_HINDEXED_INTEGER", -1)):
            n = ints[0]
            disps = addrs if addrs else ints[1 + n:1 + 2 * n]
            return _core.hindexed(ints[1:1 + n], disps, olds[0])
        if c == MPI.COMBINER_INDEXED_BLOCK:
            return _core.indexed_block(ints[1], ints[2:2 + ints[0]], olds[0])
        if c == MPI.COMBINER_HINDEXED_BLOCK:
            return _core.hindexed_block(ints[1], addrs, olds[0])
        if c in (MPI.COMBINER_STRUCT, getattr(MPI, "COMBINER_STRUCT_INTEGER", -1)):
            n = ints[0]
            disps = addrs if addrs else ints[1 + n:1 + 2 * n]
            return _core.struct(ints[1:1 + n], disps, olds)
        if c == MPI.COMBINER_SUBARRAY:
            n = ints[0]
            return _core.subarray(ints[1:1 + n], ints[1 + n:1 + 2 * n], ints[1 + 2 * n:1 + 3 * n],
                                  order[ints[1 + 3 * n]], olds[0])
        if c == MPI.COMBINER_DARRAY:
            size, rank, n = ints[0], ints[1], ints[2]
            g = ints[3:3 + n]
            dist_names = {MPI.DISTRIBUTE_BLOCK: "block", MPI.DISTRIBUTE_CYCLIC: "cyclic",
                          MPI.DISTRIBUTE_NONE: "none"}
            dists = [dist_names[d] for d in ints[3 + n:3 + 2 * n]]
            dargs = [_core.DEFAULT_DARG if a == MPI.DISTRIBUTE_DFLT_DARG else a for a in ints[3 + 2 * n:3 + 3 * n]]
            ps = ints[3 + 3 * n:3 + 4 * n]
            return _core.darray(size, rank, g, dists, dargs, ps, order[ints[3 + 4 * n]], olds[0])
        if c == MPI.COMBINER_RESIZED:
            return _core.resized(olds[0], addrs[0], addrs[1])
        raise InvalidArgument(f"MPI datatype combiner {c} (Fortran F90 parameterized types) is not decoded")
