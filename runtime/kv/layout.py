"""KVLayout: where every (layer, K/V plane, block, token, head, dim) element of a paged KV cache lives.

Each named constructor takes the engine's own tensors (torch, numpy, anything with
``__cuda_array_interface__`` or DLPack) and reads their real strides, so a transposed or
sliced view is described as it is, never assumed contiguous. Everything reduces to one form
(see csrc/kv/layout.hpp): per layer and plane a base address, per plane byte strides of
block, token, head and dim (with an optional packing of ``x`` dims innermost, vLLM's legacy
key cache). A layout keeps its tensors alive; ``from_bytes`` gives a layout of another
process's memory, which plans accept and movers refuse.
"""
from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import _core
from .._buffers import _DLTensor, as_int, is_torch_tensor
from ..datatype import _c_strides
from ..errors import BufferTooSmall, InvalidArgument

__all__ = ["KVLayout", "contiguous_layout_like", "DTYPES"]

# element types a layout may hold, with their sizes in bytes
DTYPES = {"bfloat16": 2, "float16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1, "float32": 4, "int8": 1}

_NUMPY_TYPESTR = {"f2": "float16", "f4": "float32", "i1": "int8"}
# DLPack (code, bits) -> name; codes 0 int, 2 float, 4 bfloat, 10 float8_e4m3fn, 12 float8_e5m2
_DLPACK = {(0, 8): "int8", (2, 16): "float16", (2, 32): "float32", (4, 16): "bfloat16", (10, 8): "float8_e4m3fn",
           (12, 8): "float8_e5m2"}
_KDL_CPU, _KDL_CUDA, _KDL_CUDA_HOST, _KDL_CUDA_MANAGED = 1, 2, 3, 13
_MAGIC = "hauler.kv.KVLayout/1"
_RAW = "<bytes>"  # a buffer whose element type does not matter (staging buffers hold any layout's bytes)


@dataclass(frozen=True)
class _Tensor:
    """What a layout needs of one tensor: address, shape, byte strides, element type, place."""
    ptr: int
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]  # bytes
    dtype: str                # a DTYPES name, or "<raw N>" for a raw N-byte element awaiting dtype=
    itemsize: int
    device: Optional[str]
    readonly: bool
    owner: Any


def _dtype_name(name: str, itemsize: int, override: Optional[str], what: str) -> str:
    if override == _RAW:
        return _RAW
    if override is not None:
        if override not in DTYPES:
            raise InvalidArgument(f"dtype={override!r} is not a KV element type; use one of {sorted(DTYPES)}")
        if DTYPES[override] != itemsize:
            raise InvalidArgument(f"dtype={override!r} has {DTYPES[override]}-byte elements but {what} has "
                                  f"{itemsize}-byte elements")
        return override
    if name not in DTYPES:
        raise InvalidArgument(f"{what} has element type {name}, which a KV layout does not take; use one of "
                              f"{sorted(DTYPES)} (or pass dtype= to read {itemsize}-byte elements as one of them)")
    return name


def _tensor(t: Any, what: str, dtype: Optional[str] = None) -> _Tensor:
    """Read a tensor's address, shape, real strides and element type without copying it."""
    if t is None:
        raise InvalidArgument(f"{what} is None")
    if is_torch_tensor(t):
        if t.device.type not in ("cpu", "cuda"):
            raise InvalidArgument(f"{what} is on device {t.device}; a KV layout takes CPU or CUDA tensors")
        if t.is_conj() or t.is_neg():
            raise InvalidArgument(f"{what} is a lazily conjugated/negated view; its memory does not hold its values")
        es = t.element_size()
        name = _dtype_name(str(t.dtype).replace("torch.", ""), es, dtype, what)
        dev = f"cuda:{t.device.index or 0}" if t.is_cuda else None
        return _Tensor(t.data_ptr(), tuple(t.shape), tuple(s * es for s in t.stride()), name, es, dev, False, t)
    cai = getattr(t, "__cuda_array_interface__", None)
    if cai is not None:
        shape = tuple(int(n) for n in cai["shape"])
        typestr = cai["typestr"]
        es = int(typestr[2:])
        strides = cai.get("strides")
        strides = tuple(int(s) for s in strides) if strides is not None else _c_strides(shape, es)
        ptr, ro = cai["data"]
        name = _dtype_name(_NUMPY_TYPESTR.get(typestr[1:], f"typestr {typestr}"), es, dtype, what)
        return _Tensor(int(ptr or 0), shape, strides, name, es, "cuda", bool(ro), t)
    if hasattr(t, "__array_interface__"):  # numpy and array-likes exposing their memory (never a copy)
        import numpy as np
        a = t if isinstance(t, np.ndarray) else np.asarray(t)
        es = a.dtype.itemsize
        name = _dtype_name(a.dtype.name if a.dtype.names is None else str(a.dtype), es, dtype, what)
        ptr, _ = a.__array_interface__["data"]
        return _Tensor(int(ptr or 0), tuple(a.shape), tuple(a.strides), name, es, None, not a.flags.writeable, a)
    if hasattr(t, "__dlpack__"):
        return _from_dlpack(t, what, dtype)
    raise InvalidArgument(f"{what} of type {type(t).__name__} is not a tensor (torch, numpy, "
                          "__cuda_array_interface__ or DLPack)")


def _from_dlpack(t: Any, what: str, dtype: Optional[str]) -> _Tensor:
    kind, dev_id = t.__dlpack_device__()
    if kind not in (_KDL_CPU, _KDL_CUDA, _KDL_CUDA_HOST, _KDL_CUDA_MANAGED):
        raise InvalidArgument(f"{what} is a DLPack tensor on device type {kind}; a KV layout takes CPU or CUDA memory")
    capsule = t.__dlpack__()
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    d = _DLTensor.from_address(get(capsule, b"dltensor"))
    if d.dtype_lanes != 1:
        raise InvalidArgument(f"{what} has {d.dtype_lanes}-lane DLPack elements; a KV layout takes scalars")
    shape = tuple(d.shape[i] for i in range(d.ndim))
    es = (d.dtype_bits + 7) // 8
    strides = (tuple(d.strides[i] * es for i in range(d.ndim)) if d.strides else _c_strides(shape, es))
    name = _dtype_name(_DLPACK.get((d.dtype_code, d.dtype_bits), f"DLPack code {d.dtype_code}/{d.dtype_bits} bits"),
                       es, dtype, what)
    dev = f"cuda:{dev_id}" if kind in (_KDL_CUDA, _KDL_CUDA_MANAGED) else None
    # The capsule stays unconsumed: the producer keeps the memory; `t` is held as the owner.
    return _Tensor((d.data or 0) + d.byte_offset, shape, strides, name, es, dev, False, t)


def _tensors(items: Any, what: str, dtype: Optional[str], ndim: int, dims: str) -> List[_Tensor]:
    """A per-layer list of tensors of one shape, element type and device (strides may not differ)."""
    if _is_tensorish(items):
        raise InvalidArgument(f"{what} must be a list of per-layer tensors {dims}, got one tensor")
    try:
        items = list(items)
    except TypeError:
        raise InvalidArgument(f"{what} must be a list of per-layer tensors {dims}, got {type(items).__name__}") from None
    if not items:
        raise InvalidArgument(f"{what} is empty: a layout needs at least one layer")
    ts = [_tensor(x, f"{what}[{i}]", dtype) for i, x in enumerate(items)]
    for i, t in enumerate(ts):
        if len(t.shape) != ndim:
            raise InvalidArgument(f"{what}[{i}] has shape {t.shape}; expected {ndim} dims {dims}")
        if t.shape != ts[0].shape:
            raise InvalidArgument(f"{what}[{i}] has shape {t.shape} but {what}[0] has {ts[0].shape}: every layer "
                                  "must have the same shape")
        if t.dtype != ts[0].dtype:
            raise InvalidArgument(f"{what}[{i}] is {t.dtype} but {what}[0] is {ts[0].dtype}")
        if t.device != ts[0].device:
            raise InvalidArgument(f"{what}[{i}] is on {t.device or 'the host'} but {what}[0] on "
                                  f"{ts[0].device or 'the host'}")
        if t.strides != ts[0].strides:
            raise InvalidArgument(f"{what}[{i}] has strides {t.strides} bytes but {what}[0] has {ts[0].strides}: "
                                  "one layout needs the same strides in every layer")
    return ts


def _is_tensorish(x: Any) -> bool:
    return (is_torch_tensor(x) or hasattr(x, "__cuda_array_interface__") or hasattr(x, "__array_interface__")
            or hasattr(x, "__dlpack__"))


def _strides(block: int, token: int, head: int, dim: int, dim_hi: int = 0, x: int = 0) -> Tuple[int, ...]:
    return (int(block), int(token), int(head), int(dim), int(dim_hi), int(x))


def _check_order(order: str) -> str:
    if order not in ("NHD", "HND"):
        raise InvalidArgument(f"order must be 'NHD' or 'HND', got {order!r}")
    return order


def _kv_pairs(k_items: Any, v_items: Any, names: Tuple[str, str], dtype: Optional[str], dims: Tuple[tuple, tuple]):
    """Per-layer K and V tensor lists of one count, element type and device."""
    ks = _tensors(k_items, names[0], dtype, len(dims[0]), "[" + ", ".join(dims[0]) + "]")
    vs = _tensors(v_items, names[1], dtype, len(dims[1]), "[" + ", ".join(dims[1]) + "]")
    if len(ks) != len(vs):
        raise InvalidArgument(f"{len(ks)} {names[0]} but {len(vs)} {names[1]}: one of each per layer")
    _pair_check(ks[0], vs[0], names[0] + "[0]", names[1] + "[0]")
    return ks, vs


def _pair_check(k: _Tensor, v: _Tensor, kw: str, vw: str) -> None:
    if k.dtype != v.dtype:
        raise InvalidArgument(f"K and V have different element types: {kw} is {k.dtype}, {vw} is {v.dtype}")
    if k.device != v.device:
        raise InvalidArgument(f"K and V are on different devices: {kw} on {k.device or 'the host'}, "
                              f"{vw} on {v.device or 'the host'}")


class KVLayout:
    """An immutable description of a paged KV cache's memory (see the module docstring)."""

    __slots__ = ("dtype", "elem_size", "num_layers", "num_planes", "num_blocks", "block_size", "num_heads",
                 "head_size", "kind", "device", "_bases", "_strides", "_owners", "_remote", "_readonly", "_info", "_d")

    def __init__(self, *, dtype: str, num_layers: int, num_planes: int, num_blocks: int, block_size: int,
                 num_heads: int, head_size: int, bases: Sequence[int], strides: Sequence[Tuple[int, ...]],
                 kind: str, device: Optional[str] = None, owners: Tuple[Any, ...] = (), remote: bool = False,
                 readonly: bool = False):
        if dtype not in DTYPES:
            raise InvalidArgument(f"dtype={dtype!r} is not a KV element type; use one of {sorted(DTYPES)}")
        s = object.__setattr__
        s(self, "dtype", dtype)
        s(self, "elem_size", DTYPES[dtype])
        for name, v in (("num_layers", num_layers), ("num_planes", num_planes), ("num_blocks", num_blocks),
                        ("block_size", block_size), ("num_heads", num_heads), ("head_size", head_size)):
            s(self, name, as_int(name, v, minimum=1))
        s(self, "kind", kind)
        s(self, "device", device)
        s(self, "_bases", tuple(as_int("base address", b) for b in bases))
        s(self, "_strides", tuple(tuple(as_int("stride", v) for v in st) for st in strides))
        s(self, "_owners", tuple(owners))
        s(self, "_remote", bool(remote))
        s(self, "_readonly", bool(readonly))
        s(self, "_d", (self.elem_size, self.num_layers, self.num_planes, self.num_blocks, self.block_size,
                       self.num_heads, self.head_size, list(self._bases), [list(st) for st in self._strides]))
        s(self, "_info", _core.kv_layout_check(self._d, f"{kind} layout"))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("KVLayout is immutable")

    # -- the form the core takes ------------------------------------------------------------
    def _desc(self) -> tuple:
        """(elem, layers, planes, blocks, block_size, heads, head_size, bases, strides per plane)."""
        return self._d

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, KVLayout) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return (self.dtype, self.device, self._desc()[:7], self._bases, self._strides)

    # -- properties -----------------------------------------------------------------------------
    @property
    def block_bytes(self) -> int:
        """Bytes of one block over all layers and planes."""
        return self.num_layers * self.num_planes * self.block_size * self.num_heads * self.head_size * self.elem_size

    @property
    def extent_bytes(self) -> int:
        """Bytes of the largest contiguous piece of one block in one layer/plane."""
        return self._info["extent_bytes"]

    @property
    def extents_per_block(self) -> int:
        """How many such pieces one block is over all layers and planes (the cost of moving it)."""
        return self._info["extents_per_block"]

    @property
    def remote(self) -> bool:
        """True for a layout of another process's memory (from_bytes): plan against it, never move."""
        return self._remote

    def regions(self) -> List[Tuple[int, int]]:
        """(address, nbytes) of the memory the layout spans, merged and sorted (for registration)."""
        return [tuple(r) for r in self._info["regions"]]

    def describe(self) -> str:
        where = self.device or "host"
        lines = [f"KVLayout {self.kind} on {where}{' (remote)' if self._remote else ''}: {self.num_layers} layers x "
                 f"{self.num_planes} planes x {self.num_blocks} blocks x {self.block_size} tokens x "
                 f"{self.num_heads} heads x {self.head_size} dims, {self.dtype}",
                 f"  block {self.block_bytes} B over all layers/planes = {self.extents_per_block} extents of "
                 f"{self.extent_bytes} B"]
        for p, st in enumerate(self._strides):
            b, t, h, d, dh, x = st
            lines.append(f"  plane {p} strides (bytes): block {b}, token {t}, head {h}, dim {d}" +
                         (f", x={x} packed with dim_hi {dh}" if x else ""))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<KVLayout {self.kind} {self.num_layers}x{self.num_planes}x{self.num_blocks}x{self.block_size}x"
                f"{self.num_heads}x{self.head_size} {self.dtype} {self.device or 'host'}>")

    # -- serialization --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The metadata, addresses included (the owner's: a peer plans against them, never touches them)."""
        d = {"magic": _MAGIC, "dtype": self.dtype, "num_layers": self.num_layers, "num_planes": self.num_planes,
             "num_blocks": self.num_blocks, "block_size": self.block_size, "num_heads": self.num_heads,
             "head_size": self.head_size, "bases": list(self._bases), "strides": [list(s) for s in self._strides],
             "kind": self.kind, "device": self.device}
        return json.dumps(d, separators=(",", ":")).encode()

    @staticmethod
    def from_bytes(b: Any) -> "KVLayout":
        try:
            d = json.loads(bytes(b).decode())
            if not isinstance(d, dict) or d.get("magic") != _MAGIC:
                raise ValueError("magic")
            return KVLayout(dtype=d["dtype"], num_layers=d["num_layers"], num_planes=d["num_planes"],
                            num_blocks=d["num_blocks"], block_size=d["block_size"], num_heads=d["num_heads"],
                            head_size=d["head_size"], bases=d["bases"], strides=[tuple(s) for s in d["strides"]],
                            kind=d["kind"], device=d["device"], remote=True)
        except InvalidArgument:
            raise
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"not a serialized KVLayout ({type(e).__name__}: {e})") from None

    # -- named constructors ---------------------------------------------------------------------
    @staticmethod
    def vllm_flash(caches: Any, order: str = "NHD", *, dtype: Optional[str] = None) -> "KVLayout":
        """vLLM FlashAttention/FlashInfer: per layer (2, num_blocks, block_size, heads, head_size) ("NHD")
        or (2, num_blocks, heads, block_size, head_size) ("HND"), any real strides."""
        order = _check_order(order)
        ts = _tensors(caches, "caches", dtype, 5, "(2, num_blocks, block_size, heads, head_size)" if order == "NHD"
                      else "(2, num_blocks, heads, block_size, head_size)")
        t0 = ts[0]
        if t0.shape[0] != 2:
            raise InvalidArgument(f"caches[0] has shape {t0.shape}: dim 0 must be 2 (K and V)")
        sp, sb = t0.strides[0], t0.strides[1]
        if order == "NHD":
            _, nb, bs, h, hs = t0.shape
            st = _strides(sb, t0.strides[2], t0.strides[3], t0.strides[4])
        else:
            _, nb, h, bs, hs = t0.shape
            st = _strides(sb, t0.strides[3], t0.strides[2], t0.strides[4])
        bases = [t.ptr + p * sp for t in ts for p in range(2)]
        return KVLayout(dtype=t0.dtype, num_layers=len(ts), num_planes=2, num_blocks=nb, block_size=bs, num_heads=h,
                        head_size=hs, bases=bases, strides=[st, st], kind=f"vllm_flash_{order.lower()}",
                        device=t0.device, owners=tuple(t.owner for t in ts), readonly=any(t.readonly for t in ts))

    @staticmethod
    def mla(caches: Any, *, dtype: Optional[str] = None) -> "KVLayout":
        """MLA (one latent plane): per layer (num_blocks, block_size, head_dim)."""
        ts = _tensors(caches, "caches", dtype, 3, "(num_blocks, block_size, head_dim)")
        t0 = ts[0]
        nb, bs, hd = t0.shape
        st = _strides(t0.strides[0], t0.strides[1], hd * t0.itemsize, t0.strides[2])
        return KVLayout(dtype=t0.dtype, num_layers=len(ts), num_planes=1, num_blocks=nb, block_size=bs, num_heads=1,
                        head_size=hd, bases=[t.ptr for t in ts], strides=[st], kind="mla", device=t0.device,
                        owners=tuple(t.owner for t in ts), readonly=any(t.readonly for t in ts))

    @staticmethod
    def cross_layer(cache: Any, order: str = "NHD", *, dtype: Optional[str] = None) -> "KVLayout":
        """One block contiguous across layers: (num_blocks, layers, 2, block_size, heads, head_size) ("NHD")
        or (num_blocks, layers, 2, heads, block_size, head_size) ("HND")."""
        order = _check_order(order)
        t = _tensor(cache, "cache", dtype)
        if len(t.shape) != 6 or t.shape[2] != 2:
            raise InvalidArgument(f"cache has shape {t.shape}; expected (num_blocks, layers, 2, "
                                  f"{'block_size, heads' if order == 'NHD' else 'heads, block_size'}, head_size)")
        nb, nl, _, a, b, hs = t.shape
        s = t.strides
        if order == "NHD":
            bs, h, st = a, b, _strides(s[0], s[3], s[4], s[5])
        else:
            h, bs, st = a, b, _strides(s[0], s[4], s[3], s[5])
        bases = [t.ptr + l * s[1] + p * s[2] for l in range(nl) for p in range(2)]
        return KVLayout(dtype=t.dtype, num_layers=nl, num_planes=2, num_blocks=nb, block_size=bs, num_heads=h,
                        head_size=hs, bases=bases, strides=[st, st], kind=f"cross_layer_{order.lower()}",
                        device=t.device, owners=(t.owner,), readonly=t.readonly)

    @staticmethod
    def vllm_legacy(key_caches: Any, value_caches: Any, *, dtype: Optional[str] = None) -> "KVLayout":
        """vLLM's paged-attention v1/v2 caches: per layer key [num_blocks, heads, head_size/x, block_size, x]
        and value [num_blocks, heads, head_size, block_size]."""
        ks, vs = _kv_pairs(key_caches, value_caches, ("key_caches", "value_caches"), dtype,
                           (("num_blocks", "heads", "head_size/x", "block_size", "x"),
                            ("num_blocks", "heads", "head_size", "block_size")))
        k, v = ks[0], vs[0]
        nb, h, hx, bs, x = k.shape
        want = (nb, h, hx * x, bs)
        if v.shape != want:
            raise InvalidArgument(f"value_caches[0] has shape {v.shape} but the key caches {k.shape} need value caches "
                                  f"of shape {want}")
        ks_ = _strides(k.strides[0], k.strides[3], k.strides[1], k.strides[4], k.strides[2], x)
        vs_ = _strides(v.strides[0], v.strides[3], v.strides[1], v.strides[2])
        bases = [p.ptr for pair in zip(ks, vs) for p in pair]
        return KVLayout(dtype=k.dtype, num_layers=len(ks), num_planes=2, num_blocks=nb, block_size=bs, num_heads=h,
                        head_size=hx * x, bases=bases, strides=[ks_, vs_], kind="vllm_legacy", device=k.device,
                        owners=tuple(t.owner for t in ks + vs), readonly=any(t.readonly for t in ks + vs))

    @staticmethod
    def sglang(k_pools: Any, v_pools: Any, page_size: int, *, dtype: Optional[str] = None) -> "KVLayout":
        """SGLang token pools: per layer [tokens, heads, head_size] for K and for V; block b is tokens
        [b*page_size, (b+1)*page_size) (a pool's tail shorter than a page is not addressable)."""
        ps = as_int("page_size", page_size, minimum=1)
        tok = ("tokens", "heads", "head_size")
        ks, vs = _kv_pairs(k_pools, v_pools, ("k_pools", "v_pools"), dtype, (tok, tok))
        k, v = ks[0], vs[0]
        if k.shape != v.shape:
            raise InvalidArgument(f"k_pools[0] has shape {k.shape} but v_pools[0] has {v.shape}")
        tokens, h, hs = k.shape
        if tokens < ps:
            raise InvalidArgument(f"the pools hold {tokens} tokens, fewer than one page of {ps}")
        stk = _strides(k.strides[0] * ps, k.strides[0], k.strides[1], k.strides[2])
        stv = _strides(v.strides[0] * ps, v.strides[0], v.strides[1], v.strides[2])
        bases = [p.ptr for pair in zip(ks, vs) for p in pair]
        return KVLayout(dtype=k.dtype, num_layers=len(ks), num_planes=2, num_blocks=tokens // ps, block_size=ps,
                        num_heads=h, head_size=hs, bases=bases, strides=[stk, stv], kind="sglang", device=k.device,
                        owners=tuple(t.owner for t in ks + vs), readonly=any(t.readonly for t in ks + vs))

    @staticmethod
    def lmcache_chunk(chunk: Any, block_size: int, num_heads: int = 1, *, dtype: Optional[str] = None) -> "KVLayout":
        """LMCache-style chunk [2, layers, tokens, heads*head_size] (num_heads splits the last dim; or pass
        a 5-dim [2, layers, tokens, heads, head_size]); block b is tokens [b*block_size, (b+1)*block_size)."""
        bsz = as_int("block_size", block_size, minimum=1)
        t = _tensor(chunk, "chunk", dtype)
        s = t.strides
        if len(t.shape) == 5 and t.shape[0] == 2:
            _, nl, tokens, h, hs = t.shape
            hstride, dstride = s[3], s[4]
        elif len(t.shape) == 4 and t.shape[0] == 2:
            _, nl, tokens, hd = t.shape
            h = as_int("num_heads", num_heads, minimum=1)
            if hd % h:
                raise InvalidArgument(f"chunk's last dim {hd} is not a multiple of num_heads={h}")
            hs = hd // h
            hstride, dstride = s[3] * hs, s[3]
        else:
            raise InvalidArgument(f"chunk has shape {t.shape}; expected [2, layers, tokens, heads*head_size]")
        if tokens % bsz:
            raise InvalidArgument(f"chunk holds {tokens} tokens, not a multiple of block_size={bsz}")
        st = _strides(s[2] * bsz, s[2], hstride, dstride)
        bases = [t.ptr + l * s[1] + p * s[0] for l in range(nl) for p in range(2)]
        return KVLayout(dtype=t.dtype, num_layers=nl, num_planes=2, num_blocks=tokens // bsz, block_size=bsz,
                        num_heads=h, head_size=hs, bases=bases, strides=[st, st], kind="lmcache_chunk",
                        device=t.device, owners=(t.owner,), readonly=t.readonly)

    @staticmethod
    def explicit(dtype: str, num_layers: int, num_planes: int, num_blocks: int, block_size: int, num_heads: int,
                 head_size: int, bases: Any, strides: Any, x: Any = None, device: Optional[str] = None) -> "KVLayout":
        """Anything else: bases[layer][plane] absolute addresses; strides a dict block/token/head/dim
        (/dim_hi with x) in bytes, or one such dict per plane (K and V ordered differently)."""
        nl, npl = as_int("num_layers", num_layers, minimum=1), as_int("num_planes", num_planes, minimum=1)
        try:
            rows = [list(r) for r in bases]
        except TypeError:
            raise InvalidArgument("bases must be a list per layer of a list per plane of addresses") from None
        if len(rows) != nl or any(len(r) != npl for r in rows):
            raise InvalidArgument(f"bases must be {nl} layers x {npl} planes of addresses, got "
                                  f"{[len(r) for r in rows]}")
        per = list(strides) if isinstance(strides, (list, tuple)) else [strides] * npl
        xs = list(x) if isinstance(x, (list, tuple)) else [x] * npl
        if len(per) != npl or len(xs) != npl:
            raise InvalidArgument(f"strides and x must be one per plane ({npl}), got {len(per)} and {len(xs)}")
        sts = []
        for p, (d, xp) in enumerate(zip(per, xs)):
            if not isinstance(d, dict):
                raise InvalidArgument(f"strides[{p}] must be a dict block/token/head/dim(/dim_hi), got {type(d).__name__}")
            need = {"block", "token", "head", "dim"} | ({"dim_hi"} if xp else set())
            extra = set(d) - need - {"dim_hi"}
            if need - set(d) or extra:
                raise InvalidArgument(f"strides[{p}] keys {sorted(d)}: need {sorted(need)}" +
                                      (f", unknown {sorted(extra)}" if extra else ""))
            sts.append(_strides(as_int("block stride", d["block"]), as_int("token stride", d["token"]),
                                as_int("head stride", d["head"]), as_int("dim stride", d["dim"]),
                                as_int("dim_hi stride", d.get("dim_hi", 0)), as_int("x", xp or 0, minimum=0)))
        return KVLayout(dtype=dtype, num_layers=nl, num_planes=npl, num_blocks=num_blocks, block_size=block_size,
                        num_heads=num_heads, head_size=head_size, bases=[b for r in rows for b in r], strides=sts,
                        kind="explicit", device=device)

    @staticmethod
    def from_tensors(*args: Any, kind: str, **kwargs: Any) -> "KVLayout":
        """Dispatch on kind= to a named constructor ("vllm_flash", "mla", "cross_layer", "vllm_legacy",
        "sglang", "lmcache_chunk")."""
        ctors = {"vllm_flash": KVLayout.vllm_flash, "mla": KVLayout.mla, "cross_layer": KVLayout.cross_layer,
                 "vllm_legacy": KVLayout.vllm_legacy, "sglang": KVLayout.sglang,
                 "lmcache_chunk": KVLayout.lmcache_chunk}
        if kind not in ctors:
            raise InvalidArgument(f"kind={kind!r} is not a KV layout kind; use one of {sorted(ctors)}")
        return ctors[kind](*args, **kwargs)


def contiguous_layout_like(layout: KVLayout, num_blocks: int, buffer: Any) -> KVLayout:
    """The packed form gather writes: [layers, planes, blocks, block_size, heads, head_size] of `layout`'s
    element type, in the contiguous `buffer` (host or device, at least that many bytes)."""
    if not isinstance(layout, KVLayout):
        raise InvalidArgument(f"layout must be a KVLayout, got {type(layout).__name__}")
    nb = as_int("num_blocks", num_blocks, minimum=1)
    if not _is_tensorish(buffer):
        raise InvalidArgument(f"buffer of type {type(buffer).__name__} is not a tensor or array")
    t = _tensor(buffer, "buffer", _RAW)
    n = t.itemsize
    for d in t.shape:
        n *= d
    if any(d > 1 and s != c for d, s, c in zip(t.shape, t.strides, _c_strides(t.shape, t.itemsize))):
        raise InvalidArgument(f"buffer with shape {t.shape} and strides {t.strides} bytes is not contiguous")
    e = layout.elem_size
    row = layout.num_heads * layout.head_size * e
    plane = nb * layout.block_size * row
    need = plane * layout.num_layers * layout.num_planes
    if n < need:
        raise BufferTooSmall(f"buffer holds {n} bytes; {nb} blocks of {layout.describe().splitlines()[0]} "
                             f"need {need}")
    st = _strides(layout.block_size * row, row, layout.head_size * e, e)
    bases = [t.ptr + i * plane for i in range(layout.num_layers * layout.num_planes)]
    return KVLayout(dtype=layout.dtype, num_layers=layout.num_layers, num_planes=layout.num_planes, num_blocks=nb,
                    block_size=layout.block_size, num_heads=layout.num_heads, head_size=layout.head_size, bases=bases,
                    strides=[st] * layout.num_planes, kind="contiguous", device=t.device, owners=(t.owner,),
                    readonly=t.readonly)
