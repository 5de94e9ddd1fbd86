"""hauler.kv.Agent between real processes: random block sets between layouts of different kinds,
block sizes, head slices and orders, pulled and pushed over every same-node transport, each byte
checked against the numpy reference (tests/support/kv_ref.py) on poisoned destinations; leases,
notifications, killed and stopped peers, bad input."""
import base64
import json
import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hauler import kv
from hauler.errors import InvalidArgument, OutOfRange
from hauler.kv import agent as agent_mod
from hauler.kv.agent import Agent
from support.kv_ref import make_cache, poison

HERE = os.path.dirname(os.path.abspath(__file__))
TRANSPORTS = ("cma", "shm")


class PeerProc:
    """tests/kv/peer.py in its own process; request() answers within timeout or fails the test."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "kv", "peer.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def send(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def reply(self, limit=60):
        r, _, _ = select.select([self.proc.stdout], [], [], limit)
        assert r, f"peer process did not answer within {limit} s"
        line = self.proc.stdout.readline()
        assert line, f"peer process exited (rc {self.proc.poll()})"
        return json.loads(line)

    def request(self, limit=60, **cmd):
        self.send(**cmd)
        return self.reply(limit)

    def setup(self, **spec):
        r = self.request(op="setup", **spec)
        assert "error" not in r, r
        return base64.b64decode(r["meta"])

    def dump(self, path):
        assert self.request(op="dump", path=str(path)) == {}
        with np.load(str(path) + ".npz") as f:
            return [f[f"arr_{i}"] for i in range(len(f.files))]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.send(op="exit")
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def peer():
    p = PeerProc()
    yield p
    p.close()


def spec(kind, seed, L=2, NB=12, BS=4, H=2, D=8, dtype="float16"):
    return dict(kind=kind, seed=seed, L=L, NB=NB, BS=BS, H=H, D=D, dtype=dtype)


def ref_cache(s):
    return make_cache(s["kind"], np.random.default_rng(s["seed"]), L=s["L"], NB=s["NB"], BS=s["BS"], H=s["H"],
                      D=s["D"], dtype=s["dtype"])


def expected_after(dst_before, dst_blocks, src, src_blocks, layers=None, heads=None, dst_heads=None,
                   num_tokens=None):
    """The destination planes after the move, from the reference gather/scatter."""
    vals = src.tokens(src_blocks, layers=layers, heads=heads)
    if num_tokens is not None:
        vals = vals[:, :, :num_tokens]
    if heads is not None and dst_heads is None:
        n = heads[1] - heads[0]
        dst_heads = (0, n) if dst_before.layout.num_heads == n else heads
    dst_before.set_tokens(dst_blocks, vals, layers=layers, heads=dst_heads)
    return dst_before.planes


def assert_planes(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        if not np.array_equal(g, w):
            bad = np.argwhere(g != w)
            raise AssertionError(f"plane {i}: {len(bad)} elements differ, first at {bad[0].tolist()}")


PAIRS = [("vllm_flash_nhd", "vllm_flash_nhd"), ("vllm_flash_nhd", "vllm_flash_hnd"),
         ("cross_layer_hnd", "vllm_flash_nhd"), ("explicit", "cross_layer_nhd"), ("vllm_legacy", "sglang"),
         ("mla", "mla"), ("contiguous", "vllm_flash_hnd")]


@st.composite
def transfer_case(draw):
    kinds = draw(st.sampled_from(PAIRS))
    if draw(st.booleans()):
        kinds = kinds[::-1]
    mla = kinds[0] == "mla"
    bs = [draw(st.sampled_from([2, 4, 8])) for _ in range(2)]
    heads = None
    hp, hm = 2, 2
    if not mla and "vllm_legacy" not in kinds and draw(st.booleans()):
        hp, hm = 4, 2  # the peer has twice the heads: one half moves (decode TP twice the prefill's)
        heads = draw(st.sampled_from([(0, 2), (2, 4)]))
    peer_spec = spec(kinds[0], draw(st.integers(0, 2**31)), NB=12, BS=bs[0], H=hp)
    main_spec = spec(kinds[1], draw(st.integers(0, 2**31)), NB=12, BS=bs[1], H=hm)
    return peer_spec, main_spec, heads, draw(st.data())


def _blocks_for(data, src_spec, dst_spec):
    n_src = data.draw(st.integers(1, min(6, dst_spec["NB"] * dst_spec["BS"] // src_spec["BS"])))
    tokens = n_src * src_spec["BS"]
    n_dst = -(-tokens // dst_spec["BS"])
    src = data.draw(st.lists(st.integers(0, src_spec["NB"] - 1), min_size=n_src, max_size=n_src))  # repeats ok
    dst = data.draw(st.permutations(range(dst_spec["NB"])))[:n_dst]
    return src, dst


@pytest.mark.parametrize("transport", TRANSPORTS)
@settings(max_examples=12)
@given(case=transfer_case(), pull=st.booleans())
def test_random_blocks_between_processes(peer, transport, case, pull, tmp_path_factory):
    peer_spec, main_spec, heads, data = case
    meta = peer.setup(**peer_spec, transport=transport, name="prefill")
    mine = ref_cache(main_spec)
    poison(mine) if pull else None
    with Agent("decode", transport=transport) as a:
        mymeta = a.register(mine.layout)
        p = a.connect(meta)
        assert p.transport_name == transport
        r = peer.request(op="connect", meta=base64.b64encode(mymeta).decode())
        assert r == {"transport": transport}, r
        theirs = ref_cache(peer_spec)
        if pull:  # read the peer's blocks into ours (poisoned)
            remote, local = _blocks_for(data, peer_spec, main_spec)
            before = ref_cache(main_spec)
            poison(before)
            t = a.read(p, local, remote, notify=b"got it", heads=heads)
            assert t.wait(30) is t and t.done()
            assert t.bytes_done == t.nbytes
            assert_planes(mine.planes, expected_after(before, local, theirs, remote, heads=heads))
            notes = peer.request(op="notifications", timeout=10)["notes"]
            assert notes == [["decode", base64.b64encode(b"got it").decode()]]
        else:  # push ours into the peer's blocks; the notification comes after the bytes
            local, remote = _blocks_for(data, main_spec, peer_spec)
            t = a.write(p, local, remote, notify=b"pushed",
                        heads=None if heads is None else (0, 2), dst_heads=heads)
            t.wait(30)
            notes = peer.request(op="notifications", timeout=10)["notes"]
            assert [n for n, _ in notes] == ["decode"]
            got = peer.dump(tmp_path_factory.mktemp("dump") / "planes")
            want = expected_after(theirs, remote, ref_cache(main_spec), local,
                                  heads=None if heads is None else (0, 2), dst_heads=heads)
            assert_planes(got, want)
        with pytest.raises(InvalidArgument, match="already waited"):
            t.wait(1)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_layers_subset_and_num_tokens(peer, transport):
    s = spec("vllm_flash_nhd", 11, L=3, BS=4)
    meta = peer.setup(**s, transport=transport)
    m = spec("vllm_flash_hnd", 12, L=3, BS=8)
    mine = ref_cache(m)
    with Agent("a", transport=transport) as a:
        a.register(mine.layout)
        p = a.connect(meta)
        a.read(p, [5, 2], [1, 1, 7], layers=[0, 2], num_tokens=10).wait(30)
        want = expected_after(ref_cache(m), [5, 2], ref_cache(s), [1, 1, 7], layers=[0, 2], num_tokens=10)
        assert_planes(mine.planes, want)


def test_three_processes_pull_from_two(tmp_path):
    """Two prefill processes, one decode (this one) pulling from both at once over CMA."""
    peers = [PeerProc(), PeerProc()]
    try:
        specs = [spec("vllm_flash_nhd", 100 + i, NB=16) for i in range(2)]
        metas = [pp.setup(**s, name=f"prefill{i}") for i, (pp, s) in enumerate(zip(peers, specs))]
        m = spec("vllm_flash_nhd", 7, NB=16)
        mine = ref_cache(m)
        poison(mine)
        with Agent("decode") as a:
            a.register(mine.layout)
            ps = [a.connect(x) for x in metas]
            ts = [a.read(ps[0], [0, 1, 2], [9, 3, 15]), a.read(ps[1], [8, 9], [0, 0])]
            for t in ts:
                t.wait(30)
            want = ref_cache(m)
            poison(want)
            expected_after(want, [0, 1, 2], ref_cache(specs[0]), [9, 3, 15])
            assert_planes(mine.planes, expected_after(want, [8, 9], ref_cache(specs[1]), [0, 0]))
    finally:
        for pp in peers:
            pp.close()


# ---- leases ----

def test_lease_read_releases_on_notification(peer):
    s = spec("vllm_flash_nhd", 21)
    meta = peer.setup(**s)
    mine = ref_cache(s)
    with Agent("reader") as a:
        a.register(mine.layout)
        p = a.connect(meta)
        lid = peer.request(op="lease", blocks=[3, 4], seconds=60)["id"]
        assert peer.request(op="leases")["ids"] == [lid]
        a.read(p, [0, 1], [3, 4], lease=lid, notify=b"done").wait(30)
        assert peer.request(op="notifications", timeout=10)["notes"][0][0] == "reader"
        assert peer.request(op="leases")["ids"] == []  # released by the notification
        with pytest.raises(kv.LeaseExpired, match="does not cover block 3"):  # the lease is gone now
            a.read(p, [0, 1], [3, 4], lease=lid)


def test_expired_lease_refused_before_any_byte(peer):
    s = spec("vllm_flash_nhd", 22)
    meta = peer.setup(**s)
    mine = ref_cache(s)
    poison(mine)
    with Agent("reader") as a:
        a.register(mine.layout)
        p = a.connect(meta)
        lid = peer.request(op="lease", blocks=[5], seconds=0.2)["id"]
        time.sleep(0.5)
        with pytest.raises(kv.LeaseExpired, match=f"lease {lid} .* block 5") as e:
            a.read(p, [2], [5], lease=lid)
        assert list(e.value.missing_blocks) == [5] and not len(e.value.arrived_blocks)
        assert peer.request(op="leases")["ids"] == []
        want = ref_cache(s)
        poison(want)
        assert_planes(mine.planes, want.planes)  # nothing written


def test_lease_revoked_during_copy_is_detected():
    """The seqlock check itself: a generation that moves between snapshot and verify, or a
    deadline that passes, fails verification."""
    from hauler import _core
    n = 8
    table = np.zeros(n * _core.kv_lease_entry_bytes, dtype=np.uint8)
    ta = table.ctypes.data
    blocks = np.array([1, 5], dtype=np.int64)
    gens = np.zeros(2, dtype=np.uint64)
    now = _core.kv_monotonic_ns()
    assert _core.kv_lease_grant(ta, n, blocks.ctypes.data, 2, 77, now + 10**10) == -1
    assert _core.kv_lease_grant(ta, n, blocks[1:].ctypes.data, 1, 78, now + 10**10) == 0  # held by 77
    bad, dl = _core.kv_lease_snapshot(ta, n, blocks.ctypes.data, 2, 77, gens.ctypes.data)
    assert (bad, dl) == (-1, now + 10**10)
    assert _core.kv_lease_verify(ta, n, blocks.ctypes.data, 2, gens.ctypes.data, dl) == -1
    assert _core.kv_lease_verify(ta, n, blocks.ctypes.data, 2, gens.ctypes.data, now) == 2  # deadline passed
    _core.kv_lease_clear(ta, n, blocks[1:].ctypes.data, 1, 77)
    assert _core.kv_lease_verify(ta, n, blocks.ctypes.data, 2, gens.ctypes.data, dl) == 1  # block 5 moved
    assert _core.kv_lease_snapshot(ta, n, blocks.ctypes.data, 2, 77, gens.ctypes.data)[0] == 1
    with pytest.raises(OutOfRange, match="block 9"):
        _core.kv_lease_grant(ta, n, np.array([9]).ctypes.data, 1, 1, now)


def test_lease_conflicts_and_owner_view():
    s = spec("vllm_flash_nhd", 23)
    c = ref_cache(s)
    with Agent("owner") as a:
        a.register(c.layout)
        ls = a.lease([1, 2], 60)
        assert a.leases() == [ls] and ls.live
        with pytest.raises(InvalidArgument, match="block 2 is under another live lease"):
            a.lease([2, 3], 60)
        assert a.release(ls) and not ls.live and a.leases() == []
        assert not a.release(ls)
        a.lease([2, 3], 60)
        with pytest.raises(OutOfRange, match="blocks\\[0\\] = 12"):
            a.lease([12], 1)
        with pytest.raises(InvalidArgument, match="seconds must be positive"):
            a.lease([1], 0)


# ---- faults ----

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_peer_killed_mid_transfer(transport, monkeypatch):
    """SIGKILL of the peer while we pull a large request: the transfer ends with PeerLost (or had
    finished), arrived blocks hold the right bytes, nothing outside the destination changed."""
    pp = PeerProc()
    s = spec("vllm_flash_nhd", 31, L=4, NB=64, BS=16, H=8, D=128)  # 64 KiB per block per layer/plane
    try:
        meta = pp.setup(**s, transport=transport)
        mine = ref_cache(s)
        poison(mine)
        monkeypatch.setattr(agent_mod.CmaTransport, "max_call_bytes", 64 << 10)  # many calls: a window to kill in
        monkeypatch.setattr(agent_mod.ShmTransport, "slot_bytes", 64 << 10)
        with Agent("survivor", transport=transport, timeout=5) as a:
            a.register(mine.layout)
            p = a.connect(meta)
            local = np.arange(0, 48)
            remote = np.random.default_rng(0).permutation(64)[:48]
            t = a.read(p, local, remote)
            while t.bytes_done == 0 and not t.done():
                pass
            os.kill(pp.pid, signal.SIGKILL)
            pp.proc.wait(timeout=30)
            want = ref_cache(s)
            poison(want)
            try:
                t.wait(6)
                arrived = local
            except kv.PeerLost as e:
                assert "exited" in str(e) or "lost" in str(e)
                arrived = e.arrived_blocks
                assert len(arrived) + len(e.missing_blocks) == len(local)
                assert set(arrived).isdisjoint(e.missing_blocks)
                for plane_w, plane_g in zip(want.planes, mine.planes):  # missing blocks: whatever landed
                    plane_w[e.missing_blocks] = plane_g[e.missing_blocks]
            rmap = dict(zip(local, remote))
            expected_after(want, list(arrived), ref_cache(s), [rmap[b] for b in arrived])
            assert_planes(mine.planes, want.planes)  # blocks 48..63 still poisoned
            with pytest.raises(kv.PeerLost):
                a.read(p, [0], [0]).wait(6)
    finally:
        pp.close()


def test_stopped_peer_times_out_on_shm_and_not_on_cma():
    """SIGSTOP: the staging ring needs the peer, so the transfer fails with TransferTimeout within
    the agent's timeout; cross-memory attach is one-sided and completes."""
    pp = PeerProc()
    s = spec("vllm_flash_nhd", 41)
    try:
        meta = pp.setup(**s)
        c = ref_cache(s)
        with Agent("shm-side", transport="shm", timeout=1.0) as a, Agent("cma-side", transport="cma") as b:
            a.register(c.layout)
            b.register(ref_cache(s).layout)
            pa, pb = a.connect(meta), b.connect(meta)
            os.kill(pp.pid, signal.SIGSTOP)
            try:
                t = a.read(pa, [0], [1])
                with pytest.raises(kv.TransferTimeout):
                    t.wait(0.1)  # the wait's own timeout: the transfer goes on
                with pytest.raises(kv.TransferTimeout, match="did not answer within 1.0 s"):
                    t.wait(10)  # the agent's timeout ends it
                b.read(pb, [0], [1]).wait(10)
            finally:
                os.kill(pp.pid, signal.SIGCONT)
    finally:
        pp.close()


# ---- bad input ----

def test_bad_input(peer):
    s = spec("vllm_flash_nhd", 51)
    meta = peer.setup(**s)
    c = ref_cache(s)
    poison(c)
    with pytest.raises(InvalidArgument, match="transport 'tcp'"):
        Agent("x", transport="tcp")
    a = Agent("bad")
    with pytest.raises(InvalidArgument, match="no registered layout"):
        a.connect(meta)
    with pytest.raises(InvalidArgument, match="bad magic"):
        a.connect(b"hello")
    a.register(c.layout)
    p = a.connect(meta)
    with pytest.raises(OutOfRange, match=r"remote_blocks\[1\] = 12 is outside the layout's 12 blocks"):
        a.read(p, [0, 1], [0, 12])
    with pytest.raises(OutOfRange, match=r"local_blocks\[0\] = -1"):
        a.read(p, [-1], [0])
    with pytest.raises(InvalidArgument, match="repeats a block"):
        a.read(p, [3, 3], [0, 1])
    with pytest.raises(InvalidArgument, match="integers"):
        a.read(p, [0.5], [0])
    with pytest.raises(InvalidArgument, match="notify must be bytes"):
        a.read(p, [0], [0], notify="text")
    other = ref_cache(spec("vllm_flash_nhd", 52))
    with pytest.raises(InvalidArgument, match="not registered"):
        a.connect(meta, layout=other.layout)
    t = a.read(p, [0], [0])
    t.wait(30)
    with pytest.raises(InvalidArgument, match="already waited on"):
        t.wait()
    assert not t.cancel()
    a.close()
    a.close()
    with pytest.raises(InvalidArgument, match="agent 'bad' is closed"):
        a.read(p, [0], [0])
    with pytest.raises(InvalidArgument, match="closed"):
        a.register(c.layout)
    want = ref_cache(s)
    poison(want)
    expected_after(want, [0], ref_cache(s), [0])
    assert_planes(c.planes, want.planes)  # only the one good read wrote, into block 0


def test_incompatible_layouts_named_at_connect(peer):
    meta = peer.setup(**spec("vllm_flash_nhd", 61, D=8), name="p8")
    for s, what in [(spec("vllm_flash_nhd", 62, D=16), "head_size is 16 on 'me' but 8 on 'p8'"),
                    (spec("vllm_flash_nhd", 62, L=3), "num_layers is 3 on 'me' but 2 on 'p8'"),
                    (spec("vllm_flash_nhd", 62, dtype="float32"), "dtype is 'float32' on 'me' but 'float16'"),
                    (spec("mla", 62, H=1, D=8), "kind is 'mla' on 'me' but 'vllm_flash_nhd' on 'p8'")]:
        with Agent("me") as a:
            a.register(ref_cache(s).layout)
            with pytest.raises(InvalidArgument, match=what):
                a.connect(meta)


def test_cancel_stops_and_reports(peer):
    s = spec("vllm_flash_nhd", 71, L=4, NB=64, BS=16, H=8, D=128)
    meta = peer.setup(**s, transport="shm")
    mine = ref_cache(s)
    poison(mine)
    with Agent("c", transport="shm") as a:
        a.register(mine.layout)
        p = a.connect(meta)
        t = a.read(p, np.arange(64), np.arange(64))
        t.cancel()
        try:
            t.wait(30)
            cancelled = None
        except kv.TransferCancelled as e:
            cancelled = e
        if cancelled is not None:
            assert len(cancelled.arrived_blocks) + len(cancelled.missing_blocks) == 64
        # the channel stays usable after a cancel
        a.read(p, [0], [5]).wait(30)
        want = ref_cache(s)
        poison(want)
        if cancelled is not None:
            for w, g in zip(want.planes, mine.planes):
                w[cancelled.missing_blocks] = g[cancelled.missing_blocks]
            arrived = cancelled.arrived_blocks
        else:
            arrived = np.arange(64)
        expected_after(want, list(arrived), ref_cache(s), list(arrived))
        expected_after(want, [0], ref_cache(s), [5])
        assert_planes(mine.planes, want.planes)


def test_transport_banner_and_names():
    with Agent("n") as a:
        assert a.transport_name == "cma"
    with Agent("n", transport="shm") as a:
        assert a.transport_name == "shm"


def test_refused_cma_falls_back_with_banner(peer, monkeypatch):
    """Where the kernel refuses cross-memory attach (EPERM: ptrace scope, containers; injected
    here, root is never refused), "auto" moves through the staging ring and says so once; "cma"
    refuses at connect with the reason."""
    import errno
    from hauler.kv.transport import cma_error

    def refused(self, peer, segs, write, progress, deadline=None):
        raise cma_error(errno.EPERM, peer, write, 0)

    s = spec("vllm_flash_nhd", 81)
    meta = peer.setup(**s)
    mine = ref_cache(s)
    poison(mine)
    monkeypatch.setattr(agent_mod.CmaTransport, "move", refused)
    with Agent("strict", transport="cma") as a:
        a.register(mine.layout)
        with pytest.raises(kv.TransportRefused, match="EPERM.*ptrace scope"):
            a.connect(meta)
    with Agent("auto") as a:
        a.register(mine.layout)
        with pytest.warns(RuntimeWarning, match="staging ring .* not cross-memory attach"):
            p = a.connect(meta)
        assert p.transport_name == "shm" and a.transport_name == "shm"
        a.read(p, [4, 0], [2, 9]).wait(30)
    want = ref_cache(s)
    poison(want)
    assert_planes(mine.planes, expected_after(want, [4, 0], ref_cache(s), [2, 9]))


def test_two_process_example_runs():
    """tests/kv/two_process_example.py (the README's example) in its own interpreter."""
    r = subprocess.run([sys.executable, os.path.join(HERE, "kv", "two_process_example.py")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "example OK" in r.stdout and "bytes over cma" in r.stdout


def test_readme_example_is_the_tested_file():
    """docs/kv.md's "Between processes" code block is tests/kv/two_process_example.py (after its
    docstring), so test_two_process_example_runs runs what the docs show."""
    doc = open(os.path.join(HERE, "..", "docs", "kv.md")).read()
    part = doc.split("## Between processes (hauler.kv.Agent)", 1)
    assert len(part) == 2, "docs/kv.md has no 'Between processes (hauler.kv.Agent)' section"
    block = part[1].split("```python\n", 1)[1].split("```", 1)[0]
    example = open(os.path.join(HERE, "kv", "two_process_example.py")).read().split('"""', 2)[2].lstrip("\n")
    assert block == example
