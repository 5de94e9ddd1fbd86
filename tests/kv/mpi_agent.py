"""Run under mpiexec -n 2: rank 1 pulls blocks from rank 0 and pushes blocks into it through
hauler.kv.Agent(transport="mpi") (one MPI_Get / MPI_Put per request), different block sizes and
NHD <-> HND, each byte checked against the numpy reference; rank 0 checks its blocks after the
notification. argv: seed, transport ("mpi" or "mpi2"), the transport name the peer must end on
(one-sided "mpi" falls back to "mpi2" where the library refuses it), and optionally "hang":
rank 0 stops itself (SIGSTOP) and rank 1's read must fail with TransferTimeout within its timeout
plus a second, its cache untouched, before it wakes rank 0 (SIGCONT). Prints "rank R OK" per rank."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import mpi4py  # noqa: E402

# Open MPI 4's osc/pt2pt (no RDMA network here) refuses MULTIPLE; MPICH (ch4/UCX) needs it, since this
# program's own MPI calls (allgather, barrier) run beside the agent's service thread.
mpi4py.rc.thread_level = "multiple" if os.environ.get("HAULER_KV_TEST_MPI") == "mpich" else "serialized"
from mpi4py import MPI  # noqa: E402

from hauler.kv.agent import Agent, TransferTimeout  # noqa: E402
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
    rank, seed, transport, expect = comm.Get_rank(), int(sys.argv[1]), sys.argv[2], sys.argv[3]
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
    agent = Agent(f"rank{rank}", transport=transport, timeout=3.0)
    metas = exchange_metadata(comm, agent.register(mine.layout))
    peer = agent.connect(metas[1 - rank])
    if sys.argv[4:] == ["hang"]:
        hang(comm, rank, agent, peer, mine, seed)
    elif rank == 1:
        agent.read(peer, local, remote, notify=b"read").wait(60)
        want = cache_of(1, seed)
        poison(want)
        for v, w in zip(want.planes, cache_of(1, seed).planes):
            v[pushed_from] = w[pushed_from]
        want.set_tokens(local, cache_of(0, seed).tokens(remote))
        same(mine, want, "pulled blocks")
        agent.write(peer, pushed_from, pushed_to, notify=b"pushed").wait(60)
        assert peer.transport_name == expect, (peer.transport_name, expect)
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


def hang(comm, rank, agent, peer, mine, seed):
    """Rank 0 stops; rank 1's wait times out within its timeout (+1 s) with its cache unchanged;
    a one-sided read that could not be abandoned completes once rank 0 runs again."""
    pid = comm.bcast(os.getpid(), root=0)
    if rank == 0:
        comm.Barrier()
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        comm.Barrier()
        time.sleep(0.5)  # rank 0 is stopped by now (it stops right after the barrier)
        before = [p.copy() for p in mine.planes]
        t0 = time.monotonic()
        t = agent.read(peer, [0, 1], [0, 1, 2, 3])
        try:
            t.wait(agent.timeout + 0.5)
            raise AssertionError("read from a stopped rank completed")
        except TransferTimeout as e:
            took = time.monotonic() - t0
            assert took < agent.timeout + 1.5, took
            print(f"rank 1 timed out after {took:.1f} s: {e}", flush=True)
            gave_up = e.missing_blocks is not None  # the transfer failed (two-sided), else it goes on
            if gave_up:
                assert list(e.missing_blocks) == [0, 1] and not len(e.arrived_blocks), e
        assert all(np.array_equal(a, b) for a, b in zip(mine.planes, before)), "cache changed"
        os.kill(pid, signal.SIGCONT)
        if not gave_up:
            t.wait(60)
            assert np.array_equal(mine.tokens([0, 1]), cache_of(0, seed).tokens([0, 1, 2, 3])), "late read differs"


if __name__ == "__main__":
    main()
