"""Choosing groups of ``k`` unstable neurons of one ReLU layer, by overlap of their inputs.

Every unstable neuron's pre-activation ``p`` is tied to an affine expression over earlier
model variables by its defining row of the encoding (:mod:`encoders.encoding`); for a dense
layer that row is the neuron's weight row, for a convolution its (sparse) receptive field.
Two neurons whose rows point in similar (or opposite) directions are strongly correlated,
which is where joint constraints cut most. So: keep a pool of the ``2 G + k`` most unstable
neurons (largest triangle area ``-l u / (u - l)``), score pairs by ``|cos|`` of their rows, and
pick greedily the best-scoring pairs (``k = 2``) or triples (``k = 3``: each pool neuron with
two of its four nearest neighbours, scored by the sum of pairwise ``|cos|``), at most ``G``
groups, each neuron in at most ``max_uses`` groups and no two groups sharing more than
``k - 2`` neurons (the sparsity limit of k-ReLU). The cost is bounded by the pool size.
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp

from encoders.encoding import Encoding, ReluBlock

NEIGHBOURS = 4  # nearest neighbours per neuron from which triples are formed


def stacked_rows(enc: Encoding) -> sp.csc_matrix:
    """Every linear row of the encoding, stacked (CSC, for column look-ups)."""
    if not enc.rows:
        return sp.csc_matrix((0, enc.n_vars))
    n = enc.n_vars
    return sp.vstack([sp.csr_matrix((b.A.data, b.A.indices, b.A.indptr), shape=(b.A.shape[0], n))
                      for b in enc.rows]).tocsc()


def input_rows(rows: sp.csc_matrix, block: ReluBlock) -> sp.csr_matrix:
    """The defining expression of each pre-activation of ``block`` over earlier variables."""
    sub = rows[:, block.pre]
    r = np.full(block.pre.size, -1, np.int64)
    coo = sub.tocoo()
    r[coo.col] = coo.row  # a pre-activation variable appears in its defining row only
    if (r < 0).any():
        raise ValueError("a pre-activation variable has no defining row")
    keep = np.ones(rows.shape[1])
    keep[block.pre] = 0.0
    return (rows.tocsr()[r] @ sp.diags(keep)).tocsr()


def instability(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Triangle area ``-l u / (u - l)`` (up to 1/2): how much the relaxation loses."""
    return -lo * hi / np.maximum(hi - lo, 1e-30)


def similarity(W: sp.csr_matrix) -> np.ndarray:
    """Dense ``|cos|`` between the rows of ``W`` (zero on the diagonal)."""
    norms = np.sqrt(np.asarray(W.multiply(W).sum(1)).reshape(-1))
    G = np.abs((W @ W.T).toarray()) / np.maximum(np.outer(norms, norms), 1e-300)
    np.fill_diagonal(G, 0.0)
    return G


def choose(W: sp.csr_matrix, lo: np.ndarray, hi: np.ndarray, k: int, n_groups: int,
           max_uses: int = 3) -> np.ndarray:
    """Groups ``[G, k]`` of row positions (into ``W``/``lo``/``hi``), best first."""
    n = lo.size
    k = min(k, n)
    if k < 2 or n_groups <= 0:
        return np.zeros((0, max(k, 0)), np.int64)
    pool = np.argsort(-instability(lo, hi), kind="stable")[:min(n, 2 * n_groups + k)]
    S = similarity(W[pool])
    cands = _pairs(S) if k == 2 else _triples(S, k)
    chosen: list[tuple[int, ...]] = []
    uses = np.zeros(pool.size, np.int64)
    seen: set[tuple[int, ...]] = set()
    for group in cands:
        if len(chosen) >= n_groups:
            break
        subs = set(itertools.combinations(group, k - 1))
        if any(uses[list(group)] >= max_uses) or (k > 2 and subs & seen):
            continue
        chosen.append(group)
        uses[list(group)] += 1
        seen |= subs
    return pool[np.array(chosen, np.int64).reshape(-1, k)]


def _pairs(S: np.ndarray) -> list[tuple[int, ...]]:
    i, j = np.triu_indices(S.shape[0], 1)
    order = np.argsort(-S[i, j], kind="stable")
    return [(int(i[o]), int(j[o])) for o in order]


def _triples(S: np.ndarray, k: int) -> list[tuple[int, ...]]:
    """Each neuron with ``k - 1`` of its nearest neighbours, best total ``|cos|`` first."""
    m = S.shape[0]
    near = np.argsort(-S, axis=1, kind="stable")[:, :min(NEIGHBOURS, m - 1)]
    cands: dict[tuple[int, ...], float] = {}
    for i in range(m):
        for rest in itertools.combinations(near[i].tolist(), k - 1):
            g = tuple(sorted((i, *rest)))
            if len(set(g)) == k and g not in cands:
                cands[g] = float(sum(S[a, b] for a, b in itertools.combinations(g, 2)))
    return sorted(cands, key=lambda g: -cands[g])
