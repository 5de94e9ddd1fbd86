"""The emulated computational drive behind :class:`hauler.kv.StorageAttention`.

Started by the host side (``main`` in a new Python process), never used directly. It owns the
KV files in its directory (read with hauler.io), computes decode attention over them and talks to
the host through one shared-memory area and two pipes that carry only 8-byte doorbells:

    area: [0, 64)            header  (magic, sequence number, status, meta bytes, data bytes)
          [64, DATA_OFF)     meta    (JSON: the operation and its arguments, or the answer)
          [DATA_OFF, end)    data    (queries in, outputs out)

The host writes a request into the area and the sequence number into the request pipe; the drive
answers in the same area and writes the number back. A pipe's end of file means the other side is
gone: the drive exits, the host raises DriveLost.

A request's file holds its KV layer by layer: layer l at l * layer_stride (4 KiB-aligned), then
block by block, each block K then V, each [block_size, kv_heads, head_size] of the KV dtype, so
one layer of one request streams as a few large reads.
"""
from __future__ import annotations

import json
import math
import os
import select
import struct
from typing import Any, Dict, List, Optional, Tuple

HDR = struct.Struct("<QQqQQ")       # magic, seq, status (0 ok, 1 error), meta length, data length
MAGIC = 0x316472766C756168          # b"hauldrv1" little-endian
META_OFF = 64
DATA_OFF = 256 << 10
PAGE = 4096
KV_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}   # KV and query element types the drive computes on


class Geometry:
    """Where a request's KV lives in its file (see the module doc). sig: (dtype, layers,
    block_size, kv_heads, head_size)."""

    __slots__ = ("dtype", "layers", "block_size", "heads", "head_size", "tokens", "nblocks", "piece", "layer_stride")

    def __init__(self, sig: List[Any], tokens: int):
        self.dtype, self.layers, self.block_size, self.heads, self.head_size = (
            str(sig[0]), int(sig[1]), int(sig[2]), int(sig[3]), int(sig[4]))
        self.tokens = int(tokens)
        self.nblocks = -(-self.tokens // self.block_size)
        self.piece = self.block_size * self.heads * self.head_size * KV_DTYPES[self.dtype]   # one block's K (or V)
        self.layer_stride = -(-self.nblocks * 2 * self.piece // PAGE) * PAGE

    @property
    def sig(self) -> List[Any]:
        return [self.dtype, self.layers, self.block_size, self.heads, self.head_size]

    @property
    def layer_bytes(self) -> int:
        """Bytes of one layer's K and V (what a host must load to attend over it)."""
        return self.nblocks * 2 * self.piece

    @property
    def file_bytes(self) -> int:
        return self.layers * self.layer_stride


def torch_dtype(name: str) -> Any:
    import torch
    return getattr(torch, name)


def as_bytes(t: Any) -> Any:
    """A contiguous CPU tensor's bytes as a uint8 numpy array (no copy; bfloat16 included)."""
    import torch
    return t.contiguous().view(torch.uint8).numpy().reshape(-1)


def write_message(mm: Any, seq: int, status: int, meta: Dict[str, Any], data: Any = None) -> int:
    """Writes one message into the area; returns the meta bytes written. data: a uint8 numpy array."""
    m = json.dumps(meta, separators=(",", ":")).encode()
    if META_OFF + len(m) > DATA_OFF:
        raise ValueError(f"a message's meta of {len(m)} bytes does not fit in {DATA_OFF - META_OFF}")
    n = 0 if data is None else int(data.nbytes)
    if DATA_OFF + n > len(mm):
        raise ValueError(f"{n} bytes of data do not fit in the {len(mm) - DATA_OFF}-byte area")
    mm[META_OFF:META_OFF + len(m)] = m
    if n:
        import numpy as np
        np.frombuffer(mm, np.uint8, n, DATA_OFF)[:] = data.reshape(-1).view(np.uint8)
    mm[0:HDR.size] = HDR.pack(MAGIC, seq, status, len(m), n)
    return len(m)


def read_message(mm: Any, seq: int) -> Tuple[int, Dict[str, Any], int, int]:
    """The message in the area: (status, meta, data length, meta length); ValueError when it is
    not message seq."""
    magic, got, status, mlen, dlen = HDR.unpack_from(mm, 0)
    if magic != MAGIC or got != seq or META_OFF + mlen > DATA_OFF or DATA_OFF + dlen > len(mm):
        raise ValueError(f"the shared area does not hold message {seq} (magic {magic:#x}, seq {got}, "
                         f"meta {mlen} bytes, data {dlen} bytes)")
    return status, json.loads(bytes(mm[META_OFF:META_OFF + mlen]).decode()), dlen, mlen


def read_doorbell(fd: int, timeout: Optional[float]) -> Optional[int]:
    """The next 8-byte sequence number from fd; None at end of file (the writer is gone);
    TimeoutError after timeout seconds (None: wait for ever)."""
    buf = b""
    while len(buf) < 8:
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            raise TimeoutError
        chunk = os.read(fd, 8 - len(buf))
        if not chunk:
            return None
        buf += chunk
    return struct.unpack("<Q", buf)[0]


def ring(fd: int, seq: int) -> None:
    os.write(fd, struct.pack("<Q", seq))


class _Held:
    __slots__ = ("geo", "path", "file")

    def __init__(self, geo: Geometry, path: str, file: Any):
        self.geo, self.path, self.file = geo, path, file


class Drive:
    """The drive's state: the requests it holds and two read buffers for streaming."""

    def __init__(self, mm: Any, chunk_bytes: int):
        self.mm = mm
        self.chunk_bytes = chunk_bytes
        self.held: Dict[int, _Held] = {}
        self.bufs: List[Any] = []

    # -- operations ------------------------------------------------------------------------------
    def register(self, meta: Dict[str, Any]) -> Dict[str, Any]:
        """Takes a KV file the host wrote into the drive's directory (put)."""
        from hauler import io
        from hauler.errors import InvalidArgument
        geo = Geometry(meta["sig"], meta["tokens"])
        f = io.File(meta["path"], "r")
        if f.size() != geo.file_bytes:
            f.close()
            raise InvalidArgument(f"{meta['path']} holds {f.size()} bytes; {geo.tokens} tokens of this shape need "
                                  f"{geo.file_bytes}")
        self._hold(int(meta["handle"]), _Held(geo, meta["path"], f))
        return {"bytes": geo.file_bytes}

    def adopt(self, meta: Dict[str, Any]) -> Dict[str, Any]:
        """Copies a SwapSpace block group (a TensorStore entry: blocks of all layers and planes,
        block by block) into a file of the drive's own layout; the bytes stay on the drive."""
        import numpy as np
        from hauler import io
        from hauler._store_format import HEADER, aligned_empty, parse_header
        from hauler.errors import InvalidArgument
        from hauler.tensorstore import CorruptEntry
        geo = Geometry(meta["sig"], meta["tokens"])
        src = meta["src"]
        group_block = geo.layers * 2 * geo.piece
        with io.File(src, "r") as f:
            size = f.size()
            if size < HEADER:
                raise CorruptEntry(f"{src}: {size} bytes, shorter than a TensorStore header")
            h = aligned_empty(HEADER)
            f.read_into(h, offset=0)
            info = parse_header(h.tobytes(), src)
            off = int(info.get("offset", HEADER))
            have = int(info["nbytes"])
            need = geo.nblocks * group_block
            if have < need or have % group_block:
                raise InvalidArgument(f"{src} holds {have} bytes, not whole blocks of {group_block} bytes covering "
                                      f"{geo.tokens} tokens ({need} bytes)")
            if off + need > size:
                raise CorruptEntry(f"{src}: {size} bytes, shorter than its header's {off} + {need}")
            group = aligned_empty(need)
            f.read_into(group, offset=off)
        blocks = group.reshape(geo.nblocks, geo.layers, 2 * geo.piece)
        out = aligned_empty(geo.file_bytes)
        out[:] = 0
        for layer in range(geo.layers):
            start = layer * geo.layer_stride
            out[start:start + geo.layer_bytes].reshape(geo.nblocks, 2 * geo.piece)[:] = blocks[:, layer]
        del group, blocks
        path = meta["path"]
        with io.File(path, "w") as f:
            f.write(out)
        self._hold(int(meta["handle"]), _Held(geo, path, io.File(path, "r")))
        return {"bytes": need, "path": path}

    def drop(self, meta: Dict[str, Any]) -> Dict[str, Any]:
        h = self.held.pop(int(meta["handle"]), None)
        if h is not None:
            h.file.close()
            try:
                os.unlink(h.path)
            except FileNotFoundError:
                pass
        return {"dropped": h is not None}

    def attend(self, meta: Dict[str, Any], dlen: int) -> Tuple[Dict[str, Any], Any]:
        """Decode attention of one query token per request over its KV of one layer, streamed
        chunk by chunk (the next chunk read while this one is computed) with an online softmax."""
        import numpy as np
        import torch
        from hauler.errors import InvalidArgument, OutOfRange
        from hauler.kv.swap import UnknownRequest
        handles = [int(x) for x in meta["handles"]]
        layer, hq, d = int(meta["layer"]), int(meta["q_heads"]), int(meta["head_size"])
        qdt = torch_dtype(meta["q_dtype"])
        b = len(handles)
        es = torch.empty(0, dtype=qdt).element_size()
        if dlen != b * hq * d * es:
            raise InvalidArgument(f"{dlen} bytes of queries for {b} requests x {hq} heads x {d} ({meta['q_dtype']})")
        geos = []
        for h in handles:
            held = self.held.get(h)
            if held is None:
                raise UnknownRequest(f"the drive holds no request with handle {h}")
            g = held.geo
            if not 0 <= layer < g.layers:
                raise OutOfRange(f"layer {layer} is outside the request's {g.layers} layers")
            if g.head_size != d or hq % g.heads:
                raise InvalidArgument(f"{hq} query heads of {d} do not fit KV of {g.heads} heads of {g.head_size}")
            geos.append(held)
        q = torch.from_numpy(np.frombuffer(self.mm, np.uint8, dlen, DATA_OFF).copy()).view(qdt).view(b, hq, d).float()
        scale = float(meta["scale"]) if meta.get("scale") is not None else 1.0 / math.sqrt(d)
        # chunks: (request index, file, offset, bytes, blocks, valid tokens)
        chunks = []
        for i, held in enumerate(geos):
            g = held.geo
            per = max(1, self.chunk_bytes // (2 * g.piece))
            base = layer * g.layer_stride
            for c in range(0, g.nblocks, per):
                n = min(per, g.nblocks - c)
                chunks.append((i, held, base + c * 2 * g.piece, n * 2 * g.piece, n,
                               min(n * g.block_size, g.tokens - c * g.block_size)))
        need = max(c[3] for c in chunks)
        if not self.bufs or self.bufs[0].nbytes < need:
            from hauler._store_format import aligned_empty
            self.bufs = [aligned_empty(need), aligned_empty(need)]
        states = [None] * b
        reads = [None] * len(chunks)

        def start(j: int) -> Any:
            _, held, off, size, _, _ = chunks[j]
            return held.file.pread(self.bufs[j % 2], size, off)

        reads[0] = start(0)
        kv_bytes = 0
        for j, (i, held, _, size, n, valid) in enumerate(chunks):
            reads[j].result()
            reads[j] = None
            if j + 1 < len(chunks):
                reads[j + 1] = start(j + 1)
            g = held.geo
            kvc = torch.from_numpy(self.bufs[j % 2][:size]).view(torch_dtype(g.dtype)).view(
                n, 2, g.block_size, g.heads, g.head_size)
            k = kvc[:, 0].reshape(n * g.block_size, g.heads, g.head_size)[:valid].float()
            v = kvc[:, 1].reshape(n * g.block_size, g.heads, g.head_size)[:valid].float()
            states[i] = online_softmax_step(states[i], q[i].view(g.heads, hq // g.heads, d), k, v, scale)
            kv_bytes += size
        out = torch.stack([softmax_result(st, hq, d) for st in states]).to(qdt).contiguous()
        return {"kv_read_bytes": kv_bytes, "chunks": len(chunks)}, as_bytes(out)

    # -- bookkeeping -----------------------------------------------------------------------------
    def _hold(self, handle: int, held: _Held) -> None:
        old = self.held.pop(handle, None)
        if old is not None:
            old.file.close()
        self.held[handle] = held

    def close(self) -> None:
        for h in self.held.values():
            h.file.close()
        self.held.clear()


def online_softmax_step(state: Any, q: Any, k: Any, v: Any, scale: float) -> Any:
    """One block of softmax(q k^T * scale) v folded into the running (max, sum, output) of each
    query head. q: [kv_heads, group, d]; k, v: [tokens, kv_heads, d]; all float32."""
    import torch
    s = torch.matmul(q, k.permute(1, 2, 0)) * scale                  # [kv_heads, group, tokens]
    m_blk = s.amax(-1)
    if state is None:
        p = torch.exp(s - m_blk.unsqueeze(-1))
        return m_blk, p.sum(-1), torch.matmul(p, v.permute(1, 0, 2))
    m, l, o = state
    m_new = torch.maximum(m, m_blk)
    corr = torch.exp(m - m_new)
    p = torch.exp(s - m_new.unsqueeze(-1))
    return m_new, l * corr + p.sum(-1), o * corr.unsqueeze(-1) + torch.matmul(p, v.permute(1, 0, 2))


def softmax_result(state: Any, q_heads: int, head_size: int) -> Any:
    """The attention output [q_heads, head_size] of a finished online softmax."""
    _, l, o = state
    return (o / l.unsqueeze(-1)).reshape(q_heads, head_size)


def serve(area: str, req_fd: int, resp_fd: int, threads: int, chunk_bytes: int) -> int:
    import mmap
    import torch
    torch.set_num_threads(threads)
    with open(area, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0)
    drive = Drive(mm, chunk_bytes)
    ops = {"register": drive.register, "adopt": drive.adopt, "drop": drive.drop}
    ring(resp_fd, 0)   # ready: the host may unlink the area's name now
    try:
        while True:
            seq = read_doorbell(req_fd, None)
            if seq is None:
                return 0   # the host is gone
            data = None
            try:
                _, meta, dlen, _ = read_message(mm, seq)
                op = meta.get("op")
                if op == "stop":
                    answer = {}
                elif op == "attend":
                    answer, data = drive.attend(meta, dlen)
                elif op in ops:
                    answer = ops[op](meta)
                else:
                    raise ValueError(f"unknown operation {op!r}")
                status = 0
            except Exception as e:  # noqa: BLE001 - every failure goes back to the host, typed
                status, answer, data = 1, {"error": type(e).__name__, "message": str(e)}, None
            write_message(mm, seq, status, answer, data)
            ring(resp_fd, seq)
            if status == 0 and meta.get("op") == "stop":
                return 0
    finally:
        drive.close()


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="hauler.kv._drive", description=__doc__.splitlines()[0])
    p.add_argument("--area", required=True)
    p.add_argument("--req-fd", type=int, required=True)
    p.add_argument("--resp-fd", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk-bytes", type=int, default=1 << 20)
    a = p.parse_args(argv)
    return serve(a.area, a.req_fd, a.resp_fd, a.threads, a.chunk_bytes)

