"""FeatureStore gather/scatter as ``torch.library`` custom ops (``torch.ops.hauler.*``).

hauler.gather loads this module only when torch is already in play (a torch index or table), so
``import hauler`` never imports torch. The ops give torch.compile something to trace
(``fullgraph=True`` works: fake implementations say the output's shape and dtype) and give
autograd a gather it can differentiate: the gradient of a gather from a table that requires grad
is the deterministic scatter-add of the output's gradient into the table's rows (as
``torch.index_select`` and ``nn.Embedding``), dense, or sparse COO with ``sparse=True`` (as
``nn.Embedding(sparse=True)``).

Eager calls without gradients keep the plain path (no dispatcher cost); the ops run when
torch.compile traces a call or a gradient is needed.

hauler.kv's block moves over torch caches (gather_blocks, scatter_blocks, copy_blocks) are the ops
kv_gather, kv_scatter_ and kv_copy_ while traced; they carry no gradient (see the KV section).
"""
from __future__ import annotations

import operator
from typing import Any, List, Optional, Tuple

import torch
from torch.library import custom_op
from torch.multiprocessing.reductions import StorageWeakRef

import numpy as np

from . import _gather_registry
from .errors import BufferTooSmall, Closed, InvalidArgument

_ADD_DTYPES = (torch.float32, torch.float64, torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)

def _store(store: str) -> Any:
    fs = _gather_registry.STORES.get(store)
    if fs is None:
        raise InvalidArgument(f"FeatureStore #{store} no longer exists (a compiled function outlived its store?)")
    if fs._closed:
        raise Closed("this FeatureStore is closed: a compiled function's gather needs an open store")
    return fs


def _plain_store(table: torch.Tensor) -> Any:
    """A FeatureStore over `table` itself: functionalization may hand the ops a copy of the
    store's tensor, so they read and write the tensor they are given."""
    fs = _gather_registry.store_class()
    fs.add("t", table)
    return fs


def _check_index(index: torch.Tensor) -> None:
    if index.dtype not in (torch.int32, torch.int64):
        raise InvalidArgument(f"index must be an int32 or int64 tensor, got {index.dtype}")


# -- gather ---------------------------------------------------------------------------------------

@custom_op("hauler::gather", mutates_args=())
def gather_op(table: Optional[torch.Tensor], index: torch.Tensor, store: str, name: str,
              sparse: bool) -> torch.Tensor:
    """Rows `index` of table `name` of FeatureStore `store` (its id as a string: torch.compile
    would make an int that differs between stores a symbolic one); `table` is that table's tensor
    (None when the table is not a tensor: numpy, mmap or file tables)."""
    if table is not None:
        return _plain_store(table)._gather("t", index)
    return _store(store)._gather(name, index)


@gather_op.register_fake
def _gather_fake(table, index, store, name, sparse):
    _check_index(index)
    if table is not None:
        row, dtype = tuple(table.shape[1:]), table.dtype
    else:
        row, dtype = row_meta(_store(store)._get(name))
    return index.new_empty(tuple(index.shape) + row, dtype=dtype, device="cpu")


def _gather_setup(ctx, inputs, output):
    table, index, _, _, sparse = inputs
    ctx.save_for_backward(index)
    ctx.table_shape = None if table is None else tuple(table.shape)
    ctx.sparse = sparse


def _gather_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    if ctx.table_shape is None or not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    row = ctx.table_shape[1:]
    g = grad.reshape((-1,) + row)
    i = index.reshape(-1).to(torch.int64)
    if ctx.sparse:
        # the rows were checked by the gather, so torch need not check the indices again
        gt = torch.sparse_coo_tensor(i.unsqueeze(0), g, ctx.table_shape, check_invariants=False)
    else:
        gt = add_rows_op(g, i, ctx.table_shape[0])
    return gt, None, None, None, None


gather_op.register_autograd(_gather_backward, setup_context=_gather_setup)


@custom_op("hauler::add_rows", mutates_args=())
def add_rows_op(src: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
    """zeros(rows, *row) with src[p] added to row index[p], in index order (deterministic: equal
    to numpy.add.at); dtypes hauler's scatter cannot add (float16, bfloat16) use index_add_,
    which adds in index order on the CPU too."""
    out = src.new_zeros((rows,) + tuple(src.shape[1:]))
    if src.dtype in _ADD_DTYPES:
        _plain_store(out)._scatter("t", index, src, reduce="add")
    else:
        out.index_add_(0, index, src)
    return out


@add_rows_op.register_fake
def _add_rows_fake(src, index, rows):
    return src.new_empty((rows,) + tuple(src.shape[1:]))


# -- scatter --------------------------------------------------------------------------------------

@custom_op("hauler::scatter_", mutates_args=("table",))
def scatter_op(table: torch.Tensor, index: torch.Tensor, src: torch.Tensor, reduce: str) -> None:
    """table[index] = src (or += with reduce="add") in place, as FeatureStore.scatter."""
    _plain_store(table)._scatter("t", index, src, reduce=reduce)


@scatter_op.register_fake
def _scatter_fake(table, index, src, reduce):
    _check_index(index)
    want = tuple(index.shape) + tuple(table.shape[1:])
    if tuple(src.shape) != want:
        raise InvalidArgument(f"src has shape {tuple(src.shape)}, the scatter needs {want}")
    return None


# -- what FeatureStore calls ----------------------------------------------------------------------

def _grad_table(t: Any) -> Optional[torch.Tensor]:
    """The table's tensor when autograd must see the gather (grad mode on, the tensor requires grad)."""
    keep = t.keep
    if isinstance(keep, torch.Tensor) and keep.requires_grad and torch.is_grad_enabled():
        return keep
    return None


def gather(fs: Any, name: str, index: Any, out: Any, device: Any, sparse: bool) -> Optional[torch.Tensor]:
    """The gather through the op when it is traced or differentiated; None: take the plain path."""
    t = fs._get(name)
    grad_table = _grad_table(t)
    if not torch.compiler.is_compiling() and grad_table is None:
        return None
    on_device = device is not None and str(device) != "cpu"
    if out is not None or on_device:
        what = "out=" if out is not None else f"device={str(device)!r}"
        why = (f"table {name!r} requires grad and {what} would lose its gradient" if grad_table is not None
               else f"torch.compile traces gather without {what}")
        raise InvalidArgument(f"{why}; call gather(name, index) and copy the result (.to(device), out.copy_())")
    if not isinstance(index, torch.Tensor):
        index = torch.as_tensor(index)
    table = t.keep if isinstance(t.keep, torch.Tensor) else None
    return gather_op(table, index, fs._id, name, sparse)


def scatter(fs: Any, name: str, index: Any, src: Any, reduce: str) -> bool:
    """The scatter through the op when traced (True: done); False: take the plain path. Refuses a
    scatter that autograd would have to record: it writes the table in place."""
    t = fs._get(name)
    keep = t.keep if isinstance(t.keep, torch.Tensor) else None
    if torch.is_grad_enabled():
        if keep is not None and keep.requires_grad:
            raise InvalidArgument(f"table {name!r} requires grad: scatter writes it in place, which autograd "
                                  "cannot record; update it under torch.no_grad() (as an optimizer step does)")
        if isinstance(src, torch.Tensor) and src.requires_grad:
            raise InvalidArgument(f"src requires grad: scatter writes table {name!r} in place and its gradient "
                                  "would be lost; pass src.detach() or gather from a table that requires grad")
    if not torch.compiler.is_compiling():
        return False
    if keep is None:
        raise InvalidArgument(f"torch.compile traces scatter into tables added as torch tensors; table {name!r} "
                              f"is a {t.kind} table")
    if not isinstance(index, torch.Tensor):
        index = torch.as_tensor(index)
    scatter_op(keep, index, src, reduce)
    return True


def row_meta(t: Any) -> Tuple[Tuple[int, ...], torch.dtype]:
    """(row shape, torch dtype) of a table, for the fake gather."""
    dtype = t.torch_dtype if t.torch_dtype is not None else torch.from_numpy(np.empty(0, t.arr.dtype)).dtype
    return t.row_shape, dtype


# -- KV block moves (hauler.kv) -------------------------------------------------------------------
# A KVLayout holds raw addresses, but a traced op receives tensors that may live elsewhere (fake
# while tracing, functionalized copies when run). So the ops take the cache tensors themselves, a
# spec "kind:dtype" and dims [layers, planes, block_size, heads, head_size] (ints apart: torch.compile
# makes ints that change between compiles symbolic, which cannot be formatted into a string), and
# rebuild the layout from the tensors they get with the named constructor that made it.
# KV moves carry no gradient: caches are not trained; a move autograd would have to record is refused.

# layout kinds a spec can rebuild: the named constructors that take the caches and nothing else
# (sglang's page_size and lmcache_chunk's block_size/num_heads are the layout's own dimensions)
_KV_KINDS = ("vllm_flash_nhd", "vllm_flash_hnd", "mla", "cross_layer_nhd", "cross_layer_hnd", "vllm_legacy",
             "sglang", "lmcache_chunk")
_KV_CACHE: "dict[tuple, Any]" = {}   # (spec, dims, tensors' ptr/shape/strides/dtype/device) -> owner-free layout
_KV_CACHE_MAX = 64


def _kv_spec(layout: Any, what: str) -> Tuple[str, List[int]]:
    """The ops' (spec, dims) of `layout` (traced: plain attribute reads and string formatting)."""
    kind = getattr(layout, "kind", None)
    if kind not in _KV_KINDS or layout.remote:
        where = (f"a {type(layout).__name__}, not a KVLayout" if kind is None else
                 "another process's memory (from_bytes)" if kind in _KV_KINDS else f"a {kind!r} layout")
        raise InvalidArgument(f"torch.compile traces KV moves over layouts a named constructor built from torch "
                              f"tensors ({', '.join(_KV_KINDS)}); {what} is {where}")
    for o in layout._owners:
        if not isinstance(o, torch.Tensor):
            raise InvalidArgument(f"torch.compile traces KV moves over torch caches; {what} holds a "
                                  f"{type(o).__name__}")
    return (f"{layout.kind}:{layout.dtype}",
            [layout.num_layers, layout.num_planes, layout.block_size, layout.num_heads, layout.head_size])


def _kv_layout(spec: str, dims: List[int], caches: Any) -> Any:
    """The layout `spec` describes, over the tensors the op was given (cached by their addresses and
    geometry: a layout of other tensors at the same addresses with the same geometry is the same)."""
    key = (spec, tuple(dims)) + tuple((t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device)
                                      for t in caches)
    hit = _KV_CACHE.get(key)
    if hit is not None:
        return hit
    from .kv.layout import KVLayout
    kind, dtype = spec.split(":")
    nl, npl, bs, nh, hs = dims
    ts = list(caches)
    if kind in ("cross_layer_nhd", "cross_layer_hnd", "lmcache_chunk") and len(ts) != 1:
        raise InvalidArgument(f"a {kind} layout is one tensor; the op was given {len(ts)}")
    if kind.startswith("vllm_flash_"):
        l = KVLayout.vllm_flash(ts, kind[-3:].upper(), dtype=dtype)
    elif kind == "mla":
        l = KVLayout.mla(ts, dtype=dtype)
    elif kind.startswith("cross_layer_"):
        l = KVLayout.cross_layer(ts[0], kind[-3:].upper(), dtype=dtype)
    elif kind == "vllm_legacy":
        l = KVLayout.vllm_legacy(ts[:nl], ts[nl:], dtype=dtype)
    elif kind == "sglang":
        l = KVLayout.sglang(ts[:nl], ts[nl:], bs, dtype=dtype)
    elif kind == "lmcache_chunk":
        l = KVLayout.lmcache_chunk(ts[0], bs, nh, dtype=dtype)
    else:
        raise InvalidArgument(f"{kind!r} is not a KV layout kind the ops rebuild; use one of {', '.join(_KV_KINDS)}")
    got = (l.num_layers, l.num_planes, l.block_size, l.num_heads, l.head_size)
    if got != (nl, npl, bs, nh, hs):
        raise InvalidArgument(f"the caches the op was given make a {kind} layout of (layers, planes, block_size, "
                              f"heads, head_size) {got}; the traced call's layout was {(nl, npl, bs, nh, hs)}")
    # no owners: the cache must not keep (possibly functionalized copies of) the caches alive
    l = KVLayout(dtype=l.dtype, num_layers=nl, num_planes=npl, num_blocks=l.num_blocks, block_size=bs, num_heads=nh,
                 head_size=hs, bases=l._bases, strides=l._strides, kind=l.kind, device=l.device)
    if len(_KV_CACHE) >= _KV_CACHE_MAX:   # functionalized copies get new addresses every call
        _KV_CACHE.clear()                  # (one step, safe against ops running in other threads)
    _KV_CACHE[key] = l
    return l


def _kv_blocks_shape(dims: List[int], n: Any) -> Tuple[Any, ...]:
    """gather's output: [layers, planes, n, block_size, heads, head_size] (contiguous_layout_like's form)."""
    nl, npl, bs, nh, hs = dims
    return (nl, npl, n, bs, nh, hs)


def _kv_check_ids(ids: torch.Tensor, what: str, ndim: int) -> None:
    if ids.dtype not in (torch.int32, torch.int64):
        raise InvalidArgument(f"{what} must hold int32 or int64 block ids, got {ids.dtype}")
    if ids.dim() != ndim or (ndim == 2 and ids.shape[1] != 2):
        raise InvalidArgument(f"{what} must be " + ("1-D" if ndim == 1 else "(n, 2) (source, destination)") +
                              f", got shape {tuple(ids.shape)}")


def _kv_check_apart(caches: Any, reads: Any, what: str, fix: str) -> None:
    """Functionalization hands a mutating op a copy of the caches it writes and its other inputs
    as they are, so an input that is another view of a written cache's memory would not see the
    writes (the plain path refuses the overlap); refuse it while tracing (fake tensors keep storages)."""
    written = {StorageWeakRef(t.untyped_storage()) for t in caches}
    if any(StorageWeakRef(t.untyped_storage()) in written for t in reads):
        raise InvalidArgument(f"{what} the memory of the caches the move writes; {fix}")


def _kv_check_src(dims: List[int], caches: Any, n: Any, src: torch.Tensor) -> None:
    """What scatter_blocks checks of a staging buffer, on shapes alone (the fake has no memory)."""
    if not src.is_contiguous():
        raise InvalidArgument(f"src with shape {tuple(src.shape)} and strides {src.stride()} is not contiguous")
    if src.device != caches[0].device:
        raise InvalidArgument(f"src is on {src.device} but the caches are on {caches[0].device}")
    need = caches[0].element_size()
    for d in _kv_blocks_shape(dims, n):
        need *= d
    if src.numel() * src.element_size() < need:
        raise BufferTooSmall(f"src holds {src.numel() * src.element_size()} bytes; {n} blocks need {need}")


@custom_op("hauler::kv_gather", mutates_args=())
def kv_gather_op(caches: List[torch.Tensor], blocks: torch.Tensor, spec: str, dims: List[int]) -> torch.Tensor:
    """Blocks `blocks` of the KV layout `spec` over `caches`, as [layers, planes, n, block_size, heads,
    head_size] of the caches' dtype (kv.gather_blocks with out=None)."""
    from .kv.moves import gather_blocks
    out = caches[0].new_empty(_kv_blocks_shape(dims, blocks.shape[0]))
    return gather_blocks(_kv_layout(spec, dims, caches), blocks, out)


@kv_gather_op.register_fake
def _kv_gather_fake(caches, blocks, spec, dims):
    _kv_check_ids(blocks, "blocks", 1)
    return caches[0].new_empty(_kv_blocks_shape(dims, blocks.shape[0]))


@custom_op("hauler::kv_scatter_", mutates_args=("caches",))
def kv_scatter_op(caches: List[torch.Tensor], blocks: torch.Tensor, src: torch.Tensor, spec: str,
                  dims: List[int]) -> None:
    """The contiguous `src` into blocks `blocks` of the layout over `caches`, in place (kv.scatter_blocks)."""
    from .kv.moves import scatter_blocks
    scatter_blocks(_kv_layout(spec, dims, caches), blocks, src.contiguous())


@kv_scatter_op.register_fake
def _kv_scatter_fake(caches, blocks, src, spec, dims):
    _kv_check_ids(blocks, "blocks", 1)
    _kv_check_src(dims, caches, blocks.shape[0], src)
    _kv_check_apart(caches, [src], "src is a view of", "stage the blocks in a buffer of its own")


@custom_op("hauler::kv_copy_", mutates_args=("dst_caches",))
def kv_copy_op(dst_caches: List[torch.Tensor], src_caches: List[torch.Tensor], mapping: torch.Tensor,
               dst_spec: str, dst_dims: List[int], src_spec: str, src_dims: List[int]) -> None:
    """Block mapping[i, 0] of the source layout to block mapping[i, 1] of the destination, in place
    (kv.copy_blocks); src_caches empty: the source layout is over the destination caches."""
    from .kv.moves import copy_blocks
    copy_blocks(_kv_layout(src_spec, src_dims, src_caches or dst_caches), _kv_layout(dst_spec, dst_dims, dst_caches),
                mapping)


@kv_copy_op.register_fake
def _kv_copy_fake(dst_caches, src_caches, mapping, dst_spec, dst_dims, src_spec, src_dims):
    _kv_check_ids(mapping, "mapping", 2)
    _kv_check_apart(dst_caches, src_caches, "the source caches are views of",
                    "for a copy inside one cache pass layouts over the same tensors (or one layout twice)")
    sbs, dbs = src_dims[2], dst_dims[2]
    if sbs != dbs:
        raise InvalidArgument(f"block sizes differ: src {sbs}, dst {dbs}; copy_blocks maps block to block "
                              "(kv.plan regroups tokens)")


# -- what hauler.kv's moves call ------------------------------------------------------------------

_REQUIRES_GRAD = operator.attrgetter("requires_grad")


def _kv_no_grad(caches: Tuple[Any, ...], *others: Any) -> None:
    """KV moves are not differentiable: refuse one autograd would have to record instead of losing it."""
    if not torch.is_grad_enabled():
        return
    if not torch.compiler.is_compiling():
        try:
            if not any(map(_REQUIRES_GRAD, caches)):   # every cache a tensor: checked in C, not per tensor here
                caches = ()
        except AttributeError:                        # a layout mixing torch tensors and other arrays
            pass
    for t in (*caches, *others):
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise InvalidArgument("a KV block move got a tensor that requires grad; KV moves are not "
                                  "differentiable (caches are not trained): run them under torch.no_grad() or "
                                  "torch.inference_mode(), or pass detached tensors")


def _kv_traced(what: str, options: Tuple[Any, Any, Any]) -> bool:
    """Whether torch.compile is tracing the call (then the op takes it), refusing the options
    (plan, threads, stream) it does not take."""
    if not torch.compiler.is_compiling():
        return False
    given = [n for n, v in zip(("plan", "threads", "stream"), options) if v is not None]
    if given:
        raise InvalidArgument(f"torch.compile traces {what} without {'=, '.join(given)}= (the op builds its plan "
                              "and runs on the current stream)")
    return True


def _kv_owners(layout: Any) -> Tuple[Any, ...]:
    return getattr(layout, "_owners", ())


def _kv_ids(ids: Any) -> torch.Tensor:
    return ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)


def kv_gather(layout: Any, blocks: Any, out: Any, options: Tuple[Any, Any, Any]) -> Any:
    """gather_blocks through the op when torch.compile traces it; None: take the plain path."""
    _kv_no_grad(_kv_owners(layout), out)
    if not _kv_traced("gather_blocks", options):
        return None
    got = kv_gather_op(list(layout._owners), _kv_ids(blocks), *_kv_spec(layout, "layout"))
    if out is None:
        return got
    if not isinstance(out, torch.Tensor):
        raise InvalidArgument(f"torch.compile traces gather_blocks into a torch tensor out= (or out=None, which "
                              f"returns a new one), got {type(out).__name__}")
    if not out.is_contiguous():
        raise InvalidArgument(f"out with shape {tuple(out.shape)} and strides {out.stride()} is not contiguous")
    have, need = out.numel() * out.element_size(), got.numel() * got.element_size()
    if have < need:
        raise BufferTooSmall(f"out holds {have} bytes; {got.shape[2]} blocks of {layout!r} need {need}")
    # the bytes, as the plain path writes them (out may be a uint8 staging buffer)
    out.view(-1).view(torch.uint8)[:need].copy_(got.view(-1).view(torch.uint8))
    return out


def kv_scatter(layout: Any, blocks: Any, src: Any, options: Tuple[Any, Any, Any]) -> bool:
    """scatter_blocks through the op when traced (True: done); False: take the plain path."""
    _kv_no_grad(_kv_owners(layout), src)
    if not _kv_traced("scatter_blocks", options):
        return False
    if not isinstance(src, torch.Tensor):
        raise InvalidArgument(f"torch.compile traces scatter_blocks from a torch tensor src, got {type(src).__name__}")
    kv_scatter_op(list(layout._owners), _kv_ids(blocks), src, *_kv_spec(layout, "layout"))
    return True


def kv_copy(src_layout: Any, dst_layout: Any, mapping: Any, options: Tuple[Any, Any, Any]) -> bool:
    """copy_blocks through the op when traced (True: done); False: take the plain path."""
    _kv_no_grad(_kv_owners(src_layout) + _kv_owners(dst_layout))
    if not _kv_traced("copy_blocks", options):
        return False
    dst_spec, src_spec = _kv_spec(dst_layout, "dst_layout"), _kv_spec(src_layout, "src_layout")
    # layouts over the same tensors: one list, so functionalization copies them once and the copy
    # reads and writes the same tensors (as the plain path does)
    so, do = src_layout._owners, dst_layout._owners
    same = len(so) == len(do) and all(a is b for a, b in zip(so, do))
    src = [] if same else list(so)
    kv_copy_op(list(dst_layout._owners), src, _kv_ids(mapping), *dst_spec, *src_spec)
    return True
