"""PyTorch Geometric's ``FeatureStore`` interface over a :class:`hauler.gather.FeatureStore`.

    from hauler.pyg import HaulerFeatureStore
    store = HaulerFeatureStore()
    store.put_tensor(x, group_name="paper", attr_name="x", index=None)   # kept by reference
    rows = store.get_tensor(group_name="paper", attr_name="x", index=n_id)  # hauler's gather

Tensors are keyed by ``(group_name, attr_name)``; ``index`` selects rows (row ids of the table).
``put_tensor`` with ``index=None`` adds the whole table; with an index it writes those rows of
an existing table (a scatter; the last of duplicate ids wins). ``get_tensor`` with ``index=None``
or ``slice(None)`` returns the whole table without copying; a slice returns a view; an int,
tensor, array or list gathers (out-of-range ids raise :class:`hauler.OutOfRange` naming the
position and value). A missing tensor raises ``KeyError`` in ``get_tensor``; ``get_tensor_size``
returns ``None`` for it. Requires ``torch_geometric`` (``pip install torch_geometric``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .gather import FeatureStore

try:
    from torch_geometric.data import FeatureStore as _PyGFeatureStore
    from torch_geometric.data import TensorAttr
except ImportError as _e:  # pragma: no cover - exercised only without torch_geometric
    raise ImportError("hauler.pyg needs torch_geometric: pip install torch_geometric") from _e

__all__ = ["HaulerFeatureStore", "TensorAttr"]

Key = Tuple[Any, Any]


class HaulerFeatureStore(_PyGFeatureStore):
    """A ``torch_geometric.data.FeatureStore`` whose tables live in a hauler FeatureStore
    (``store``: share one with other code, e.g. after ``store.share()`` for spawned workers)."""

    def __init__(self, store: Optional[FeatureStore] = None, *, shared: bool = False):
        super().__init__()
        self.__dict__["_store"] = store if store is not None else FeatureStore()
        self.__dict__["_names"] = {}  # (group_name, attr_name) -> table name
        self.__dict__["_shared"] = shared

    @property
    def store(self) -> FeatureStore:
        return self._store

    @staticmethod
    def _key(attr: TensorAttr) -> Key:
        return (attr.group_name, attr.attr_name)

    def _name(self, key: Key) -> str:
        return self._names.get(key) or f"pyg:{key[0]!r}:{key[1]!r}"

    # the five abstract methods + the multi-get
    def _put_tensor(self, tensor: Any, attr: TensorAttr) -> bool:
        key = self._key(attr)
        name = self._name(key)
        index = attr.index
        whole = index is None or (isinstance(index, slice) and index == slice(None))
        if whole:
            self._store.add(name, tensor, shared=self._shared)
            self._names[key] = name
            return True
        if key not in self._names:
            return False  # rows of a tensor that does not exist: nothing to update
        if isinstance(index, slice):
            index = np.arange(self._store.shape(name)[0])[index]
        self._store.scatter(name, index, tensor)
        return True

    def _get_tensor(self, attr: TensorAttr) -> Any:
        key = self._key(attr)
        if key not in self._names:
            raise KeyError(f"no tensor for group_name={key[0]!r}, attr_name={key[1]!r} in this feature store")
        name = self._names[key]
        index = attr.index
        if index is None or (isinstance(index, slice) and index == slice(None)):
            return self._store.table(name)
        if isinstance(index, slice):
            return self._store.table(name)[index]
        if isinstance(index, (int, np.integer)):
            return self._store.gather(name, np.asarray([int(index)], dtype=np.int64))[0]
        return self._store.gather(name, index)

    def _multi_get_tensor(self, attrs: List[TensorAttr]) -> List[Any]:
        return [self._get_tensor(a) for a in attrs]

    def _remove_tensor(self, attr: TensorAttr) -> bool:
        key = self._key(attr)
        name = self._names.pop(key, None)
        return name is not None and self._store.remove(name)

    def _get_tensor_size(self, attr: TensorAttr) -> Optional[Tuple[int, ...]]:
        key = self._key(attr)
        if key not in self._names:
            return None
        shape = self._store.shape(self._names[key])
        index = attr.index
        if index is None or (isinstance(index, slice) and index == slice(None)):
            return tuple(shape)
        if isinstance(index, slice):
            return (len(range(*index.indices(shape[0]))),) + tuple(shape[1:])
        if isinstance(index, (int, np.integer)):
            return tuple(shape[1:])
        return (len(index),) + tuple(shape[1:])

    def get_all_tensor_attrs(self) -> List[TensorAttr]:
        return [self._tensor_attr_cls.cast(g, a) for (g, a) in self._names]

    # pickling (DataLoader workers): the hauler store pickles its tables by path when shared
    def __getstate__(self) -> Dict[str, Any]:
        return {"store": self._store, "names": dict(self._names), "shared": self._shared,
                "cls": self._tensor_attr_cls}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__["_tensor_attr_cls"] = state["cls"]
        self.__dict__["_store"] = state["store"]
        self.__dict__["_names"] = state["names"]
        self.__dict__["_shared"] = state["shared"]
