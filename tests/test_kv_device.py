"""hauler.kv block moves on device caches (CuPy and torch CUDA arrays on a real GPU, run by
scripts/gpu_check.sh; the host emulation of the kernel everywhere) against numpy on poisoned
outputs: gather into a contiguous buffer, scatter back, copy inside a cache."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hauler import kv
from support import examples
from support.buffers import POISONS, first_diff
from support.real_gpu import real_gpu  # noqa: F401 (a fixture)


def _caches(g, rng, L, NB, BS, H, D, order):
    """L per-layer vLLM flash caches of float16 on the device, and their host copies."""
    shape = (2, NB, BS, H, D) if order == "NHD" else (2, NB, H, BS, D)
    hosts = [rng.standard_normal(shape).astype(np.float16) for _ in range(L)]
    devs = [g.view(g.bytes(h.view(np.uint8)), np.float16, shape) for h in hosts]
    return hosts, devs


def _blocks_of(h, ids, order):
    """numpy's gather: [planes, blocks, block_size, heads, head_size] of one layer."""
    b = h[:, ids]
    return b if order == "NHD" else b.transpose(0, 1, 3, 2, 4)


@settings(max_examples=examples(40), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 3), st.integers(2, 40), st.sampled_from([1, 3, 16]), st.integers(1, 4),
       st.sampled_from([1, 3, 8, 64]), st.sampled_from(["NHD", "HND"]), st.integers(0, 2**32 - 1))
def test_real_gpu_kv_gather_scatter_copy_match_numpy(real_gpu, L, NB, BS, H, D, order, seed):
    g = real_gpu
    rng = np.random.default_rng(seed)
    hosts, devs = _caches(g, rng, L, NB, BS, H, D, order)
    layout = kv.KVLayout.vllm_flash(devs, order)
    n = int(rng.integers(1, 2 * NB))
    ids = rng.integers(0, NB, n)                                   # repeats allowed
    want = np.stack([_blocks_of(h, ids, order) for h in hosts]).tobytes()
    out = g.full(len(want) + 32, POISONS[0])
    kv.gather_blocks(layout, ids, out[:len(want)])
    got = g.host(out)
    assert got[:len(want)].tobytes() == want, first_diff(got[:len(want)], np.frombuffer(want, np.uint8))
    assert (got[len(want):] == POISONS[0]).all()

    # scatter into unique blocks of a poisoned cache set: those blocks take the rows, nothing else moves
    uniq = rng.permutation(NB)[: min(n, NB)]
    src = np.stack([_blocks_of(h, uniq, order) for h in hosts])
    shape = devs[0].shape
    targets = [g.view(g.full(hosts[0].nbytes, POISONS[1]), np.float16, shape) for _ in range(L)]
    kv.scatter_blocks(kv.KVLayout.vllm_flash(targets, order), uniq, g.bytes(src.view(np.uint8)))
    for h, t in zip(hosts, targets):
        got = g.host(t).view(np.float16).reshape(shape)
        expect = np.frombuffer(bytes([POISONS[1]]) * h.nbytes, np.float16).reshape(shape).copy()
        expect[:, uniq] = h[:, uniq]
        assert got.tobytes() == expect.tobytes()

    # copy inside each cache: half the blocks onto other blocks
    perm = rng.permutation(NB)
    k = NB // 2
    mapping = np.stack([perm[:k], perm[k:2 * k]], axis=1)
    kv.copy_blocks(layout, layout, mapping)
    for h, d in zip(hosts, devs):
        expect = h.copy()
        expect[:, mapping[:, 1]] = h[:, mapping[:, 0]]
        assert g.host(d).tobytes() == expect.tobytes()
