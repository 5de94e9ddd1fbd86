"""Local block moves: gather (paged -> contiguous), scatter (contiguous -> paged) and copy (between two
caches or inside one). Each takes a plan or builds one; the host engine splits the plan's pieces over
the thread pool by bytes (GIL released); device layouts go to the CUDA kernel (one launch per plan).
Layouts over torch tensors go through hauler._torch_ops, which torch.compile traces as custom ops."""
from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np

from .. import _core
from .._buffers import as_int, is_torch_tensor
from ..errors import InvalidArgument, ReadOnlyBuffer
from .layout import KVLayout, contiguous_layout_like
from .plan import Plan, block_ids, plan as make_plan

__all__ = ["gather_blocks", "scatter_blocks", "copy_blocks", "run_plan"]


def _threads(threads: Optional[int]) -> int:
    return 0 if threads is None else as_int("threads", threads, minimum=1)


def run_plan(p: Plan, *, threads: Optional[int] = None, stream: Optional[int] = None) -> None:
    """Perform a plan's move. Both layouts must be this process's memory; the destination writable.
    threads: host moves (default: one thread below 64 MiB, else HAULER_THREADS). stream: device moves (a
    cudaStream_t as an int): the launch is queued on it and the call returns; without it the move runs on
    the current torch stream (or the default stream) and the call waits for it."""
    if type(p) is Plan and p._checked is _HOST and stream is None:   # a host plan that passed every check
        _core.kv_copy_host(*p._moves, 0 if threads is None else _threads(threads))
        return
    if not isinstance(p, Plan):
        raise InvalidArgument(f"plan must be a kv.Plan, got {type(p).__name__}")
    src, dst = p.src_layout, p.dst_layout
    for side, l in (("source", src), ("destination", dst)):
        if l.remote:
            raise InvalidArgument(f"the {side} layout is another process's memory (from_bytes): plan against it, "
                                  "move with a transfer")
    if dst._readonly:
        raise ReadOnlyBuffer(f"the destination {dst!r} is read-only")
    if stream is not None:
        as_int("stream", stream, minimum=0)
        if src.device is None and dst.device is None:
            raise InvalidArgument("stream= applies to device layouts; both layouts are host memory (host moves "
                                  "are synchronous)")
    if p._checked is None:
        if _overlaps(src, dst):
            _core.kv_check_disjoint(p.segments())
        p._checked = _HOST if src.device is None and dst.device is None else _DEVICE
    if p._checked is _DEVICE:
        from . import _device
        segs, boxes = p._moves
        _device.copy(segs, src, dst, stream, boxes=boxes)
        return
    _core.kv_copy_host(*p._moves, _threads(threads))


_HOST, _DEVICE = "host", "device"   # Plan._checked once the one-time checks passed


def _same_ids(frozen: np.ndarray, ids: Any) -> bool:
    """Whether `ids` (as a caller passes them) are the plan's block ids, without converting them."""
    if not isinstance(ids, np.ndarray) or ids.dtype != frozen.dtype or ids.shape != frozen.shape:
        return False
    return ids.tobytes() == frozen.tobytes() if ids.size <= 4096 else bool(np.array_equal(ids, frozen))


def _same_buffer(layout: KVLayout, buf: Any, write: bool) -> bool:
    """Whether `buf` is the very array a contiguous layout was made over, in place (and still writable)."""
    o = layout._owners
    if len(o) != 1 or o[0] is not buf:
        return False
    if isinstance(buf, np.ndarray):      # a live ndarray's memory cannot move while the layout holds it
        return (buf.flags.writeable or not write) and buf.flags.c_contiguous
    if is_torch_tensor(buf):             # torch tensors can be re-pointed in place (set_, resize_)
        return (buf.data_ptr() == layout._bases[0] and buf.is_contiguous()
                and buf.numel() * buf.element_size() >= layout.block_bytes * layout.num_blocks)
    return False


def _same_pairs(p: Plan, m: Any) -> bool:
    """Whether the (n, 2) `mapping` names the plan's source and destination blocks."""
    if not isinstance(m, np.ndarray) or m.dtype != p.src_blocks.dtype or m.shape != (len(p.src_blocks), 2):
        return False
    if p._pairs is None:
        p._pairs = np.stack([p.src_blocks, p.dst_blocks], axis=1).tobytes()
    return m.tobytes() == p._pairs


def _is_seq(p: Plan, side: int) -> bool:
    """Whether the plan's source (0) or destination (1) block ids are 0, 1, ... (a gather or scatter plan)."""
    if p._seq is None:
        p._seq = tuple(bool(b.dtype == np.int64 and np.array_equal(b, np.arange(len(b))))
                       for b in (p.src_blocks, p.dst_blocks))
    return p._seq[side]


def _torch_ops(*layouts: Any) -> Any:
    """hauler._torch_ops when a layout is over torch tensors, or over raw addresses while torch is
    imported (so torch.compile refuses it precisely), else None: never imports torch itself."""
    global _OPS
    for l in layouts:
        owners = getattr(l, "_owners", ())
        if (is_torch_tensor(owners[0]) if owners else "torch" in sys.modules):
            if _OPS is None:
                from .. import _torch_ops
                _OPS = _torch_ops
            return _OPS
    return None


_OPS = None   # hauler._torch_ops once loaded (an import statement per move costs more than the move's checks)


def _new_out(layout: KVLayout, n: int) -> Any:
    """A new [layers, planes, n, block_size, heads, head_size] array like the layout's caches."""
    if not isinstance(layout, KVLayout):
        raise InvalidArgument(f"layout must be a KVLayout, got {type(layout).__name__}")
    shape = (layout.num_layers, layout.num_planes, n, layout.block_size, layout.num_heads, layout.head_size)
    o = layout._owners[0] if layout._owners else None
    if is_torch_tensor(o):
        return o.new_empty(shape)
    if isinstance(o, np.ndarray):
        return np.empty(shape, o.dtype)
    raise InvalidArgument(f"gather_blocks makes its output like the layout's caches (torch or numpy); {layout!r} "
                          f"is over {type(o).__name__ if o is not None else 'raw addresses'}: pass out=")


def _overlaps(a: KVLayout, b: KVLayout) -> bool:
    ra, rb = a.regions(), b.regions()
    i = j = 0
    while i < len(ra) and j < len(rb):
        (sa, na), (sb, nb) = ra[i], rb[j]
        if sa < sb + nb and sb < sa + na:
            return True
        if sa + na <= sb + nb:
            i += 1
        else:
            j += 1
    return False


def _check_plan(p: Any, src: KVLayout, dst: KVLayout, sb: np.ndarray, db: np.ndarray) -> Plan:
    if not isinstance(p, Plan):
        raise InvalidArgument(f"plan must be a kv.Plan, got {type(p).__name__}")
    if p.src_layout != src or p.dst_layout != dst:
        raise InvalidArgument("plan was built for other layouts or buffers than this call's: "
                              f"plan {p.src_layout!r} -> {p.dst_layout!r}, call {src!r} -> {dst!r}")
    if not (np.array_equal(p.src_blocks, sb) and np.array_equal(p.dst_blocks, db)):
        raise InvalidArgument("plan was built for other block ids than this call's")
    if dst._readonly:   # the plan's layout may predate a buffer made read-only since
        raise ReadOnlyBuffer(f"the destination {dst!r} is read-only")
    return p


def gather_blocks(layout: KVLayout, blocks: Any, out: Any = None, plan: Optional[Plan] = None, *,
                  threads: Optional[int] = None, stream: Optional[int] = None) -> Any:
    """Copy `blocks` (in list order, repeats allowed) into the contiguous `out`, laid out as
    contiguous_layout_like(layout, len(blocks), out). Returns out; out=None: a new
    [layers, planes, len(blocks), block_size, heads, head_size] array or tensor like the caches."""
    ops = _torch_ops(layout)
    if ops is not None:
        got = ops.kv_gather(layout, blocks, out, (plan, threads, stream))
        if got is not None:
            return got
    if (type(plan) is Plan and stream is None and plan.src_layout is layout and _same_ids(plan.src_blocks, blocks)
            and _same_buffer(plan.dst_layout, out, True) and _is_seq(plan, 1)):
        run_plan(plan, threads=threads)
        return out
    ids = block_ids(blocks, "blocks")
    if out is None:
        out = _new_out(layout, len(ids))
    if len(ids) == 0:
        return out
    dst = contiguous_layout_like(layout, len(ids), out)
    seq = np.arange(len(ids), dtype=np.int64)
    p = make_plan(layout, ids, dst, seq) if plan is None else _check_plan(plan, layout, dst, ids, seq)
    run_plan(p, threads=threads, stream=stream)
    return out


def scatter_blocks(layout: KVLayout, blocks: Any, src: Any, plan: Optional[Plan] = None, *,
                   threads: Optional[int] = None, stream: Optional[int] = None) -> None:
    """The reverse of gather_blocks: the contiguous `src` into `blocks` (each at most once)."""
    ops = _torch_ops(layout)
    if ops is not None and ops.kv_scatter(layout, blocks, src, (plan, threads, stream)):
        return
    if (type(plan) is Plan and stream is None and plan.dst_layout is layout and _same_ids(plan.dst_blocks, blocks)
            and _same_buffer(plan.src_layout, src, False) and _is_seq(plan, 0)):
        run_plan(plan, threads=threads)
        return
    ids = block_ids(blocks, "blocks")
    if len(ids) == 0:
        return
    s = contiguous_layout_like(layout, len(ids), src)
    seq = np.arange(len(ids), dtype=np.int64)
    p = make_plan(s, seq, layout, ids) if plan is None else _check_plan(plan, s, layout, seq, ids)
    run_plan(p, threads=threads, stream=stream)


def copy_blocks(src_layout: KVLayout, dst_layout: KVLayout, mapping: Any, plan: Optional[Plan] = None, *,
                threads: Optional[int] = None, stream: Optional[int] = None) -> None:
    """Copy block mapping[i, 0] of src_layout to block mapping[i, 1] of dst_layout (the same layout for a
    copy inside one cache: no destination block may be a source block then)."""
    ops = _torch_ops(src_layout, dst_layout)
    if ops is not None and ops.kv_copy(src_layout, dst_layout, mapping, (plan, threads, stream)):
        return
    if (type(plan) is Plan and stream is None and plan.src_layout is src_layout and plan.dst_layout is dst_layout
            and _same_pairs(plan, mapping)):
        run_plan(plan, threads=threads)
        return
    m = mapping
    if hasattr(m, "detach"):
        m = m.detach().cpu().numpy()
    m = np.asarray(m)
    if m.size == 0:
        m = m.reshape(0, 2).astype(np.int64)
    if m.ndim != 2 or m.shape[1] != 2:
        raise InvalidArgument(f"mapping must have shape (n, 2) (source, destination), got {m.shape}")
    for name, l in (("src_layout", src_layout), ("dst_layout", dst_layout)):
        if not isinstance(l, KVLayout):
            raise InvalidArgument(f"{name} must be a KVLayout, got {type(l).__name__}")
    if src_layout.block_size != dst_layout.block_size:
        raise InvalidArgument(f"block sizes differ: src {src_layout.block_size}, dst {dst_layout.block_size}; "
                              "copy_blocks maps block to block (kv.plan regroups tokens)")
    sb, db = block_ids(m[:, 0].copy(), "mapping[:, 0]"), block_ids(m[:, 1].copy(), "mapping[:, 1]")
    if len(sb) == 0:
        return
    p = make_plan(src_layout, sb, dst_layout, db) if plan is None else _check_plan(plan, src_layout, dst_layout, sb, db)
    run_plan(p, threads=threads, stream=stream)
