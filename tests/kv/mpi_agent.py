"""Run under mpiexec -n 2: rank 1 pulls blocks from rank 0 and pushes blocks into it through
hauler.kv.Agent(transport="mpi") (one MPI_Get / MPI_Put per request), different block sizes and
NHD <-> HND, each byte checked against the numpy reference; rank 0 checks its blocks after the
notification. argv: seed. Prints "rank R OK" per rank."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import mpi4py  # noqa: E402

mpi4py.rc.thread_level = "serialized"  # Open MPI 4's osc/pt2pt (no RDMA network here) refuses MULTIPLE
from mpi4py import MPI  # noqa: E402

from hauler.kv.agent import Agent  # noqa: E402
from hauler.kv.transport_mpi import exchange_metadata  # noqa: E402
from support.kv_ref import make_cache, poison  # noqa: E402

KINDS, BS = ("vllm_flash_nhd", "vllm_flash_hnd"), (4, 8)


def cache_of(rank, seed):
    return make_cache(KINDS[rank], np.random.default_rng(seed + rank), L=2, NB=16, BS=BS[rank], H=2, D=8)


def same(got, want, what):
    for i, (g, w) in enumerate(zip(got.planes, want.planes)):
        if not np.array_equal(g, w):
            raise AssertionError(f"{what}: plane {i} differs at {np.argwhere(g != w)[0].tolist()}")


def main():
    comm = MPI.COMM_WORLD
    rank, seed = comm.Get_rank(), int(sys.argv[1])
    rng = np.random.default_rng(seed)
    remote = rng.choice(16, 4)  # rank 0's blocks of 4 tokens (repeats allowed) -> 2 of rank 1's blocks of 8
    local = rng.permutation(16)[:2]
    pushed_from = rng.permutation(16)[:1]  # one block of rank 1 (8 tokens) -> 2 blocks of rank 0
    pushed_to = rng.permutation(16)[:2]
    mine = cache_of(rank, seed)
    if rank == 1:
        poison(mine)
        for v, w in zip(mine.planes, cache_of(1, seed).planes):  # keep the block we push
            v[pushed_from] = w[pushed_from]
    agent = Agent(f"rank{rank}", transport="mpi")
    metas = exchange_metadata(comm, agent.register(mine.layout))
    peer = agent.connect(metas[1 - rank])
    assert peer.transport_name == "mpi" and agent.transport_name == "mpi"
    if rank == 1:
        agent.read(peer, local, remote, notify=b"read").wait(60)
        want = cache_of(1, seed)
        poison(want)
        for v, w in zip(want.planes, cache_of(1, seed).planes):
            v[pushed_from] = w[pushed_from]
        want.set_tokens(local, cache_of(0, seed).tokens(remote))
        same(mine, want, "pulled blocks")
        agent.write(peer, pushed_from, pushed_to, notify=b"pushed").wait(60)
    else:
        notes = []
        for _ in range(600):
            notes += agent.notifications(timeout=0.1)
            if len(notes) == 2:
                break
        assert notes == [("rank1", b"read"), ("rank1", b"pushed")], notes
        want = cache_of(0, seed)
        want.set_tokens(pushed_to, cache_of(1, seed).tokens(pushed_from))
        same(mine, want, "pushed blocks")
    comm.Barrier()
    agent.close()
    print(f"rank {rank} OK", flush=True)


if __name__ == "__main__":
    main()
