"""Poisoned buffers: every output is filled with a pattern before a call, so a test can tell
which bytes the call wrote and that nothing past the end was touched."""
from __future__ import annotations

import numpy as np

POISONS = (0xA5, 0x5A)  # two different fills: a byte equal to the expected value under both was written


def poisoned(n: int, fill: int = POISONS[0]) -> np.ndarray:
    return np.full(n, fill, dtype=np.uint8)


def random_bytes(seed: int, n: int) -> np.ndarray:
    """n random bytes from a seed (hypothesis draws the seed, so a failure replays)."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def first_diff(a: np.ndarray, b: np.ndarray) -> str:
    """Where two byte arrays first differ, for assertion messages."""
    a, b = np.asarray(a).view(np.uint8).ravel(), np.asarray(b).view(np.uint8).ravel()
    if a.shape != b.shape:
        return f"lengths {a.size} != {b.size}"
    idx = np.flatnonzero(a != b)
    if idx.size == 0:
        return "equal"
    i = int(idx[0])
    return f"{idx.size} bytes differ, first at {i}: {a[i]:#04x} != {b[i]:#04x}"
