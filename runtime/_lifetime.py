"""``needs_open``: the methods of a closeable object (TensorStore, FeatureStore) raise Closed after
close(), naming the object and the call, instead of failing somewhere inside."""
import functools
from typing import Any, Callable

from .errors import Closed


def needs_open(method: Callable) -> Callable:
    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise Closed(f"{self._closed_name()} is closed: {method.__name__}() needs an open store")
        return method(self, *args, **kwargs)
    return run
