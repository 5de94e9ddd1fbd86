"""The on-disk format of a TensorStore entry (one file per entry).

A 4 KiB header (magic, version, JSON: key, kind, dtype, shape, nbytes, offset, checksum algorithm
and value) and the data from the header's ``offset``. Version 1 entries hold zlib's crc32 and are
still read; version 3 entries are padded with zeros to whole 4 KiB blocks (inline puts).
"""
from __future__ import annotations

import json
import os
import zlib  # verifies version-1 entries (crc32)
from typing import Any, Dict

import numpy as np

from ._entry_io import padded
from .errors import HaulerIOError, InvalidArgument, OutOfRange

MAGIC = b"HAULERTS"
VERSION = 2       # 2: "checksum" names the algorithm ("crc32c" or null), "crc" holds it
PADDED = 3        # 3: as 2, the file padded with zeros to whole 4 KiB blocks (inline puts)
VERSIONS = (1, 2, 3)  # 1: "crc32" holds zlib's crc32 (or null); still read
HEADER = 4096
SUFFIX = ".hts"
SPARE = ".spare"  # files of deleted entries kept for reuse (keep_files); never entries


class CorruptEntry(HaulerIOError):
    """A stored entry whose header, size or checksum does not match its data."""


def aligned_empty(nbytes: int, phase: int = 0, align: int = 4096) -> np.ndarray:
    """nbytes of memory whose address is phase modulo align."""
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = (phase - raw.ctypes.data) % align
    return raw[start:start + nbytes]


PHASE_MIN = 1 << 20


def data_offset(flat: np.ndarray) -> int:
    """Where an entry's data starts in its file: right after the header; for data of PHASE_MIN
    bytes or more, at the same offset modulo 4096 as the data's address, so that O_DIRECT writes
    it from the caller's memory (only the two edge blocks bounce) instead of copying all of it
    through bounce buffers (torch and numpy rarely hand out 4 KiB-aligned memory)."""
    return HEADER + (flat.ctypes.data % HEADER if flat.nbytes >= PHASE_MIN else 0)


def checksum(algorithm: str, flat: np.ndarray) -> int:
    if algorithm == "crc32c":
        from . import _core
        return int(_core.crc32c(flat))
    return zlib.crc32(memoryview(flat)) & 0xFFFFFFFF  # "crc32": entries of version 1


def header(meta: Dict[str, Any], version: int = VERSION) -> np.ndarray:
    body = json.dumps(meta, sort_keys=True).encode()
    if len(body) + 16 > HEADER:
        raise InvalidArgument(f"entry metadata too long ({len(body)} bytes); use a shorter key or fewer dims")
    h = aligned_empty(HEADER)   # aligned: written without a bounce
    h[:] = 0
    raw = MAGIC + version.to_bytes(4, "little") + len(body).to_bytes(4, "little") + body
    h[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return h


def parse_header(h: bytes, path: str) -> Dict[str, Any]:
    if len(h) < 16 or h[:8] != MAGIC:
        raise CorruptEntry(f"{path}: not a hauler TensorStore entry (bad magic)")
    ver = int.from_bytes(h[8:12], "little")
    n = int.from_bytes(h[12:16], "little")
    if ver not in VERSIONS or n > HEADER - 16:
        raise CorruptEntry(f"{path}: bad header (version {ver}, length {n})")
    try:
        meta = json.loads(bytes(h[16:16 + n]).decode())
        for k in ("key", "kind", "dtype", "shape", "nbytes") + (("checksum", "crc") if ver >= 2 else ("crc32",)):
            meta[k]
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise CorruptEntry(f"{path}: header does not parse ({e})") from None
    meta["version"] = ver
    if ver == 1:
        meta["checksum"] = None if meta["crc32"] is None else "crc32"
        meta["crc"] = meta["crc32"]
    elif meta["checksum"] not in (None, "crc32c"):
        raise CorruptEntry(f"{path}: unknown checksum algorithm {meta['checksum']!r} in the header")
    check_fields(meta, path)
    return meta


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_fields(meta: Dict[str, Any], path: str) -> None:
    """The header's fields have the types and ranges a put writes (a crafted header raises
    CorruptEntry here, not a TypeError or ValueError later)."""
    bad = None
    if not isinstance(meta["key"], str):
        bad = f"key {meta['key']!r} is not a string"
    elif meta["kind"] not in ("torch", "numpy"):
        bad = f"kind {meta['kind']!r} is neither 'torch' nor 'numpy'"
    elif not isinstance(meta["dtype"], str):
        bad = f"dtype {meta['dtype']!r} is not a string"
    elif not isinstance(meta["shape"], list) or not all(_is_int(d) and d >= 0 for d in meta["shape"]):
        bad = f"shape {meta['shape']!r} is not a list of non-negative integers"
    elif not _is_int(meta["nbytes"]) or meta["nbytes"] < 0:
        bad = f"nbytes {meta['nbytes']!r} is not a non-negative integer"
    elif "offset" in meta and not (_is_int(meta["offset"]) and HEADER <= meta["offset"] < 2 * HEADER):
        bad = f"data offset {meta['offset']!r} is not an integer in [{HEADER}, {2 * HEADER})"
    elif meta["crc"] is not None and not (_is_int(meta["crc"]) and 0 <= meta["crc"] <= 0xFFFFFFFF):
        bad = f"checksum value {meta['crc']!r} is not a 32-bit integer"
    if bad is not None:
        raise CorruptEntry(f"{path}: bad header: {bad}")


def check_shape(path: str, shape: Any, itemsize: int, nbytes: int, dtype: Any) -> None:
    """shape x itemsize makes nbytes exactly (Python integers: a product cannot wrap)."""
    n = 1
    for d in shape:
        n *= d
    if n * itemsize != nbytes:
        raise CorruptEntry(f"{path}: shape {list(shape)} x {dtype} does not make {nbytes} bytes")


def keyed(err: BaseException, key: str) -> BaseException:
    """An I/O error (EIO, a file shrunk underneath) that also names the entry's key."""
    if isinstance(err, (HaulerIOError, OutOfRange)):
        return type(err)(f"TensorStore entry {key!r}: {err}")
    return err


def read_entry(f: Any, buf: Any, offset: int, key: str) -> None:
    """f.read_into whose error also names the key."""
    try:
        f.read_into(buf, offset=offset)
    except (HaulerIOError, OutOfRange) as err:
        raise keyed(err, key) from err


def entry_file_size(meta: Dict[str, Any]) -> int:
    """The size of the file holding the entry whose header is meta."""
    n = int(meta.get("offset", HEADER)) + int(meta["nbytes"])
    return padded(n) if meta["version"] == PADDED else n


def check_size(path: str, key: str, size: int, want: int) -> None:
    if size != want:
        raise CorruptEntry(f"{path}: {size} bytes on disk, the header says {want} "
                           f"(key {key!r}; truncated or appended to)")


def unlink_quietly(path: str) -> None:
    """Removes path if it is there (a temporary or spare file that may be gone already)."""
    try:
        os.unlink(path)
    except OSError:
        pass
