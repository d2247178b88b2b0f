"""IBP: exact hand-computed bounds, phases, and containment of sampled outputs."""

from __future__ import annotations

import pytest
import torch

from bab.bounding import Domains, UnsupportedLayerError, get_bounder
from bab.bounding.interval.ibp import RULES
from onnx_models import layers as L
from tests.irnets import chain, hand_221, random_mlp, small_cnn


def _dom(lo, hi, C, phases=None) -> Domains:
    t = lambda v: torch.tensor(v, dtype=torch.float32)
    return Domains(t(lo), t(hi), t(C), phases or {})


def test_hand_221_exact() -> None:
    net = hand_221()
    b = get_bounder("ibp").bound(net, _dom([[-1, -1]], [[1, 1]], [[[1.0], [-1.0]]]))
    # h = [x1+x2, x1-x2] in [-2,2]^2, relu in [0,2]^2, y in [0, 4]
    assert b.lower.tolist() == [[0.0, -4.0]]
    assert b.upper.tolist() == [[4.0, 0.0]]
    assert b.intermediate[0][0].tolist() == [[-2.0, -2.0]]


def test_hand_221_fixed_phases() -> None:
    net = hand_221()
    phases = {1: torch.tensor([[-1, 1]])}  # h1 inactive, h2 active
    b = get_bounder("ibp").bound(net, _dom([[-1, -1]], [[1, 1]], [[[1.0]]], phases))
    # y = relu(h2) with h2 clipped to [0, 2]
    assert b.lower.tolist() == [[0.0]] and b.upper.tolist() == [[2.0]]


@pytest.mark.parametrize("make", [lambda: random_mlp([5, 16, 16, 3], seed=1), small_cnn])
def test_bounds_contain_samples(make) -> None:
    net = make()
    g = torch.Generator().manual_seed(0)
    n_in, n_out, N = net.n_inputs, net.n_outputs, 6
    centre = torch.rand(N, n_in, generator=g)
    rad = 0.3 * torch.rand(N, n_in, generator=g)
    C = torch.randn(N, 4, n_out, generator=g)
    b = get_bounder("ibp").bound(net, Domains(centre - rad, centre + rad, C))
    u = torch.rand(N, 2000, n_in, generator=g) * 2 - 1
    x = (centre[:, None] + rad[:, None] * u).reshape(-1, n_in)
    y = net.forward(x).reshape(N, 2000, n_out)
    cy = torch.einsum("nmo,nso->nsm", C, y)
    assert torch.all(b.lower[:, None] <= cy + 1e-5)
    assert torch.all(b.upper[:, None] >= cy - 1e-5)


def test_unknown_layer_is_a_clear_error() -> None:
    class Weird(L.Layer):
        def forward(self, x):
            return x

    net = chain([Weird()], (2,))
    with pytest.raises(UnsupportedLayerError, match="ibp.*Weird"):
        get_bounder("ibp").bound(net, _dom([[0, 0]], [[1, 1]], [[[1.0, 0.0]]]))
    assert RULES.supports(net) == ["Weird"]


def test_unknown_bounder_name() -> None:
    with pytest.raises(ValueError, match="available: ibp"):
        get_bounder("nope")
