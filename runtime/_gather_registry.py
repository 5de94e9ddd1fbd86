"""The live FeatureStores by id, and the FeatureStore class, for hauler._torch_ops: hauler.gather
imports that module, so importing hauler.gather from it would make an import cycle. hauler.gather
fills this in as it loads and as stores open."""
import itertools
import weakref
from typing import Any

# by id, a string: torch.compile makes an int attribute that differs between stores a symbolic value
STORES: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
IDS = itertools.count(1)
store_class: Any = None   # hauler.gather.FeatureStore
