"""Decoding an mpi4py datatype into hauler's IR. mpi4py hands over the envelope and contents
(MPI_Type_get_envelope / MPI_Type_get_contents); the core's decoder (csrc/datatype/decode.cpp,
the one the MPI shim uses too) builds each node and gives it the MPI library's lower bound and
extent, so hauler lays data out exactly as that library does, including where Open MPI and MPICH
disagree."""
from __future__ import annotations

from typing import Any, Dict, List

from . import _core
from .errors import InvalidArgument

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

# mpi4py's MPI.COMBINER_<X> -> the core decoder's combiner names (the Fortran MPI-1 *_INTEGER
# forms last, so that a library aliasing them to the address forms keeps the address forms).
_COMBINERS = [
    ("DUP", "dup"), ("CONTIGUOUS", "contiguous"), ("VECTOR", "vector"), ("HVECTOR", "hvector"),
    ("INDEXED", "indexed"), ("HINDEXED", "hindexed"), ("INDEXED_BLOCK", "indexed_block"),
    ("HINDEXED_BLOCK", "hindexed_block"), ("STRUCT", "struct"), ("SUBARRAY", "subarray"),
    ("DARRAY", "darray"), ("RESIZED", "resized"), ("HVECTOR_INTEGER", "hvector_integer"),
    ("HINDEXED_INTEGER", "hindexed_integer"), ("STRUCT_INTEGER", "struct_integer"),
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
        self.combiners: Dict[int, str] = {}
        for attr, name in _COMBINERS:
            value = getattr(MPI, "COMBINER_" + attr, None)
            if value is not None:
                self.combiners.setdefault(value, name)
        self.constants = [MPI.ORDER_C, MPI.ORDER_FORTRAN, MPI.DISTRIBUTE_BLOCK, MPI.DISTRIBUTE_CYCLIC,
                          MPI.DISTRIBUTE_NONE, MPI.DISTRIBUTE_DFLT_DARG]

    def decode(self, t: Any) -> Any:
        MPI = self.MPI
        combiner = t.Get_envelope()[-1]
        if combiner == MPI.COMBINER_NAMED:
            node = _core.mpi_from_named(self.named.get(_handle(MPI, t), ""), t.Get_size())
        else:
            name = self.combiners.get(combiner)
            if name is None:
                raise InvalidArgument(f"MPI datatype combiner {combiner} (Fortran F90 parameterized types) "
                                      "is not decoded")
            contents = t.Get_contents()
            ints, addrs, types = list(contents[0]), list(contents[1]), list(contents[-1])
            if len(contents) == 4 and len(contents[2]) > 0:
                raise InvalidArgument("large-count (MPI-4 _c) datatype constructors are not decoded yet")
            olds: List[Any] = []
            try:
                olds = [self.decode(x) for x in types]
            finally:
                for x in types:  # contents hand back new handles for derived types
                    if x.Get_envelope()[-1] != MPI.COMBINER_NAMED:
                        x.Free()
            node = _core.mpi_from_contents(name, ints, addrs, olds, self.constants)
        lb, extent = t.Get_extent()
        return _core.mpi_with_library_bounds(node, t.Get_size(), lb, extent)
