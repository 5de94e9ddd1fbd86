"""Memory of freed torch values that TensorStore gets reuse (``recycle=``)."""
from __future__ import annotations

import threading
import weakref
from typing import Dict, List

import numpy as np

from ._store_format import HEADER


class Recycler:
    """Memory of torch values that get returned, kept once they are freed and handed to later gets
    of the same size (up to max_bytes kept): a fresh buffer is page-faulted and zeroed by the
    kernel as it is read into, on the cores torch computes on. Only torch values: every view of a tensor keeps the
    numpy array it was made from alive, so its finalizer runs when the last view is gone (numpy
    views point past it to the memory's owner)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._free: Dict[int, List[np.ndarray]] = {}
        self._kept = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int, phase: int) -> np.ndarray:
        size = nbytes + HEADER
        raw = None
        if size <= self.max_bytes:
            with self._lock:
                free = self._free.get(size)
                if free:
                    raw = free.pop()
                    self._kept -= size
        if raw is None:
            raw = np.empty(size, dtype=np.uint8)
        start = (phase - raw.ctypes.data) % HEADER
        flat = raw[start:start + nbytes]
        if size <= self.max_bytes:
            weakref.finalize(flat, self._give_back, raw)
        return flat

    def _give_back(self, raw: np.ndarray) -> None:
        with self._lock:
            if self._kept + raw.nbytes <= self.max_bytes:
                self._free.setdefault(raw.nbytes, []).append(raw)
                self._kept += raw.nbytes
