"""hauler.kv.Agent with a device cache on this side: reads and writes stage through host memory and
one part-1 plan to the device blocks, run here by the host emulation of the GPU kernels
(tests/support/kv_ref.py's fake CUDA arrays, the gpu_emulation fixture); the peer is a real
process with a host cache. A peer's device cache on this node: tests/test_kv_agent_ipc.py."""
import numpy as np
import pytest

from hauler.kv.agent import Agent, TransferCancelled
from support.kv_ref import make_cache, poison
from test_kv_agent import PeerProc, assert_planes, expected_after, ref_cache, spec


@pytest.fixture(scope="module")
def peer():
    p = PeerProc()
    yield p
    p.close()


def device_cache(kind, seed, **kw):
    """(the fake-CUDA cache, poisoned; an identical numpy cache to compute the expectation on)."""
    caches = [make_cache(kind, np.random.default_rng(seed), lib=lib, **kw) for lib in ("fake_cuda", "numpy")]
    for c in caches:
        poison(c)
    assert caches[0].layout.device is not None and caches[1].layout.device is None
    return caches


CASES = [  # (our device kind, our block size, peer kind, peer block size, heads, dst_heads, our heads)
    ("vllm_flash_nhd", 4, "vllm_flash_nhd", 4, None, None, 2),
    ("vllm_flash_hnd", 8, "cross_layer_nhd", 4, None, None, 2),
    ("vllm_flash_nhd", 4, "vllm_flash_hnd", 8, (2, 4), None, 2),   # decode TP 2: half the heads
]


@pytest.mark.parametrize("mine,bs,theirs,pbs,heads,dst_heads,H", CASES)
def test_device_side_reads_and_writes(peer, gpu_emulation, tmp_path, mine, bs, theirs, pbs, heads, dst_heads, H):
    s = spec(theirs, 31, BS=pbs, H=4 if heads else 2)
    meta = peer.setup(**s)
    dev, want = device_cache(mine, 7, L=2, NB=12, BS=bs, H=H, D=8)
    rng = np.random.default_rng(bs + pbs)
    n_remote = 4 if pbs <= bs else 2
    rb = rng.choice(12, n_remote, replace=False)
    lb = rng.choice(12, n_remote * pbs // bs, replace=False)
    with Agent("device-side") as agent:
        agent.register(dev.layout)
        p = agent.connect(meta)
        t = agent.read(p, lb, rb, heads=heads, dst_heads=dst_heads).wait(60)
        assert list(t.arrived_blocks) == list(lb) and t.bytes_done == t.nbytes > 0
        assert_planes(dev.planes, expected_after(want, lb, ref_cache(s), rb, heads=heads, dst_heads=dst_heads))

        # and back: our (now known) blocks pushed into other blocks of the peer
        dst = np.setdiff1d(np.arange(12), rb)[:n_remote]
        back_heads = (0, H) if heads else None
        agent.write(p, lb, dst, heads=back_heads, dst_heads=heads).wait(60)
        peer_now = peer.dump(tmp_path / "after")
        peer_want = ref_cache(s)
        expected_after(peer_want, dst, want, lb, heads=back_heads, dst_heads=heads)
        assert_planes(peer_now, peer_want.planes)


def test_failed_device_read_leaves_the_device_blocks(peer, gpu_emulation):
    """A read cancelled before it ran reports every block missing and writes no device byte."""
    meta = peer.setup(**spec("vllm_flash_nhd", 3))
    dev, _ = device_cache("vllm_flash_nhd", 3, L=2, NB=12, BS=4, H=2, D=8)
    before = dev.snapshot()
    with Agent("device-side", max_workers=1) as agent:
        agent.register(dev.layout)
        p = agent.connect(meta)
        gate = agent._pool.submit(__import__("time").sleep, 1.0)  # hold the one worker
        t = agent.read(p, [0, 1], [2, 3])
        assert t.cancel()
        with pytest.raises(TransferCancelled) as e:
            t.wait(30)
        gate.result()
        assert list(e.value.missing_blocks) == [0, 1] and not len(e.value.arrived_blocks)
    assert_planes(dev.planes, before)
