"""TensorStore entry files moved by the thread that asks, on a polled io_uring (the core's
``IOPoller``, csrc/io/poller.hpp): no worker thread wakes for a put or a get.

An entry file written this way (header version 3) is padded to whole 4 KiB blocks: block 0 is
the header, the data starts at ``data_off`` (4096 + the data's address modulo 4096, so that its
aligned middle goes to and from the caller's memory with O_DIRECT) and the bytes around the data
in its first and last blocks are zeros. The data's two edge blocks go through small aligned
buffers of this module's (the first one shares its buffer with the header), so a request is one
submission of at most three pieces and never a read-modify-write.
"""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

import numpy as np

BLOCK = 4096


def padded(n: int) -> int:
    """n rounded up to whole blocks."""
    return -(-n // BLOCK) * BLOCK


def aligned_zeros(n: int) -> np.ndarray:
    raw = np.zeros(n + BLOCK, dtype=np.uint8)
    start = (-raw.ctypes.data) % BLOCK
    return raw[start:start + n]


def phase_matches(flat: np.ndarray, data_off: int) -> bool:
    """True when flat's address and data_off agree modulo the block size (its middle is aligned)."""
    return (flat.ctypes.data - data_off) % BLOCK == 0


def _layout(flat: np.ndarray, data_off: int) -> Tuple[int, int, int]:
    """(head, middle, tail): bytes of the data in its first block, in whole blocks, in its last."""
    n = flat.nbytes
    head = min(n, (-data_off) % BLOCK)
    middle = (n - head) // BLOCK * BLOCK
    return head, middle, n - head - middle


class EntryIO:
    """Submits entry reads and writes on one polled ring; the caller polls or waits by id."""

    def __init__(self, depth: int):
        from . import _require_core
        self.poller = _require_core().IOPoller(int(depth))

    @staticmethod
    def _pieces(write: bool, fd: int, flat: np.ndarray, data_off: int):
        """The request's pieces over the entry's layout: (pieces, first, last, head, middle, tail);
        first (header block + the data's first block) and last (its last block) are zeroed."""
        head, middle, tail = _layout(flat, data_off)
        first = aligned_zeros(2 * BLOCK if data_off % BLOCK else BLOCK)
        pieces: List[Tuple[bool, int, Any, int, int, int]] = [(write, fd, first, 0, first.nbytes, 0)]
        if middle:
            pieces.append((write, fd, flat, head, middle, data_off + head))
        last = aligned_zeros(BLOCK) if tail else None
        if tail:
            pieces.append((write, fd, last, 0, BLOCK, data_off + head + middle))
        return pieces, first, last, head, middle, tail

    def write(self, fd: int, header: np.ndarray, flat: np.ndarray, data_off: int, what: str) -> Tuple[int, Any]:
        """Starts writing header + data; returns (request id, the buffers to keep until it is over)."""
        pieces, first, last, head, middle, tail = self._pieces(True, fd, flat, data_off)
        first[:BLOCK] = header
        first[data_off:data_off + head] = flat[:head]   # data_off < 2 blocks: the head ends block 1
        if tail:
            last[:tail] = flat[head + middle:]
        return self.poller.submit(pieces, what), (first, last, flat)

    def read(self, fd: int, flat: np.ndarray, data_off: int, what: str) -> Tuple[int, Callable[[], bytes]]:
        """Starts reading an entry into flat (phase-matched); returns (request id, finish), where
        finish() - once the request is over - copies the edge bytes into flat and gives the header."""
        pieces, first, last, head, middle, tail = self._pieces(False, fd, flat, data_off)

        def finish() -> bytes:
            if head:
                flat[:head] = first[data_off:data_off + head]
            if tail:
                flat[head + middle:] = last[:tail]
            return first[:BLOCK].tobytes()
        return self.poller.submit(pieces, what), finish
