"""The dense chain encoder (encoders/chain_encoding.py) builds the same model as the sparse one.

Oracle: the general encoder (forced with ``keep_nodes=True``, which the fast path does not
take), compared entry by entry after the LP and MILP lowering: variable bounds, integrality,
constraint matrix and row bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.chain_encoding import chain_nodes
from encoders.encoding import encode, interval_bounds
from encoders.model import lower
from onnx_models import layers as L
from tests.irnets import chain, random_mlp, small_cnn


def _models(enc, C, d):
    return [lower(enc, "lp", C, d, (-np.inf, 1e-6), 1e-6), lower(enc, "milp", C, d, (-np.inf, 1e-6), 1e-6)]


def _same(net, lo, hi, phases=None, intermediate=None, upto=None, rows=3, seed=0):
    fast = encode(net, lo, hi, phases, intermediate, upto=upto)
    slow = encode(net, lo, hi, phases, intermediate, upto=upto, keep_nodes=True)
    assert fast.n_unstable == slow.n_unstable and fast.empty == slow.empty
    assert [b.node for b in fast.relus] == [b.node for b in slow.relus]
    n_out = fast.output.c.size
    rng = np.random.default_rng(seed)
    C, d = rng.normal(size=(rows, n_out)), rng.normal(size=rows)
    for a, b in zip(_models(fast, C, d), _models(slow, C, d)):
        np.testing.assert_array_equal(a.lb, b.lb)
        np.testing.assert_array_equal(a.ub, b.ub)
        np.testing.assert_array_equal(a.integer, b.integer)
        np.testing.assert_allclose(a.A.toarray(), b.A.toarray(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a.row_lo, b.row_lo, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a.row_hi, b.row_hi, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(a.obj, b.obj)
    return fast


@pytest.mark.parametrize("seed", range(6))
def test_random_mlps_match(seed):
    """IBP bounds (nothing given), with ReLUs unstable in every layer."""
    net = random_mlp([4, 12, 10, 8, 3], seed=seed)
    lo, hi = -np.ones(4), np.ones(4)
    enc = _same(net, lo, hi, seed=seed)
    assert enc.n_unstable > 0 and chain_nodes(net, len(net.nodes) - 1)


@pytest.mark.parametrize("seed", range(4))
def test_fixed_phases_partial_bounds_and_prefix_match(seed):
    """Random fixed phases (phase rows), bounds given for some nodes only (IBP fills the rest), and a prefix (``upto``)."""
    net = random_mlp([3, 9, 9, 9, 2], seed=seed)
    lo, hi = -np.ones(3), np.ones(3)
    ibp = interval_bounds(net, lo, hi)
    rng = np.random.default_rng(seed)
    phases = {r: rng.integers(-1, 2, size=9) for r in (1, 5)}
    given = {j: ibp[j] for j in (0, 4)}
    _same(net, lo, hi, phases, given, seed=seed)
    _same(net, lo, hi, phases, given, upto=4, seed=seed)
    _same(net, lo, hi, None, ibp, upto=1, seed=seed)


def test_contradicting_phase_marks_the_domain_empty():
    """An active phase on a neuron whose input is always negative: empty in both encoders."""
    net = random_mlp([3, 16, 4], seed=7)
    lo, hi = -0.1 * np.ones(3), 0.1 * np.ones(3)
    ibp = interval_bounds(net, lo, hi)
    dead = np.nonzero(np.asarray(ibp[0][1]).reshape(-1) < 0)[0]
    assert dead.size
    phases = {1: np.zeros(16)}
    phases[1][dead[0]] = 1
    assert _same(net, lo, hi, phases, ibp).empty


def test_normalised_input_and_reshape_match():
    """Affine layers other than Linear (elementwise normalisation, reshape) in the chain."""
    g = torch.Generator().manual_seed(3)
    net = chain([L.ElementwiseAffine(torch.tensor(2.0), torch.tensor(-0.5)), L.Reshape((6,)),
                 L.Linear(torch.randn(7, 6, generator=g), torch.randn(7, generator=g)), L.ReLU(),
                 L.Linear(torch.randn(2, 7, generator=g), torch.zeros(2))], (2, 3))
    _same(net, np.zeros(6), np.ones(6))


def test_non_chains_take_the_general_encoder():
    """Convolutions, max-pool and sigmoid keep the CNN out of the dense walk; its first node
    (an elementwise normalisation) alone is a chain."""
    net = small_cnn()
    assert not chain_nodes(net, len(net.nodes) - 1)
    assert not chain_nodes(net, 2)
    assert chain_nodes(net, 0)
