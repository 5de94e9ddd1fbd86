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

    Returns n_id (unique nodes: the seeds first, in their order, then each hop's new nodes) and,
    per hop, the edges as local (src, dst) positions into n_id (messages flow src -> dst, dst in
    that hop's frontier). Vectorized: a few numpy sorts per hop."""
    seeds = np.asarray(seeds, dtype=np.int64)
    _, first = np.unique(seeds, return_index=True)
    frontier = seeds[np.sort(first)]
    nodes = [frontier]
    seen = frontier
    raw: List[Tuple[np.ndarray, np.ndarray]] = []
    for k in fanouts:
        deg = rowptr[frontier + 1] - rowptr[frontier]
        has = deg > 0
        f, d = frontier[has], deg[has]
        picks = (rng.random((f.size, k)) * d[:, None]).astype(np.int64) + rowptr[f][:, None]
        nbrs = col[picks].ravel()
        raw.append((nbrs, np.repeat(f, k)))
        new = nbrs[~np.isin(nbrs, seen)]
        _, fi = np.unique(new, return_index=True)
        frontier = new[np.sort(fi)]
        nodes.append(frontier)
        seen = np.concatenate([seen, frontier])
    n_id = np.concatenate(nodes)
    order = np.argsort(n_id, kind="stable")
    ids = n_id[order]
    edges = [(order[np.searchsorted(ids, s)], order[np.searchsorted(ids, d)]) for s, d in raw]
    return n_id, edges
