"""Two processes moving KV blocks with hauler.kv.Agent: the example of docs/kv.md (tests run it).

The prefill process owns a vLLM-shaped cache, leases the request's blocks and hands its metadata
and the lease id to the decode process (here through a multiprocessing pipe; any channel works);
decode pulls the blocks into its own cache and notifies; the notification releases the lease."""
import multiprocessing as mp

import numpy as np
import torch

from hauler import kv


def prefill(conn):
    caches = [torch.randn(2, 64, 16, 8, 128, dtype=torch.float16) for _ in range(4)]  # 4 layers
    with kv.Agent("prefill") as agent:
        meta = agent.register(kv.KVLayout.vllm_flash(caches))
        lease = agent.lease([5, 9, 12], seconds=30)            # the request's blocks, held for decode
        conn.send((meta, lease.id, [c[:, [5, 9, 12]].numpy() for c in caches]))
        (sender, msg), = agent.notifications(timeout=30)       # decode is done with them
        assert (sender, msg) == ("decode", b"req-1 done") and agent.leases() == []
        conn.send("released")


def decode(conn):
    caches = [torch.zeros(2, 32, 16, 8, 128, dtype=torch.float16) for _ in range(4)]
    meta, lease_id, want = conn.recv()
    with kv.Agent("decode") as agent:
        agent.register(kv.KVLayout.vllm_flash(caches))
        peer = agent.connect(meta)                              # checks dtype, head size, layers
        t = agent.read(peer, [0, 1, 2], [5, 9, 12], lease=lease_id, notify=b"req-1 done")
        t.wait(timeout=30)
        print(f"decode: {t.bytes_done} bytes over {peer.transport_name}")
    assert all(np.array_equal(c[:, :3].numpy(), w) for c, w in zip(caches, want))


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=prefill, args=(a,))
    p.start()
    decode(b)
    assert b.recv() == "released"
    p.join(timeout=30)
    assert p.exitcode == 0
    print("example OK")
