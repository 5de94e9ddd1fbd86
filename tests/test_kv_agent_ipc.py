"""hauler.kv.Agent with a peer's device cache on this node, through CUDA IPC handles: the peer (a
real process, tests/kv/peer.py) keeps its cache in the GPU emulation's device memory and exports
it at register(); we map it at connect() and move blocks with the part-1 kernel (run by the host
emulation), our side host or device memory; every byte compared with the numpy reference on
poisoned destinations. Then the faults: a handle of another boot, the peer's memory gone, the
peer's agent closed, our mapping closed."""
import base64
import json
import signal
import types
from contextlib import contextmanager

import numpy as np
import pytest

from hauler import _core
from hauler.errors import InvalidArgument, NoDevice
from hauler.kv.agent import _MAGIC, Agent, PeerLost
from support.kv_ref import make_cache, poison
from test_kv_agent import PeerProc, assert_planes, expected_after, ref_cache, spec


@pytest.fixture
def peer():
    p = PeerProc()
    yield p
    p.close()


def device_spec(kind, seed, **kw):
    return dict(spec(kind, seed, **kw), lib="emu_device")


def our_cache(lib, kind, seed, **kw):
    c = make_cache(kind, np.random.default_rng(seed), lib=lib, **kw)
    poison(c)
    want = make_cache(kind, np.random.default_rng(seed), **kw)
    poison(want)
    return c, want


@contextmanager
def session(peer, seed=5):
    """Our host cache (poisoned) connected to the peer's fresh emulated device cache: a namespace
    of the agent, the Peer, our cache, its expected twin, the peer's spec and metadata."""
    s = device_spec("vllm_flash_nhd", seed)
    meta = peer.setup(**s)
    ours, want = our_cache("numpy", "vllm_flash_nhd", seed + 1, L=2, NB=12, BS=4, H=2, D=8)
    with Agent("ipc-side") as agent:
        agent.register(ours.layout)
        yield types.SimpleNamespace(agent=agent, p=agent.connect(meta), ours=ours, want=want, spec=s, meta=meta)


CASES = [  # (our lib, our kind, our block size, our heads, peer kind, peer block size, peer heads, heads)
    ("numpy", "vllm_flash_nhd", 4, 2, "vllm_flash_nhd", 4, 2, None),
    ("numpy", "cross_layer_hnd", 8, 2, "vllm_flash_nhd", 4, 2, None),
    ("fake_cuda", "vllm_flash_hnd", 4, 2, "vllm_flash_nhd", 8, 4, (2, 4)),  # decode TP 2: half the heads
    ("emu_device", "vllm_flash_nhd", 4, 2, "vllm_flash_hnd", 4, 2, None),
]


@pytest.mark.parametrize("lib,mine,bs,H,theirs,pbs,pH,heads", CASES)
def test_reads_and_writes_through_ipc(peer, gpu_emulation, tmp_path, lib, mine, bs, H, theirs, pbs, pH, heads):
    s = device_spec(theirs, 41, BS=pbs, H=pH)
    meta = peer.setup(**s)
    assert json.loads(meta[len(_MAGIC):])["ipc"], "the peer exported no handle"
    ours, want = our_cache(lib, mine, 9, L=2, NB=12, BS=bs, H=H, D=8)
    rng = np.random.default_rng(bs * 10 + pbs)
    n_remote = 4 if pbs <= bs else 2
    rb = rng.choice(12, n_remote, replace=False)
    lb = rng.choice(12, n_remote * pbs // bs, replace=False)
    with Agent("ipc-side") as agent:
        agent.register(ours.layout)
        p = agent.connect(meta)
        assert p.transport_name == "cuda_ipc"
        t = agent.read(p, lb, rb, heads=heads, notify=b"pulled").wait(60)
        assert list(t.arrived_blocks) == list(lb) and t.bytes_done == t.nbytes > 0
        assert_planes(ours.planes, expected_after(want, lb, ref_cache(s), rb, heads=heads))
        assert peer.request(op="notifications", timeout=10)["notes"] == [["ipc-side", base64.b64encode(b"pulled").decode()]]

        dst = np.setdiff1d(np.arange(12), rb)[:n_remote]  # and back, into other blocks of the peer
        back = (0, H) if heads else None
        agent.write(p, lb, dst, heads=back, dst_heads=heads).wait(60)
        peer_want = ref_cache(s)
        expected_after(peer_want, dst, want, lb, heads=back, dst_heads=heads)
        assert_planes(peer.dump(tmp_path / "after"), peer_want.planes)


def test_leased_read_through_ipc(peer, gpu_emulation):
    with session(peer) as x:
        lease = peer.request(op="lease", blocks=[3, 7], seconds=30)["id"]
        x.agent.read(x.p, [0, 1], [3, 7], lease=lease, notify=b"done").wait(60)
        assert_planes(x.ours.planes, expected_after(x.want, [0, 1], ref_cache(x.spec), [3, 7]))
        assert peer.request(op="notifications", timeout=10)["notes"]
        assert peer.request(op="leases")["ids"] == []  # the notification released it


def test_handle_of_another_boot_is_refused(peer, gpu_emulation):
    meta = peer.setup(**device_spec("vllm_flash_nhd", 5))
    d = json.loads(meta[len(_MAGIC):])
    handle = bytearray(base64.b64decode(d["ipc"][0]["handle"]))
    handle[8] ^= 0xFF  # the node field: boot id and pid namespace
    with pytest.raises(InvalidArgument, match="another node, boot or pid namespace"):
        _core.kv_ipc_open(bytes(handle), 0)
    with pytest.raises(InvalidArgument, match="not an emulated IPC handle"):
        _core.kv_ipc_open(bytes(64), 0)
    with pytest.raises(InvalidArgument, match="64 bytes"):
        _core.kv_ipc_open(b"short", 0)
    d["boot_id"] = "0" * 36  # the agent checks the node before it touches a handle
    ours, _ = our_cache("numpy", "vllm_flash_nhd", 1)
    with Agent("ipc-side") as agent:
        agent.register(ours.layout)
        with pytest.raises(NoDevice, match="on another node, boot or pid namespace"):
            agent.connect(_MAGIC + json.dumps(d).encode())


def test_peer_device_gone(peer, gpu_emulation):
    with session(peer) as x:
        x.agent.read(x.p, [0], [1]).wait(60)
        before = x.ours.snapshot()
        peer.proc.send_signal(signal.SIGKILL)
        peer.proc.wait(30)
        with pytest.raises(PeerLost, match="exited: its device memory is gone") as e:
            x.agent.read(x.p, [2, 3], [4, 5]).wait(60)
        assert list(e.value.missing_blocks) == [2, 3]
        assert_planes(x.ours.planes, before)
        with pytest.raises(PeerLost, match="device memory is gone"):
            x.agent.connect(x.meta)  # its handles name memory of a process that exited


def test_peer_agent_closed_and_our_mapping_closed(peer, gpu_emulation):
    meta = peer.setup(**device_spec("vllm_flash_nhd", 5))
    ours, _ = our_cache("numpy", "vllm_flash_nhd", 1, L=2, NB=12, BS=4, H=2, D=8)
    agent = Agent("ipc-side")
    try:
        agent.register(ours.layout)
        p = agent.connect(meta)
        peer.setup(**device_spec("vllm_flash_nhd", 6))  # closes the peer's agent (and frees its cache)
        with pytest.raises(PeerLost, match="closed its agent"):
            agent.read(p, [0], [1]).wait(60)
        p2 = agent.connect(peer.setup(**device_spec("vllm_flash_nhd", 7)))
        mapped = p2.ipc.rows[0][2]
    finally:
        agent.close()
    with pytest.raises(InvalidArgument, match="is closed"):
        agent.read(p2, [0], [1])
    assert p2.ipc.closed
    with pytest.raises(InvalidArgument, match="closed twice"):
        _core.kv_ipc_close(mapped)


def test_unexportable_device_memory_is_said_at_connect(gpu_emulation):
    """fake-CUDA arrays are plain host memory, which CUDA IPC cannot export: the peer is told why."""
    host = make_cache("vllm_flash_nhd", np.random.default_rng(1))
    dev = make_cache("vllm_flash_nhd", np.random.default_rng(2), lib="fake_cuda")
    with pytest.raises(InvalidArgument, match="not in an emulated device allocation"):
        _core.kv_ipc_export(dev.layout.regions()[0][0])
    with Agent("host-side") as a, Agent("device-side") as b:
        a.register(host.layout)
        meta = b.register(dev.layout)
        with pytest.raises(NoDevice, match=r"peer 'device-side' registered device memory \(cuda.*could not export"):
            a.connect(meta)


def test_same_process_device_peer_needs_no_mapping(gpu_emulation):
    """Two agents of one process share the address space: the peer's device blocks are used as they are."""
    ours, want = our_cache("numpy", "vllm_flash_nhd", 3, L=2, NB=6, BS=4, H=2, D=8)
    dev = make_cache("vllm_flash_nhd", np.random.default_rng(4), lib="emu_device", L=2, NB=6, BS=4, H=2, D=8)
    ref = make_cache("vllm_flash_nhd", np.random.default_rng(4), L=2, NB=6, BS=4, H=2, D=8)
    with Agent("host-side") as a, Agent("device-side") as b:
        a.register(ours.layout)
        p = a.connect(b.register(dev.layout))
        assert p.transport_name == "cuda_ipc" and p.ipc.rows[0][0] == p.ipc.rows[0][2]
        a.read(p, [5, 0], [1, 2]).wait(60)
        assert_planes(ours.planes, expected_after(want, [5, 0], ref, [1, 2]))


def test_segment_outside_the_export_is_refused(peer, gpu_emulation):
    from hauler.kv.transport import PeerMemoryError
    with session(peer) as x:
        base, size, _ = x.p.ipc.rows[-1]
        seg = np.array([[base + size - 8, x.ours.layout.regions()[0][0], 16]], dtype=np.int64)
        with pytest.raises(PeerMemoryError, match="outside the device memory"):
            x.agent._ipc.move(x.p, seg, False, _core.KvXferProgress())


def test_docs_example_runs(tmp_path):
    """docs/kv-transfer.md's python block as the script it is (tests/test_readme.py execs docs blocks
    under another __name__, where a spawn-based two-process example only defines its functions): the
    CUDA IPC example on a GPU; elsewhere it must still import, run and say why it stops."""
    import os
    import re
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "docs", "kv-transfer.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    (tmp_path / "example.py").write_text(blocks[0])
    r = subprocess.run([sys.executable, str(tmp_path / "example.py")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "decode: moved over cuda_ipc" in r.stdout or "no CUDA device here" in r.stdout
