"""KV caches of every layout kind over random bytes, with the numpy reference of their blocks.

make_cache() allocates the engine's own tensors for one layout kind (numpy or torch, real strides
included), fills them with random bytes and returns the hauler layout plus, per (layer, plane), a
numpy VIEW of the same memory indexed [block, token, head, dim...]: fancy indexing of those views is
the reference every move is checked against."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np

from hauler import kv

from .device import FakeCudaArray

KINDS = ("vllm_flash_nhd", "vllm_flash_hnd", "mla", "cross_layer_nhd", "cross_layer_hnd", "vllm_legacy", "sglang",
         "lmcache_chunk", "explicit", "contiguous")
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}
_TORCH = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32", "int8": "int8",
          "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2"}


@dataclass
class Cache:
    layout: kv.KVLayout
    planes: List[np.ndarray]   # num_layers * num_planes views [block, token, head, dim] (dim may be (dim/x, x))
    tensors: List[Any]         # the engine tensors (kept alive with the views)

    def plane(self, layer: int, p: int) -> np.ndarray:
        return self.planes[layer * self.layout.num_planes + p]

    def blocks(self, ids: Any, layers: Optional[List[int]] = None, heads: Optional[tuple] = None) -> np.ndarray:
        """Reference gather: [layers, planes, len(ids), block_size, heads, head_size] (element-size ints)."""
        L = self.layout
        layers = range(L.num_layers) if layers is None else layers
        h0, h1 = heads or (0, L.num_heads)
        ids = np.asarray(ids, dtype=np.int64)
        out = [[self.plane(l, p)[ids].reshape(len(ids), L.block_size, L.num_heads, L.head_size)[:, :, h0:h1]
                for p in range(L.num_planes)] for l in layers]
        return np.array(out).reshape(len(layers), L.num_planes, len(ids), L.block_size, h1 - h0, L.head_size)

    def tokens(self, ids: Any, **kw: Any) -> np.ndarray:
        """The same with each plane's tokens concatenated: [layers, planes, tokens, heads, head_size]."""
        b = self.blocks(ids, **kw)
        return b.reshape(b.shape[0], b.shape[1], -1, b.shape[4], b.shape[5])

    def set_tokens(self, ids: Any, vals: np.ndarray, layers: Optional[List[int]] = None,
                   heads: Optional[tuple] = None) -> None:
        """Reference scatter of [layers, planes, tokens, heads', head_size] into the tokens of `ids` (in order)."""
        L = self.layout
        layers = range(L.num_layers) if layers is None else layers
        h0, h1 = heads or (0, L.num_heads)
        T = vals.shape[2]
        for li, l in enumerate(layers):
            for p in range(L.num_planes):
                v = self.plane(l, p)
                for t in range(T):
                    b, s = int(ids[t // L.block_size]), t % L.block_size
                    v[b, s, h0:h1] = vals[li, p, t].reshape(v[b, s, h0:h1].shape)

    def snapshot(self) -> List[np.ndarray]:
        return [v.copy() for v in self.planes]


def _alloc(lib: str, shape: tuple, dtype: str, rng: np.random.Generator, perm: Optional[tuple] = None):
    """A tensor of `shape` filled with random bytes; with perm, a permuted view of a contiguous tensor
    (so its strides are not C order). Returns (tensor, numpy uint view with the tensor's strides)."""
    es = kv.DTYPES[dtype]
    base_shape = shape if perm is None else tuple(shape[i] for i in perm)
    raw = rng.integers(0, 256, int(np.prod(base_shape)) * es, dtype=np.uint8)
    if lib == "torch":
        import torch
        t = torch.from_numpy(raw).view(getattr(torch, _TORCH[dtype])).reshape(base_shape)
        if perm is not None:
            t = t.permute(*np.argsort(perm).tolist())
        u = t.view(getattr(torch, {1: "uint8", 2: "int16", 4: "int32"}[es])).numpy().view(_UINT[es])
        return t, u
    if lib == "emu_device":  # emulated device memory another process can map (the CUDA IPC emulation)
        dev = np.asarray(EmuDeviceBuffer(raw.nbytes))
        dev[:] = raw
        raw = dev
    a = raw.view(_UINT[es]).reshape(base_shape)
    if perm is not None:
        a = a.transpose(np.argsort(perm))
    if lib in ("fake_cuda", "emu_device"):
        return fake_cuda(a), a
    return a, a


def make_cache(kind: str, rng: np.random.Generator, L: int = 2, NB: int = 6, BS: int = 4, H: int = 2, D: int = 8,
               dtype: str = "float16", lib: str = "numpy", x: int = 4) -> Cache:
    """A cache of `kind` (see KINDS) with random bytes. numpy tensors are unsigned ints of the element
    size, passed with dtype= so the layout reads them as `dtype`; lib="fake_cuda" wraps them in
    FakeCudaArray (device layouts over host memory, for the GPU emulation); lib="emu_device" too, over
    the emulation's device memory (which a peer process maps through the emulated CUDA IPC)."""
    kw = {"dtype": dtype} if lib != "torch" else {}
    if kind.startswith("vllm_flash"):
        order = kind[-3:].upper()
        shape = (2, NB, BS, H, D) if order == "NHD" else (2, NB, H, BS, D)
        ts = [_alloc(lib, shape, dtype, rng) for _ in range(L)]
        lay = kv.KVLayout.vllm_flash([t for t, _ in ts], order=order, **kw)
        planes = [u[p] if order == "NHD" else u[p].transpose(0, 2, 1, 3) for _, u in ts for p in range(2)]
        return Cache(lay, planes, [t for t, _ in ts])
    if kind == "mla":
        ts = [_alloc(lib, (NB, BS, H * D), dtype, rng) for _ in range(L)]
        lay = kv.KVLayout.mla([t for t, _ in ts], **kw)
        return Cache(lay, [u.reshape(NB, BS, 1, H * D) for _, u in ts], [t for t, _ in ts])
    if kind.startswith("cross_layer"):
        order = kind[-3:].upper()
        shape = (NB, L, 2, BS, H, D) if order == "NHD" else (NB, L, 2, H, BS, D)
        t, u = _alloc(lib, shape, dtype, rng)
        lay = kv.KVLayout.cross_layer(t, order=order, **kw)
        planes = [u[:, l, p] if order == "NHD" else u[:, l, p].transpose(0, 2, 1, 3) for l in range(L) for p in range(2)]
        return Cache(lay, planes, [t])
    if kind == "vllm_legacy":
        ks = [_alloc(lib, (NB, H, D // x, BS, x), dtype, rng) for _ in range(L)]
        vs = [_alloc(lib, (NB, H, D, BS), dtype, rng) for _ in range(L)]
        lay = kv.KVLayout.vllm_legacy([t for t, _ in ks], [t for t, _ in vs], **kw)
        planes = []
        for (_, k), (_, v) in zip(ks, vs):
            planes += [k.transpose(0, 3, 1, 2, 4), v.transpose(0, 3, 1, 2)]
        return Cache(lay, planes, [t for t, _ in ks + vs])
    if kind == "sglang":
        tokens = NB * BS + 1  # a tail shorter than a page is not addressable
        ks = [_alloc(lib, (tokens, H, D), dtype, rng) for _ in range(L)]
        vs = [_alloc(lib, (tokens, H, D), dtype, rng, perm=(1, 0, 2)) for _ in range(L)]  # head-major V pool
        lay = kv.KVLayout.sglang([t for t, _ in ks], [t for t, _ in vs], BS, **kw)
        planes = []
        for (_, k), (_, v) in zip(ks, vs):
            planes += [k[:NB * BS].reshape(NB, BS, H, D), _pages(v, NB, BS)]
        return Cache(lay, planes, [t for t, _ in ks + vs])
    if kind == "lmcache_chunk":
        t, u = _alloc(lib, (2, L, NB * BS, H * D), dtype, rng)
        lay = kv.KVLayout.lmcache_chunk(t, BS, num_heads=H, **kw)
        planes = [u[p, l].reshape(NB, BS, H, D) for l in range(L) for p in range(2)]
        return Cache(lay, planes, [t])
    if kind == "explicit":
        # one buffer, layer-major, K and V of a block side by side, HND inside them
        t, u = _alloc(lib, (L, NB, 2, H, BS, D), dtype, rng)
        es = kv.DTYPES[dtype]
        base = u.__array_interface__["data"][0]
        s = u.strides
        st = {"block": s[1], "token": s[4], "head": s[3], "dim": s[5]}
        lay = kv.KVLayout.explicit(dtype, L, 2, NB, BS, H, D, [[base + l * s[0] + p * s[2] for p in range(2)]
                                                              for l in range(L)], st,
                                   device="cuda" if lib in ("fake_cuda", "emu_device") else None)
        planes = [u[l, :, p].transpose(0, 2, 1, 3) for l in range(L) for p in range(2)]
        assert es == u.itemsize
        return Cache(lay, planes, [t])
    if kind == "contiguous":
        like = make_cache("vllm_flash_nhd", rng, L, 1, BS, H, D, dtype, "numpy")
        t, u = _alloc(lib, (L, 2, NB, BS, H, D), dtype, rng)
        lay = kv.contiguous_layout_like(like.layout, NB, t)
        return Cache(lay, [u[l, p] for l in range(L) for p in range(2)], [t])
    raise ValueError(kind)


class EmuDeviceBuffer:
    """n bytes of the GPU emulation's device memory (shared memory), freed with the last view."""

    def __init__(self, n: int):
        from hauler import _core
        self._free = _core._gpu_emu_device_free
        self.addr = _core._gpu_emu_device_alloc(n)
        self.__array_interface__ = {"version": 3, "shape": (n,), "typestr": "|u1", "data": (self.addr, False)}

    def __del__(self):
        self._free(self.addr)


def fake_cuda(a: np.ndarray, readonly: bool = False) -> FakeCudaArray:
    """A FakeCudaArray over `a` with its real strides."""
    return FakeCudaArray(a, readonly, strides=None if a.flags.c_contiguous else a.strides)


def _pages(pool: np.ndarray, NB: int, BS: int) -> np.ndarray:
    """[tokens, heads, dim] (any strides) as a [block, token, head, dim] view."""
    st = pool.strides
    return np.lib.stride_tricks.as_strided(pool, (NB, BS) + pool.shape[1:], (st[0] * BS,) + st)


def poison(cache: Cache, fill: int = 0xA5) -> None:
    for v in cache.planes:
        v[...] = int.from_bytes(bytes([fill]) * v.itemsize, "little")

