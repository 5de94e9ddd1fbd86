"""MPI derived datatypes, packed and unpacked fast on host and GPU buffers.

    from hauler.datatype import Datatype, DOUBLE
    t = Datatype.vector(1024, 1, 4, DOUBLE)          # every 4th double
    packed = t.pack(a)                                # numpy uint8 array of t.pack_size() bytes
    t.unpack(packed, b)                               # scatter back into b

Types come from MPI-like constructors (C argument order), from a strided
numpy/torch view (:meth:`Datatype.from_array`), or from an mpi4py datatype
(:meth:`Datatype.from_mpi`, decoded through its envelope and contents, with
bounds taken from that MPI library so hauler packs exactly as it would).

``position`` and ``nbytes`` select a window of the packed message, so a large
message can be packed and unpacked in chunks: ``pack`` writes packed bytes
[position, position + nbytes) to ``out[0:nbytes]``; ``unpack`` reads them from
``packed[0:nbytes]``. ``offset`` is the byte position of the type's origin
(displacement 0) inside the typed buffer, so types with negative lower bounds
work on Python buffers.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._buffers import (as_int, as_ints, check_writable_device, device_buffer, host_object, is_torch_tensor,
                       launch_stream, torch_as_numpy)
from .errors import InvalidArgument

__all__ = ["Datatype", "NAMED_TYPES", "DEFAULT_DARG"]  # the named-type constants are appended below

DEFAULT_DARG = _core.DEFAULT_DARG


class Datatype:
    """An immutable datatype. Constructors follow MPI's C argument order."""

    __slots__ = ("_t",)

    def __init__(self, core_type: Any):
        if not isinstance(core_type, _core.Type):
            raise InvalidArgument("use the Datatype constructors (Datatype.vector(...), ...) to build types")
        self._t = core_type

    # -- constructors ---------------------------------------------------------------------------
    @staticmethod
    def named(name: str) -> "Datatype":
        """A predefined type by name: 'double', 'int', 'byte', 'double_int', ... (see NAMED_TYPES)."""
        return Datatype(_core.named(str(name)))

    @staticmethod
    def contiguous(count: int, oldtype: "Datatype") -> "Datatype":
        return Datatype(_core.contiguous(as_int("count", count), _t(oldtype)))

    @staticmethod
    def vector(count: int, blocklength: int, stride: int, oldtype: "Datatype") -> "Datatype":
        """`count` blocks of `blocklength` elements, `stride` elements apart."""
        return Datatype(_core.vector(as_int("count", count), as_int("blocklength", blocklength),
                                     as_int("stride", stride), _t(oldtype)))

    @staticmethod
    def hvector(count: int, blocklength: int, stride: int, oldtype: "Datatype") -> "Datatype":
        """Like vector, with `stride` in bytes."""
        return Datatype(_core.hvector(as_int("count", count), as_int("blocklength", blocklength),
                                      as_int("stride", stride), _t(oldtype)))

    @staticmethod
    def indexed(blocklengths: Sequence[int], displacements: Sequence[int], oldtype: "Datatype") -> "Datatype":
        return Datatype(_core.indexed(as_ints("blocklengths", blocklengths),
                                      as_ints("displacements", displacements), _t(oldtype)))

    @staticmethod
    def hindexed(blocklengths: Sequence[int], displacements: Sequence[int], oldtype: "Datatype") -> "Datatype":
        """Like indexed, with displacements in bytes."""
        return Datatype(_core.hindexed(as_ints("blocklengths", blocklengths),
                                       as_ints("displacements", displacements), _t(oldtype)))

    @staticmethod
    def indexed_block(blocklength: int, displacements: Sequence[int], oldtype: "Datatype") -> "Datatype":
        return Datatype(_core.indexed_block(as_int("blocklength", blocklength),
                                            as_ints("displacements", displacements), _t(oldtype)))

    @staticmethod
    def hindexed_block(blocklength: int, displacements: Sequence[int], oldtype: "Datatype") -> "Datatype":
        return Datatype(_core.hindexed_block(as_int("blocklength", blocklength),
                                             as_ints("displacements", displacements), _t(oldtype)))

    @staticmethod
    def struct(blocklengths: Sequence[int], displacements: Sequence[int],
               types: Sequence["Datatype"]) -> "Datatype":
        return Datatype(_core.struct(as_ints("blocklengths", blocklengths),
                                     as_ints("displacements", displacements), [_t(t) for t in types]))

    @staticmethod
    def subarray(sizes: Sequence[int], subsizes: Sequence[int], starts: Sequence[int],
                 oldtype: "Datatype", order: str = "C") -> "Datatype":
        """The block subsizes at starts of an array of sizes; order 'C' (row-major) or 'F'."""
        return Datatype(_core.subarray(as_ints("sizes", sizes), as_ints("subsizes", subsizes),
                                       as_ints("starts", starts), str(order), _t(oldtype)))

    @staticmethod
    def darray(size: int, rank: int, gsizes: Sequence[int], distribs: Sequence[str], dargs: Sequence[int],
               psizes: Sequence[int], oldtype: "Datatype", order: str = "C") -> "Datatype":
        """Process `rank`'s part of a distributed array; distribs are 'block', 'cyclic' or 'none',
        dargs DEFAULT_DARG for the default block size."""
        return Datatype(_core.darray(as_int("size", size), as_int("rank", rank), as_ints("gsizes", gsizes),
                                     [str(d) for d in distribs], as_ints("dargs", dargs),
                                     as_ints("psizes", psizes), str(order), _t(oldtype)))

    @staticmethod
    def resized(oldtype: "Datatype", lb: int, extent: int) -> "Datatype":
        return Datatype(_core.resized(_t(oldtype), as_int("lb", lb), as_int("extent", extent)))

    @staticmethod
    def dup(oldtype: "Datatype") -> "Datatype":
        return Datatype(_core.dup(_t(oldtype)))

    @staticmethod
    def from_numpy_dtype(dtype: Any) -> "Datatype":
        """The named type of a numpy scalar dtype (bytes of its size for dtypes MPI has no name for)."""
        dt = np.dtype(dtype)
        name = _NUMPY_NAMES.get((dt.kind, dt.itemsize))
        if name is not None and not dt.fields:
            return Datatype.named(name)
        return Datatype.contiguous(dt.itemsize, BYTE)

    @staticmethod
    def from_array(array: Any) -> Tuple["Datatype", Any, int]:
        """The type of a strided numpy/torch/device view, the buffer spanning its memory, and the
        offset of the view's first element in that buffer: ``t.pack(buf, offset=off)`` packs the
        view's elements in logical (C) order."""
        return _from_array(array)

    @staticmethod
    def from_mpi(mpi_datatype: Any) -> "Datatype":
        """Decode an mpi4py datatype through MPI_Type_get_envelope/get_contents, with the core's
        decoder (the one the MPI shim uses) and the library's bounds."""
        from ._mpi_decode import decode  # imports mpi4py.MPI, so only when asked
        return Datatype(decode(mpi_datatype))

    # -- properties -----------------------------------------------------------------------------
    size = property(lambda self: self._t.size, doc="Bytes of data in one element.")
    lb = property(lambda self: self._t.lb, doc="Lower bound.")
    ub = property(lambda self: self._t.ub, doc="Upper bound.")
    extent = property(lambda self: self._t.extent, doc="Extent: ub - lb.")
    true_lb = property(lambda self: self._t.true_lb, doc="Lowest byte of data.")
    true_extent = property(lambda self: self._t.true_extent, doc="Span of the data bytes.")
    kind = property(lambda self: self._t.kind, doc="The constructor that made this type.")

    def pack_size(self, count: int = 1) -> int:
        """Bytes of the packed message of `count` elements."""
        return self._t.pack_size(as_int("count", count))

    def layout(self, count: int = 1) -> dict:
        """The canonical form of `count` elements: form, runs, dims, bytes, span, kernel, word."""
        return self._t.layout(as_int("count", count))

    def describe(self, count: int = 1) -> str:
        """The constructor tree and the canonical form, readable."""
        lay = self._t.layout(as_int("count", count))
        return (self._t.describe_tree() + "canonical: " + self._t.describe_layout(count) +
                f"\nhost kernel: {lay['kernel']}" + (f", {lay['word']}-byte words" if lay["word"] else ", memcpy"))

    def __repr__(self) -> str:
        return f"<Datatype {self.kind} size={self.size} lb={self.lb} extent={self.extent}>"

    # -- pack / unpack --------------------------------------------------------------------------
    def pack(self, src: Any, count: int = 1, out: Any = None, position: int = 0, offset: int = 0,
             nbytes: Optional[int] = None, *, threads: Optional[int] = None, stream: int = 0) -> Any:
        """Pack `count` elements whose origin is at byte `offset` of `src`.

        Writes packed bytes [position, position + nbytes) (default: to the end) into out[0:nbytes]
        and returns `out` (a new numpy uint8 array when out is None). Device arrays (CUDA array
        interface or DLPack) go to the GPU kernels: on `stream` (a cudaStream_t as an int) the call
        returns once they are queued; without one it runs on the array's stream and waits for them.
        Every check runs before any byte is written."""
        count = as_int("count", count)
        position, offset = as_int("position", position), as_int("offset", offset)
        nb = None if nbytes is None else as_int("nbytes", nbytes)
        dsrc = device_buffer(src)
        dout = device_buffer(out) if out is not None else None
        if dsrc is not None or dout is not None:
            if dsrc is None or dout is None:
                raise InvalidArgument("pack on a device array needs both src and out on the device "
                                      "(out must be given)")
            check_writable_device(dout, "out")
            st, wait = launch_stream(stream or None, src, out)
            _core.pack_device(self._t, count, dsrc.ptr, dsrc.nbytes, offset, dout.ptr, dout.nbytes, position,
                              nb, st, wait)
            return out
        src_h = host_object(src, "src")
        if out is None:
            n = self._t.pack_size(count) - position if nb is None else nb
            out = np.empty(max(n, 0), dtype=np.uint8)
        out_h = host_object(out, "out", writable=True)
        _core.pack_host(self._t, count, src_h, offset, out_h, position, nb, _threads(threads))
        return out

    def unpack(self, packed: Any, dst: Any, count: int = 1, position: int = 0, offset: int = 0,
               nbytes: Optional[int] = None, *, threads: Optional[int] = None, stream: int = 0) -> Any:
        """Unpack packed bytes [position, position + nbytes) (default: to the end), read from
        packed[0:nbytes], into the `count` elements whose origin is at byte `offset` of `dst`.
        Returns `dst`. Bytes of `dst` outside the type map are never touched."""
        count = as_int("count", count)
        position, offset = as_int("position", position), as_int("offset", offset)
        nb = None if nbytes is None else as_int("nbytes", nbytes)
        dpk, ddst = device_buffer(packed), device_buffer(dst)
        if dpk is not None or ddst is not None:
            if dpk is None or ddst is None:
                raise InvalidArgument("unpack on a device array needs both packed and dst on the device")
            check_writable_device(ddst, "dst")
            st, wait = launch_stream(stream or None, dst, packed)
            _core.unpack_device(self._t, count, dpk.ptr, dpk.nbytes, ddst.ptr, ddst.nbytes, offset, position, nb,
                                st, wait)
            return dst
        _core.unpack_host(self._t, count, host_object(packed, "packed"), host_object(dst, "dst", writable=True),
                          offset, position, nb, _threads(threads))
        return dst


def _t(dt: Any) -> Any:
    if not isinstance(dt, Datatype):
        raise InvalidArgument(f"expected a hauler Datatype, got {type(dt).__name__}")
    return dt._t


def _threads(threads: Optional[int]) -> int:
    return 0 if threads is None else as_int("threads", threads, minimum=1)


# (numpy kind, itemsize) -> named type
_NUMPY_NAMES = {
    ("i", 1): "int8", ("i", 2): "int16", ("i", 4): "int32", ("i", 8): "int64",
    ("u", 1): "uint8", ("u", 2): "uint16", ("u", 4): "uint32", ("u", 8): "uint64",
    ("f", 2): "float16", ("f", 4): "float", ("f", 8): "double", ("f", 16): "long_double",
    ("c", 8): "c_float_complex", ("c", 16): "c_double_complex", ("c", 32): "c_long_double_complex",
    ("b", 1): "c_bool", ("V", 1): "byte",
}


class _HostSpan:
    """A numpy-visible window [ptr, ptr + n) of another array's memory that keeps it alive."""

    def __init__(self, owner: Any, ptr: int, n: int, readonly: bool):
        self._owner = owner
        self.__array_interface__ = {"shape": (n,), "typestr": "|u1", "data": (ptr, readonly), "version": 3}


class _DeviceSpan:
    """The same for device memory, exposed through the CUDA array interface."""

    def __init__(self, owner: Any, ptr: int, n: int, readonly: bool, stream: Any):
        self._owner = owner
        self.__cuda_array_interface__ = {"shape": (n,), "typestr": "|u1", "data": (ptr, readonly),
                                         "strides": None, "version": 3, "stream": stream}


def _from_array(array: Any) -> Tuple[Datatype, Any, int]:
    cai = getattr(array, "__cuda_array_interface__", None)
    if cai is not None:
        shape = tuple(cai["shape"])
        dtype = np.dtype(cai["typestr"])
        strides = cai.get("strides")
        if strides is None:
            strides = _c_strides(shape, dtype.itemsize)
        ptr, readonly = cai["data"]
    else:
        if is_torch_tensor(array):
            array = torch_as_numpy(array, True, "array")  # its buffer may be unpacked into
        array = np.asarray(array) if not isinstance(array, np.ndarray) else array
        shape, strides, dtype = array.shape, array.strides, array.dtype
        ptr, readonly = array.__array_interface__["data"]
    t = Datatype.from_numpy_dtype(dtype)
    lo, hi = 0, dtype.itemsize
    for n, s in zip(reversed(shape), reversed(strides)):
        t = Datatype.hvector(n, 1, s, t)
        lo += min(0, (n - 1) * s)
        hi += max(0, (n - 1) * s)
    if 0 in shape:  # no elements: an empty span
        lo = hi = 0
    span_ptr, span_n = (ptr or 0) + lo, hi - lo
    if cai is not None:
        buf = _DeviceSpan(array, span_ptr, span_n, bool(readonly), cai.get("stream"))
    else:
        buf = np.asarray(_HostSpan(array, span_ptr, span_n, bool(readonly)))
    return t, buf, -lo


def _c_strides(shape: Tuple[int, ...], itemsize: int) -> Tuple[int, ...]:
    out, acc = [], itemsize
    for n in reversed(shape):
        out.append(acc)
        acc *= n
    return tuple(reversed(out))


NAMED_TYPES = tuple(_core.named_type_names())
for _name in NAMED_TYPES:
    _const = "TWO_INT" if _name == "2int" else _name.upper()
    globals()[_const] = Datatype.named(_name)
    __all__.append(_const)
del _name, _const
