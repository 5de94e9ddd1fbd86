"""The cross-memory attach core (csrc/kv/cma.cpp) on raw segment lists against a real second
process: every byte compared with numpy, partial transfers, errors mapped."""
import errno
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hauler import _core
from hauler.errors import InvalidArgument, OutOfRange

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 1 << 20


class RawPeer:
    def __init__(self, nbytes=SIZE, seed=7):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "kv", "raw_peer.py"), str(nbytes),
                                      str(seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid, self.addr = map(int, self.proc.stdout.readline().split())
        self.data = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)
        self.pidfd = os.pidfd_open(self.pid)

    def dump(self, path):
        self.proc.stdin.write(f"dump {path}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"
        return np.fromfile(path, dtype=np.uint8)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("exit\n")
            self.proc.stdin.flush()
        self.proc.wait(timeout=30)
        os.close(self.pidfd)


@pytest.fixture(scope="module")
def peer():
    p = RawPeer()
    yield p
    p.close()


def addr(a):
    return a.__array_interface__["data"][0]


def random_segments(rng, n, max_len, remote_base, local_base, size):
    """n non-overlapping (on the local side) segments; remote offsets random (repeats allowed)."""
    lens = rng.integers(1, max_len + 1, n)
    lens = lens[np.cumsum(lens) <= size]
    local_off = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(lens) else np.zeros(0, np.int64)
    gaps = rng.integers(0, 3, len(lens)) * 8  # some runs contiguous locally, some not
    local_off = local_off + np.cumsum(gaps)
    keep = local_off + lens <= size
    lens, local_off = lens[keep], local_off[keep]
    remote_off = np.array([rng.integers(0, size - ln + 1) for ln in lens], dtype=np.int64)
    return lens, local_off, remote_off


def move(peer, segs, write, max_call=64 << 20, progress=None):
    segs = np.ascontiguousarray(segs, dtype=np.int64)
    return _core.kv_cma_move(peer.pid, peer.pidfd, write, addr(segs), len(segs), max_call, progress)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 3000), max_len=st.sampled_from([1, 64, 4096, 70000]),
       max_call=st.sampled_from([1, 4096, 1 << 20, 64 << 20]))
def test_read_scattered_segments(peer, seed, n, max_len, max_call):
    rng = np.random.default_rng(seed)
    out = np.full(SIZE + 64, 0xA5, dtype=np.uint8)  # poisoned, with a tail that must stay poisoned
    lens, loff, roff = random_segments(rng, n, max_len, peer.addr, addr(out), SIZE)
    segs = np.stack([peer.addr + roff, addr(out) + loff, lens], axis=1) if len(lens) else np.zeros((0, 3))
    done, segs_done, err, calls = move(peer, segs, False, max_call)
    assert (err, done, segs_done) == (0, int(lens.sum()), len(lens))
    ref = np.full_like(out, 0xA5)
    for ln, lo, ro in zip(lens, loff, roff):
        ref[lo:lo + ln] = peer.data[ro:ro + ln]
    np.testing.assert_array_equal(out, ref)
    if max_call >= 64 << 20 and len(lens):
        assert calls <= -(-len(lens) // 1024)  # IOV_MAX rows per call at most


def test_write_then_dump(peer, tmp_path):
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    # disjoint remote targets: every 4th 4 KiB page of the first 256 KiB
    segs = np.array([[addr(src) + i * 4096, peer.addr + i * 4 * 4096, 4096] for i in range(16)], dtype=np.int64)
    done, segs_done, err, _ = move(peer, segs, True)
    assert (err, done, segs_done) == (0, 16 * 4096, 16)
    got = peer.dump(tmp_path / "buf")
    ref = peer.data.copy()
    for i in range(16):
        ref[i * 4 * 4096:(i * 4 + 1) * 4096] = src[i * 4096:(i + 1) * 4096]
    np.testing.assert_array_equal(got, ref)
    peer.data = ref  # the peer's memory now holds these bytes


def test_efault_reports_completed_segments(peer):
    out = np.zeros(3 * 4096, dtype=np.uint8)
    segs = np.array([[peer.addr, addr(out), 4096], [peer.addr + 8192, addr(out) + 4096, 4096],
                     [4096, addr(out) + 8192, 4096]], dtype=np.int64)  # the third is unmapped in the peer
    done, segs_done, err, _ = move(peer, segs, False)
    assert err == errno.EFAULT
    assert (done, segs_done) == (8192, 2)
    np.testing.assert_array_equal(out[:4096], peer.data[:4096])
    np.testing.assert_array_equal(out[8192:], 0)  # nothing landed for the failed segment


def test_cancel_before_start(peer):
    out = np.zeros(4096, dtype=np.uint8)
    prog = _core.KvXferProgress()
    prog.cancel()
    done, segs_done, err, calls = move(peer, [[peer.addr, addr(out), 4096]], False, progress=prog)
    assert (err, done, calls) == (errno.ECANCELED, 0, 0)
    assert not out.any()


def test_progress_published(peer):
    out = np.zeros(8192, dtype=np.uint8)
    prog = _core.KvXferProgress()
    done, segs_done, err, calls = move(peer, [[peer.addr, addr(out), 4096], [peer.addr, addr(out) + 4096, 4096]],
                                       False, max_call=4096, progress=prog)
    assert (err, calls) == (0, 2)
    assert (prog.bytes_done, prog.segments_done) == (8192, 2)


def test_dead_peer_is_esrch():
    p = RawPeer(4096, 3)
    out = np.zeros(4096, dtype=np.uint8)
    os.kill(p.pid, signal.SIGKILL)
    p.proc.wait(timeout=30)
    done, _, err, calls = move(p, [[p.addr, addr(out), 4096]], False)
    assert (err, done) == (errno.ESRCH, 0)
    assert calls == 0  # the pidfd said so before any system call
    os.close(p.pidfd)
    assert not out.any()


def test_bad_segments_refused(peer):
    with pytest.raises(InvalidArgument, match="negative"):
        move(peer, [[peer.addr, 4096, -1]], False)
    with pytest.raises(InvalidArgument, match="max_call_bytes"):
        move(peer, [[peer.addr, 4096, 1]], False, max_call=0)


def test_stage_roundtrip():
    rng = np.random.default_rng(5)
    mem = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    segs = np.array([[addr(mem) + 100, 0, 50], [addr(mem) + 5000, 0, 3000], [addr(mem), 0, 7]], dtype=np.int64)
    stream = np.concatenate([mem[100:150], mem[5000:8000], mem[:7]])
    buf = np.zeros(2000, dtype=np.uint8)
    _core.kv_segments_stage(addr(segs), 3, 0, 1000, addr(buf), 2000, True)
    np.testing.assert_array_equal(buf, stream[1000:3000])
    dst = np.zeros_like(mem)
    dsegs = segs.copy()
    dsegs[:, 1] = dsegs[:, 0] - addr(mem) + addr(dst)
    for off in range(0, len(stream), 999):
        piece = stream[off:off + 999].copy()
        _core.kv_segments_stage(addr(dsegs), 3, 1, off, addr(piece), len(piece), False)
    ref = np.zeros_like(mem)
    ref[100:150], ref[5000:8000], ref[:7] = mem[100:150], mem[5000:8000], mem[:7]
    np.testing.assert_array_equal(dst, ref)
    with pytest.raises(OutOfRange, match="ends past"):
        _core.kv_segments_stage(addr(segs), 3, 0, 3000, addr(buf), 2000, True)
