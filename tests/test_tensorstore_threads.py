"""TensorStore used from several threads at once, on the worker and the inline path.

Six threads put, get, discard and discard_later a handful of shared keys with values of three
sizes under a capacity. Every value a get returns must be one some put stored under that key,
whole (each value names its key and holds one version number throughout); nothing but
CapacityExceeded may fail; afterwards the store's accounting must match the files on disk.
Before the inline path took each key's lock for its request, about half the inline runs here
read an entry while another thread replaced or recycled its file (CorruptEntry, ENOENT)."""
from __future__ import annotations

import os
import random
import threading
import zlib

import numpy as np
import pytest

from hauler.io import TensorStore
from hauler.tensorstore import CapacityExceeded

KEYS = [f"k{i}" for i in range(6)]
SIZES = (1000, 50_000, 300_000)   # int64 elements: 8 KB, 400 KB, 2.4 MB


def _tag(key: str) -> int:
    return zlib.crc32(key.encode()) % 1000


def _value(key: str, version: int, n: int) -> np.ndarray:
    a = np.full(n, version, np.int64)
    a[0] = _tag(key)
    return a


@pytest.mark.parametrize("inline", [False, True], ids=["workers", "inline"])
@pytest.mark.parametrize("keep_files", [0, 8 << 20], ids=["unlink", "spares"])
def test_threads_share_keys(tmp_path, inline, keep_files):
    kw = dict(inline=True, sync=False, checksum=False) if inline else {}
    store = TensorStore(tmp_path / "ts", capacity=24 << 20, keep_files=keep_files, **kw)
    errors, gets = [], [0]

    def worker(tid: int) -> None:
        rnd = random.Random(tid)
        for it in range(400):
            key, op = rnd.choice(KEYS), rnd.random()
            try:
                if op < 0.45:
                    store.put(key, _value(key, tid * 100_000 + it, rnd.choice(SIZES))).result()
                elif op < 0.9:
                    try:
                        a = store.get(key).result()
                    except KeyError:
                        continue
                    gets[0] += 1
                    if a[0] != _tag(key) or a.size not in SIZES or not (a[1:] == a[1]).all():
                        errors.append(f"{key}: a torn or foreign value {a[:3]}... of {a.size}")
                elif op < 0.95:
                    store.discard(key)
                else:
                    store.discard_later(key).result()
            except CapacityExceeded:
                pass
            except Exception as e:  # noqa: BLE001 - collected, reported below
                errors.append(f"{key}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert gets[0] > 100
    files = {f: os.path.getsize(tmp_path / "ts" / f) for f in os.listdir(tmp_path / "ts") if f.endswith(".hts")
             and ".tmp." not in f}
    assert len(files) == len(store) and store.used_bytes == sum(files.values()), (files, store.used_bytes)
    for key in store.keys():   # every entry left reads back whole
        a = store.get(key).result()
        assert a[0] == _tag(key) and (a[1:] == a[1]).all()
    store.close()
