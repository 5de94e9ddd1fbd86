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
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch.library import custom_op

import numpy as np

from . import _gather_registry
from .errors import Closed, InvalidArgument

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
