"""A small uniform neighbour sampler and a random graph generator, for tests, benchmarks and
examples of hauler.gather (PyG's NeighborLoader needs pyg-lib or torch-sparse; this needs
only numpy). Not a replacement for those: a few numpy passes per hop.

    rowptr, col = random_graph(100_000, avg_degree=10, seed=0)
    n_id, edges = sample_neighbors(rowptr, col, seeds, fanouts=(10, 5), rng=np.random.default_rng(0))
    # n_id: the sampled nodes, seeds first; edges: per hop (src_local, dst_local) into n_id
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["random_graph", "sample_neighbors"]


def random_graph(num_nodes: int, avg_degree: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """CSR (rowptr, col) of a random directed graph: node i's in-neighbours are col[rowptr[i]:rowptr[i+1]]."""
    rng = np.random.default_rng(seed)
    deg = rng.poisson(avg_degree, num_nodes).astype(np.int64)
    rowptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(deg, out=rowptr[1:])
    col = rng.integers(0, num_nodes, int(rowptr[-1]), dtype=np.int64)
    return rowptr, col


def sample_neighbors(rowptr: np.ndarray, col: np.ndarray, seeds: np.ndarray, fanouts: Sequence[int],
                     rng: np.random.Generator) -> Tuple[np.ndarray, List[Tuple[np.ndarray, np.ndarray]]]:
    """Up to fanouts[h] uniformly drawn (with replacement) neighbours per frontier node per hop.

    Returns n_id (unique nodes, seeds first in their order) and, per hop, the edges as local
    (src, dst) positions into n_id (messages flow src -> dst, dst in the previous frontier)."""
    seeds = np.asarray(seeds, dtype=np.int64)
    n_id = list(dict.fromkeys(seeds.tolist()))
    local = {v: i for i, v in enumerate(n_id)}
    frontier = np.asarray(n_id, dtype=np.int64)
    edges: List[Tuple[np.ndarray, np.ndarray]] = []
    for k in fanouts:
        deg = rowptr[frontier + 1] - rowptr[frontier]
        has = deg > 0
        f, d = frontier[has], deg[has]
        picks = (rng.random((f.size, k)) * d[:, None]).astype(np.int64) + rowptr[f][:, None]
        nbrs = col[picks].ravel()
        dst = np.repeat(f, k)
        new = []
        src_l = np.empty(nbrs.size, dtype=np.int64)
        for j, v in enumerate(nbrs.tolist()):
            i = local.get(v)
            if i is None:
                i = local[v] = len(n_id)
                n_id.append(v)
                new.append(v)
            src_l[j] = i
        dst_l = np.fromiter((local[v] for v in dst.tolist()), dtype=np.int64, count=dst.size)
        edges.append((src_l, dst_l))
        frontier = np.asarray(new, dtype=np.int64)
    return np.asarray(n_id, dtype=np.int64), edges
