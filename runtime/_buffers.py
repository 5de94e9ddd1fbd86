"""Turning what users pass (numpy arrays, torch tensors, buffer-protocol
objects, device arrays) into what the core takes: a host buffer object, or a
device pointer with its size. Device arrays are recognised by
``__cuda_array_interface__`` (CuPy, numba, torch) or by DLPack on a CUDA
device; nothing here touches the CUDA driver."""
from __future__ import annotations

import ctypes
import operator
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from .errors import InvalidArgument, Overflow, ReadOnlyBuffer

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def as_int(name: str, value: Any, minimum: Optional[int] = None) -> int:
    """An exact integer argument (Python or numpy int; bool and float refused)."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be an integer, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidArgument(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise Overflow(f"{name}={v} does not fit in 64 bits")
    if minimum is not None and v < minimum:
        raise InvalidArgument(f"{name} must be >= {minimum}, got {v}")
    return v


def as_ints(name: str, values: Any) -> list:
    try:
        items = list(values)
    except TypeError:
        raise InvalidArgument(f"{name} must be a sequence of integers, got {type(values).__name__}") from None
    return [as_int(f"{name}[{i}]", v) for i, v in enumerate(items)]


def is_torch_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "is_cuda")


@dataclass
class DeviceBuffer:
    ptr: int
    nbytes: int
    readonly: bool
    stream: int = 0


_kDLCUDA, _kDLCUDAHost, _kDLCUDAManaged = 2, 3, 13


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int), ("device_id", ctypes.c_int),
                ("ndim", ctypes.c_int), ("dtype_code", ctypes.c_uint8), ("dtype_bits", ctypes.c_uint8),
                ("dtype_lanes", ctypes.c_uint16), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


def _check_c_contiguous(shape: Any, strides: Any, itemsize: int) -> None:
    """InvalidArgument unless byte strides `strides` lay `shape` out in C order. The stride of an
    axis of length 1 is free, and an empty array has no layout (CuPy and torch give any strides)."""
    if 0 in shape:
        return
    expect = itemsize
    for n, s in zip(reversed(shape), reversed(strides)):
        if n != 1 and s != expect:
            raise InvalidArgument("device array is not C-contiguous; build its type with "
                                  "Datatype.from_array and pass the base array")
        expect *= n


def _from_dlpack(obj: Any) -> DeviceBuffer:
    capsule = obj.__dlpack__()
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    t = _DLTensor.from_address(get(capsule, b"dltensor"))  # DLManagedTensor starts with its DLTensor
    shape = [t.shape[i] for i in range(t.ndim)]
    itemsize = (t.dtype_bits * t.dtype_lanes + 7) // 8
    if t.strides:
        _check_c_contiguous(shape, [t.strides[i] * itemsize for i in range(t.ndim)], itemsize)
    n = itemsize
    for s in shape:
        n *= s
    # The capsule stays unconsumed, so the producer keeps ownership of the memory.
    return DeviceBuffer(ptr=(t.data or 0) + t.byte_offset, nbytes=n, readonly=False)


def check_torch_device(t: Any, what: str) -> None:
    """mps, xpu, meta, ...: not a GPU hauler lacks (NoDevice) but a kind of memory it never moves."""
    if t.device.type not in ("cpu", "cuda"):
        raise InvalidArgument(f"{what} is a tensor on device {str(t.device)!r}: that device is not supported "
                              "(hauler moves CPU memory and CUDA device memory)")


def device_buffer(obj: Any) -> Optional[DeviceBuffer]:
    """The device memory behind `obj`, or None for host objects."""
    if is_torch_tensor(obj):
        check_torch_device(obj, "the tensor")
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        shape = tuple(cai["shape"])
        typestr = cai["typestr"]
        itemsize = int(typestr[2:])
        strides = cai.get("strides")
        if strides is not None:
            _check_c_contiguous(shape, strides, itemsize)
        nbytes = itemsize
        for n in shape:
            nbytes *= n
        ptr, readonly = cai["data"]
        return DeviceBuffer(ptr=ptr or 0, nbytes=nbytes, readonly=bool(readonly), stream=cai.get("stream") or 0)
    dev = getattr(obj, "__dlpack_device__", None)
    if dev is not None and not isinstance(obj, type):
        kind, _ = dev()
        if kind in (_kDLCUDA, _kDLCUDAManaged):
            return _from_dlpack(obj)
    return None


def launch_stream(stream: Optional[int], *arrays: Any) -> Tuple[int, bool]:
    """The cudaStream_t (an int) a device call on `arrays` runs on, and whether the call waits for
    it. `stream` when given: the call returns once its work is queued. Else torch's current stream
    on the tensor's device when one of the arrays is a torch CUDA tensor or a span of one
    (Datatype.from_array), since torch's array interface (v2) names no stream; else the first
    stream an array's interface names (0: the legacy default stream). The call waits for those."""
    if stream is not None:
        return as_int("stream", stream, minimum=0), False
    for a in arrays:
        t = getattr(a, "_owner", a)
        if is_torch_tensor(t) and t.is_cuda:
            import torch
            return int(torch.cuda.current_stream(t.device).cuda_stream), True
    for a in arrays:
        cai = getattr(a, "__cuda_array_interface__", None)
        if cai is not None and cai.get("stream"):
            return as_int("the array interface's stream", cai["stream"], minimum=0), True
    return 0, True


def torch_as_numpy(t: Any, writable: bool, what: str) -> Any:
    """A numpy view of a CPU tensor's memory (no copy). Dtypes numpy lacks (bfloat16, ...) are
    viewed as integers of the same size: packing moves bytes, not values."""
    if t.is_cuda:
        raise InvalidArgument(f"{what} is a CUDA tensor; pass it as a device array")
    check_torch_device(t, what)
    t = t.detach()
    if t.is_conj() or t.is_neg():
        if writable:
            raise InvalidArgument(f"{what} is a lazily conjugated/negated tensor view; writing into it "
                                  "would write a copy (call .resolve_conj()/.resolve_neg() first)")
        t = t.resolve_conj().resolve_neg()
    try:
        return t.numpy()
    except TypeError:
        import torch
        ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
        size = t.element_size()
        if size not in ints:
            raise InvalidArgument(f"{what} has dtype {t.dtype}, which has no numpy view") from None
        return t.view(ints[size]).numpy()


def host_object(obj: Any, what: str, writable: bool = False) -> Any:
    """Something the core's buffer protocol handling accepts (torch CPU tensors via numpy views)."""
    if is_torch_tensor(obj):
        return torch_as_numpy(obj, writable, what)
    if obj is None:
        raise InvalidArgument(f"{what} is None")
    return obj


def check_writable_device(buf: DeviceBuffer, what: str) -> None:
    if buf.readonly:
        raise ReadOnlyBuffer(f"{what} is a read-only device array; pass a writable one")
