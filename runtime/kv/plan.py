"""kv.plan: a block move between two KV layouts, built once in C++ and reused.

The plan is a list of (src_address, dst_address, nbytes) pieces, coalesced (whole blocks, runs of
consecutive blocks and whole planes merge when both sides are contiguous), plus the same move as
one hauler Datatype per side for the datatype engine and MPI paths."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from .. import _core
from .._buffers import as_int, is_torch_tensor
from ..errors import InvalidArgument, OutOfRange
from .layout import KVLayout

__all__ = ["Plan", "plan", "block_ids"]


def block_ids(blocks: Any, what: str) -> np.ndarray:
    """A 1-D int32/int64 numpy array of block ids (torch, numpy, list; no copy when already so)."""
    if is_torch_tensor(blocks):
        blocks = blocks.detach().cpu().numpy()
    if isinstance(blocks, range):
        blocks = np.arange(blocks.start, blocks.stop, blocks.step, dtype=np.int64)
    if not isinstance(blocks, np.ndarray):
        try:
            blocks = np.asarray(blocks)
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"{what} must be an array of block ids: {e}") from None
        if blocks.size == 0:
            blocks = blocks.astype(np.int64)
        if blocks.dtype.kind in "iu":
            blocks = blocks.astype(np.int64)
    if blocks.dtype not in (np.int32, np.int64):
        raise InvalidArgument(f"{what} must hold int32 or int64 block ids, got dtype {blocks.dtype}")
    if blocks.ndim != 1:
        raise InvalidArgument(f"{what} must be 1-D, got shape {blocks.shape}")
    return np.ascontiguousarray(blocks)


def _layers(layers: Any, n: int) -> list:
    if layers is None:
        return []
    if isinstance(layers, int) or isinstance(layers, np.integer):
        raise InvalidArgument(f"layers must be a range or a list of layer numbers, got {layers!r}")
    try:
        out = [as_int(f"layers[{i}]", v) for i, v in enumerate(layers)]
    except TypeError:
        raise InvalidArgument(f"layers must be a range or a list of layer numbers, got {type(layers).__name__}") from None
    if not out:
        raise InvalidArgument("layers is empty: pass None for every layer")
    if len(set(out)) != len(out):
        raise InvalidArgument(f"layers {out} names a layer twice")
    return out


def _range(name: str, v: Any) -> Tuple[int, int]:
    try:
        a, b = v
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name} must be a pair (first, end), got {v!r}") from None
    return as_int(f"{name}[0]", a), as_int(f"{name}[1]", b)


class Plan:
    """A validated, coalesced block move (see kv.plan). Immutable; reuse it for every move it describes."""

    __slots__ = ("src_layout", "dst_layout", "src_blocks", "dst_blocks", "num_tokens", "heads", "dst_heads", "layers",
                 "_segs", "_moves", "_nbytes", "_args", "_types", "_checked", "_seq", "_pairs")

    def __init__(self, src_layout: KVLayout, dst_layout: KVLayout, src_blocks: np.ndarray, dst_blocks: np.ndarray,
                 info: tuple, segs: np.ndarray, boxes: np.ndarray, args: tuple):
        self.src_layout, self.dst_layout = src_layout, dst_layout
        self.src_blocks, self.dst_blocks = src_blocks, dst_blocks
        _, T, h0, h1, dh0, layers = info
        self.num_tokens, self.heads, self.dst_heads = T, (h0, h1), (dh0, dh0 + h1 - h0)
        self.layers = tuple(layers)
        for a in (segs, boxes):
            a.setflags(write=False)
        # What the movers run: pieces plus boxes (grids of small pieces moved as tiled transposes); the
        # canonical pieces of segments() are then built on first use from the same request (`args`).
        self._moves = (segs, boxes)
        self._segs = segs if len(boxes) == 0 else None
        self._nbytes = int(segs[:, 2].sum()) + int((boxes[:, 2] * boxes[:, 3:6].prod(axis=1)).sum())
        self._args = args
        self._types = None
        self._checked = None   # the move's one-time checks (kv.moves), done on first run
        self._seq = None       # whether src_blocks / dst_blocks are 0, 1, ... (a scatter's / gather's plan)
        self._pairs = None     # (n, 2) src -> dst ids as bytes, for copy_blocks' check of its mapping

    def segments(self) -> np.ndarray:
        """(n, 3) int64: (src_address, dst_address, nbytes), read-only, in the order (layer, plane, token,
        head, dim) (inside one block pair, the (token, head) order both sides share when it makes pieces larger)."""
        if self._segs is None:
            segs = _core.kv_plan(*self._args, False)[0]
            segs.setflags(write=False)
            self._segs = segs
        return self._segs

    @property
    def nbytes(self) -> int:
        return self._nbytes

    @property
    def num_segments(self) -> int:
        return len(self.segments())

    def _datatypes(self):
        if self._types is None:
            segs, g = self.segments(), self._groups()
            self._types = (_side_type(segs, 0, g), _side_type(segs, 1, g))
        return self._types

    def _groups(self) -> int:
        """How many (layer, plane) groups of identical piece patterns the pieces split into (1: none)."""
        g = len(self.layers) * self.src_layout.num_planes
        s = self.segments()
        if g <= 1 or len(s) % g:
            return 1
        k = len(s) // g
        grouped = s.reshape(g, k, 3)
        rel = grouped[:, :, :2] - grouped[:, :1, :2]
        same = (rel == rel[:1]).all() and (grouped[:, :, 2] == grouped[:1, :, 2]).all()
        return g if same else 1

    @property
    def src_type(self):
        """hauler Datatype of the source side: displacements are absolute addresses (origin 0, like
        MPI_BOTTOM); packing with src_type and unpacking with dst_type performs the move."""
        return self._datatypes()[0]

    @property
    def dst_type(self):
        return self._datatypes()[1]

    def describe(self) -> str:
        n = self.num_segments
        sizes = self.segments()[:, 2] if n else np.zeros(0, np.int64)
        return (f"kv.Plan: {len(self.src_blocks)} source blocks -> {len(self.dst_blocks)} destination blocks, "
                f"{self.num_tokens} tokens, layers {list(self.layers) if len(self.layers) < 8 else f'{len(self.layers)} layers'}, "
                f"heads {self.heads} -> {self.dst_heads}\n"
                f"  src: {self.src_layout!r}\n  dst: {self.dst_layout!r}\n"
                f"  {n} segments, {self.nbytes} bytes" +
                (f" (pieces {int(sizes.min())}..{int(sizes.max())} B, mean {self.nbytes // n} B)" if n else ""))

    def __repr__(self) -> str:
        return f"<kv.Plan {self.num_segments} segments, {self.nbytes} bytes>"


def _hindexed(lens: Any, disps: Any, old: Any) -> Any:
    """Datatype.hindexed without its per-element Python checks: the lists are int64 arrays already."""
    from ..datatype import Datatype
    return Datatype(_core.hindexed(np.asarray(lens, np.int64).tolist(), np.asarray(disps, np.int64).tolist(), old._t))


def _side_type(segs: np.ndarray, side: int, groups: int):
    """One side's Datatype: bytes hindexed over the pieces; when the (layer, plane) groups repeat one
    pattern, that pattern once, placed per group (hvector when the groups are evenly spaced)."""
    from ..datatype import BYTE, Datatype
    if groups <= 1:
        return _hindexed(segs[:, 2], segs[:, side], BYTE)
    g = segs.reshape(groups, -1, 3)
    first = g[0]
    inner = _hindexed(first[:, 2], first[:, side] - first[0, side], BYTE)
    starts = g[:, 0, side]
    steps = np.diff(starts)
    if len(steps) and (steps == steps[0]).all():
        return _hindexed([1], starts[:1], Datatype.hvector(groups, 1, int(steps[0]), inner))
    return _hindexed(np.ones(groups, np.int64), starts, inner)


def plan(src_layout: KVLayout, src_blocks: Any, dst_layout: KVLayout, dst_blocks: Any, layers: Any = None,
         heads: Optional[Sequence[int]] = None, dst_heads: Optional[Sequence[int]] = None,
         num_tokens: Optional[int] = None) -> Plan:
    """Plan moving the tokens of src_blocks (concatenated in list order) to the tokens of dst_blocks.

    Different block sizes regroup tokens; heads=(h0, h1) takes a head slice of the source, landing at
    dst_heads (default (0, h1-h0) when the destination has h1-h0 heads, else (h0, h1)). Pure address
    arithmetic: building a plan never touches the memory. Raises before anything else on bad input."""
    for name, l in (("src_layout", src_layout), ("dst_layout", dst_layout)):
        if not isinstance(l, KVLayout):
            raise InvalidArgument(f"{name} must be a KVLayout, got {type(l).__name__}")
    if src_layout.dtype != dst_layout.dtype:
        raise InvalidArgument(f"element types differ: src is {src_layout.dtype}, dst is {dst_layout.dtype}")
    sb, db = block_ids(src_blocks, "src_blocks"), block_ids(dst_blocks, "dst_blocks")
    lay = _layers(layers, src_layout.num_layers)
    h0, h1 = (0, -1) if heads is None else _range("heads", heads)
    if heads is not None and not 0 <= h0 < h1 <= src_layout.num_heads:
        raise OutOfRange(f"heads {(h0, h1)} is not a non-empty range of the source's {src_layout.num_heads} heads")
    dh0 = -1
    if dst_heads is not None:
        d0, d1 = _range("dst_heads", dst_heads)
        hh = (h1 if h1 >= 0 else src_layout.num_heads) - h0
        if d1 - d0 != hh:
            raise InvalidArgument(f"dst_heads {(d0, d1)} spans {d1 - d0} heads but heads "
                                  f"{(h0, h1 if h1 >= 0 else src_layout.num_heads)} spans {hh}")
        if d0 < 0:
            raise InvalidArgument(f"dst_heads {(d0, d1)} starts below 0")
        dh0 = d0
    nt = -1 if num_tokens is None else as_int("num_tokens", num_tokens, minimum=0)
    sb, db = _frozen(sb), _frozen(db)
    args = (src_layout._desc(), dst_layout._desc(), sb.ctypes.data, len(sb), sb.itemsize, db.ctypes.data, len(db),
            db.itemsize, lay, h0, h1, dh0, nt)
    segs, *info, boxes = _core.kv_plan(*args, True)
    return Plan(src_layout, dst_layout, sb, db, (None, *info), segs, boxes, args)


def _frozen(ids: np.ndarray) -> np.ndarray:
    """A read-only copy the plan owns (the caller may reuse its array; segments() re-plans from these)."""
    c = ids.copy()
    c.setflags(write=False)
    return c
