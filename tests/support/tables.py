"""Table files for the NVMe (backend="file") gather and scatter tests."""
import os
import uuid

import numpy as np

BLOCK = 4096


def write_table(tdir, arr, raw, header_pad=0):
    """The table as a .npy file, or as raw bytes after `header_pad` bytes of junk."""
    if raw:
        path = os.path.join(tdir, f"t-{uuid.uuid4().hex}.bin")
        with open(path, "wb") as f:
            f.write(b"\x77" * header_pad)
            f.write(np.ascontiguousarray(arr).tobytes())
    else:
        path = os.path.join(tdir, f"t-{uuid.uuid4().hex}.npy")
        np.save(path, arr)
    return path


def expected_blocks(offset, row_bytes, idx):
    """The 4 KiB blocks holding rows `idx` of a table at byte `offset`."""
    blocks = set()
    for r in set(int(i) for i in np.asarray(idx).ravel()):
        s = offset + r * row_bytes
        blocks.update(range(s // BLOCK, (s + row_bytes - 1) // BLOCK + 1))
    return blocks


def make_index(rng, rows, n, kind, width):
    """n indices below `rows`: "random", "sorted", "dups" (half the positions name one row) or
    "2d" (shape (n // 4, 4))."""
    if kind == "2d":
        return rng.integers(0, rows, (n // 4, 4)).astype(width)
    idx = rng.integers(0, rows, n).astype(width)
    if kind == "sorted":
        idx.sort()
    elif kind == "dups" and n:
        idx[: n // 2] = idx[-1]
    return idx
