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

import re
import sys
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
        """The type of a numpy dtype: the named type of a scalar (bytes of its size for dtypes MPI
        has no name for); for a structured dtype, the struct of its fields at their offsets
        (subarray fields as blocks, nested structs recursively), resized to its itemsize."""
        try:
            dt = np.dtype(dtype)
        except TypeError as e:
            raise InvalidArgument(f"{dtype!r} is not a numpy dtype: {e}") from None
        if dt.names is not None:
            fields = [dt.fields[n] for n in dt.names]
            members = [(_numpy_block(f[0]), f[1]) for f in fields]
            st = Datatype.struct([n for (n, _), _ in members], [off for _, off in members],
                                 [t for (_, t), _ in members])
            return Datatype.resized(st, 0, dt.itemsize)
        if dt.subdtype is not None:
            n, t = _numpy_block(dt)
            return Datatype.contiguous(n, t)
        name = _NUMPY_NAMES.get((dt.kind, dt.itemsize))
        if name is not None:
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
        """The constructor tree with argument names (each type's bounds beside it), then the
        canonical form and the host kernel, readable."""
        lay = self._t.layout(as_int("count", count))
        return (_named_tree(self._t.describe_tree()) + "canonical: " + self._t.describe_layout(count) +
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
        Every check runs before any byte is written.

        mpi4py buffer specs work for `src` (``[buf, count, MPI.DOUBLE]``, ``[buf, MPI.DOUBLE]``:
        count = the buffer's bytes / extent; the type must be this one) and `out`
        (``[buf, n, MPI.BYTE]``: its first n bytes). A torch src gives a torch result."""
        src, count = self._element_spec(src, count, "src")
        out, nbytes = _byte_spec(out, nbytes, "out")
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
        fresh = out is None
        if fresh:
            n = self._t.pack_size(count) - position if nb is None else nb
            out = np.empty(max(n, 0), dtype=np.uint8)
        out_h = host_object(out, "out", writable=True)
        _core.pack_host(self._t, count, src_h, offset, out_h, position, nb, _threads(threads))
        if fresh and is_torch_tensor(src):
            import torch
            return torch.from_numpy(out)
        return out

    def unpack(self, packed: Any, dst: Any, count: int = 1, position: int = 0, offset: int = 0,
               nbytes: Optional[int] = None, *, threads: Optional[int] = None, stream: int = 0) -> Any:
        """Unpack packed bytes [position, position + nbytes) (default: to the end), read from
        packed[0:nbytes], into the `count` elements whose origin is at byte `offset` of `dst`.
        Returns `dst`. Bytes of `dst` outside the type map are never touched. mpi4py buffer specs
        work as in :meth:`pack` (`dst` an element spec, `packed` a byte spec)."""
        dst, count = self._element_spec(dst, count, "dst")
        packed, nbytes = _byte_spec(packed, nbytes, "packed")
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


    def _element_spec(self, obj: Any, count: Any, what: str) -> Tuple[Any, Any]:
        """(buffer, count) of an mpi4py-style buffer spec of this type, or (obj, count) as given."""
        spec = _spec(obj)
        if spec is None:
            return obj, count
        buf, n, t = spec
        if not _same_type(self, t):
            raise InvalidArgument(f"{what} is a buffer spec of {t!r}, not of this type {self!r}")
        if n is None:
            if self.extent <= 0:
                raise InvalidArgument(f"{what}: a buffer spec without a count needs a type of positive "
                                      f"extent, this one has {self.extent}")
            n = _nbytes(buf, what) // self.extent
        if count != 1 and count != n:
            raise InvalidArgument(f"count={count} disagrees with the count {n} of the {what} buffer spec")
        return buf, n


def _spec(obj: Any) -> Optional[Tuple[Any, Optional[int], Datatype]]:
    """(buffer, count or None, type) of ``[buf, count, type]`` / ``[buf, type]``; None otherwise."""
    if not isinstance(obj, (list, tuple)) or len(obj) not in (2, 3) or not _is_type(obj[-1]):
        return None
    count = as_int("buffer spec count", obj[1], minimum=0) if len(obj) == 3 else None
    return obj[0], count, _as_datatype(obj[-1])


def _byte_spec(obj: Any, nbytes: Any, what: str) -> Tuple[Any, Any]:
    """The buffer of a byte spec (``[buf, n, MPI.BYTE]`` / MPI.PACKED), n bytes of it as nbytes."""
    spec = _spec(obj)
    if spec is None:
        return obj, nbytes
    buf, n, t = spec
    if not (_same_type(t, BYTE) or _same_type(t, PACKED)):
        raise InvalidArgument(f"{what} holds packed bytes: its buffer spec must be of MPI.BYTE or MPI.PACKED, "
                              f"got {t!r}")
    if n is not None and nbytes is not None and n != nbytes:
        raise InvalidArgument(f"nbytes={nbytes} disagrees with the count {n} of the {what} buffer spec")
    return buf, nbytes if n is None else n


def _nbytes(buf: Any, what: str) -> int:
    dev = device_buffer(buf)
    if dev is not None:
        return dev.nbytes
    try:
        return memoryview(host_object(buf, what)).nbytes
    except TypeError:
        raise InvalidArgument(f"{what}: {type(buf).__name__} does not expose a buffer") from None


def _same_type(a: Datatype, b: Datatype) -> bool:
    """The same elements at the same places with the same bounds (however they were built)."""
    if a._t is b._t:
        return True
    return (a.size, a.lb, a.extent) == (b.size, b.lb, b.extent) and a.layout() == b.layout()


def _is_type(obj: Any) -> bool:
    return isinstance(obj, Datatype) or _is_mpi_type(obj)


def _is_mpi_type(obj: Any) -> bool:
    mpi = sys.modules.get("mpi4py.MPI")  # an mpi4py datatype exists only once its module is loaded
    return mpi is not None and isinstance(obj, mpi.Datatype)


def _as_datatype(dt: Any) -> Datatype:
    if isinstance(dt, Datatype):
        return dt
    if _is_mpi_type(dt):
        return Datatype.from_mpi(dt)
    raise InvalidArgument(f"expected a hauler Datatype or an mpi4py datatype, got {type(dt).__name__}")


def _t(dt: Any) -> Any:
    return _as_datatype(dt)._t


def _numpy_block(dt: np.dtype) -> Tuple[int, Datatype]:
    """(element count, type) of a struct field: a subarray field is a block of its base type."""
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        n = 1
        for d in shape:
            n *= d
        return n, Datatype.from_numpy_dtype(base)
    return 1, Datatype.from_numpy_dtype(dt)


# Argument names per constructor, for describe(): (name, how many) in MPI's order; "n" = as many
# as the list arguments share, "1" = one value.
_ARG_NAMES = {
    "contiguous": (("count", 1),), "vector": (("count", 1), ("blocklength", 1), ("stride", 1)),
    "hvector": (("count", 1), ("blocklength", 1), ("stride", 1)),
    "indexed": (("blocklengths", "n"), ("displacements", "n")),
    "hindexed": (("blocklengths", "n"), ("displacements", "n")),
    "indexed_block": (("blocklengths", "n"), ("displacements", "n")),
    "hindexed_block": (("blocklengths", "n"), ("displacements", "n")),
    "struct": (("blocklengths", "n"), ("displacements", "n")),
    "subarray": (("sizes", "n"), ("subsizes", "n"), ("starts", "n"), ("order", 1)),
    "darray": (("size", 1), ("rank", 1), ("gsizes", "n"), ("distribs", "n"), ("dargs", "n"), ("psizes", "n"),
               ("order", 1)),
    "resized": (("lb", 1), ("extent", 1)),
}
_TYPE_ARG = {"struct": "types[{}]"}  # the rest have one type argument, oldtype
_LINE = re.compile(r"^( *)(\w+)(?: (\S+))?(?:\(([^)]*)\))?  (lb=.*)$")
_DISTRIBS = {0: "none", 1: "block", 2: "cyclic"}


def _fmt_list(v: list) -> str:
    if len(v) > 8:
        return "[" + ", ".join(map(str, v[:6])) + f", ... ({len(v)} values)]"
    return "[" + ", ".join(map(str, v)) + "]"


def _named_args(kind: str, args: list) -> str:
    spec = _ARG_NAMES.get(kind)
    if spec is None or not args:
        return "" if not args else "(" + ", ".join(map(str, args)) + ")"
    singles = sum(1 for _, k in spec if k == 1)
    lists = sum(1 for _, k in spec if k == "n")
    n = (len(args) - singles) // lists if lists else 0
    out, i = [], 0
    for name, k in spec:
        if k == 1:
            v: Any = args[i]
            if name == "order":
                v = '"C"' if v == 0 else '"F"'
            i += 1
        else:
            v = args[i:i + n]
            if name == "distribs":
                v = [_DISTRIBS.get(x, x) for x in v]
            i += n
            v = _fmt_list(v)
        out.append(f"{name}={v}")
    return "(" + ", ".join(out) + ")"


def _named_tree(tree: str) -> str:
    """The core's constructor tree with each argument named and each child labelled by the
    argument it is (oldtype, types[i])."""
    lines, child_index = [], {}
    for raw in tree.splitlines():
        m = _LINE.match(raw)
        if m is None:
            lines.append(raw)
            continue
        indent, kind, name, args, bounds = m.groups()
        depth = len(indent) // 2
        label = ""
        if depth:
            parent = child_index.get(depth - 1)
            i = parent[1]
            parent[1] += 1
            label = (_TYPE_ARG.get(parent[0], "oldtype").format(i)) + ": "
        child_index[depth] = [kind, 0]
        vals = [int(x) for x in args.split(",")] if args else []
        head = name if kind == "named" else kind + _named_args(kind, vals)
        lines.append(f"{indent}{label}{head}  {bounds}")
    return "\n".join(lines) + "\n"


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
