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
    # exact up to the outward rounding allowance (gamma_n of float32 times the magnitudes)
    assert b.lower[0].tolist() == pytest.approx([0.0, -4.0], abs=2e-5)
    assert b.upper[0].tolist() == pytest.approx([4.0, 0.0], abs=2e-5)
    assert (b.lower <= torch.tensor([[0.0, -4.0]])).all() and (b.upper >= torch.tensor([[4.0, 0.0]])).all()
    assert b.intermediate[0][0][0].tolist() == pytest.approx([-2.0, -2.0], abs=2e-5)


def test_hand_221_fixed_phases() -> None:
    net = hand_221()
    phases = {1: torch.tensor([[-1, 1]])}  # h1 inactive, h2 active
    b = get_bounder("ibp").bound(net, _dom([[-1, -1]], [[1, 1]], [[[1.0]]], phases))
    # y = relu(h2) with h2 clipped to [0, 2]
    assert b.lower.item() == pytest.approx(0.0, abs=2e-5) and b.upper.item() == pytest.approx(2.0, abs=2e-5)
    assert b.lower.item() <= 0.0 and b.upper.item() >= 2.0


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


def test_wide_boxes_rounded_outward() -> None:
    """Float32 mid/radius propagation cancels on wide boxes (lower end -10.56, upper 3.2e7,
    as in ml4acopf): the bounds must still contain the exact float64 values."""
    from onnx_models.layers import Linear, Node
    from onnx_models.network import Network, OnnxIO

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    net = Network([Node(Linear(w.float(), b.float()), (-1,), (3,))], (4,), (3,),
                  OnnxIO("x", (1, 4), "float32", "y", (1, 3), True))
    for _ in range(50):
        lo = -torch.rand(1, 4, generator=gen, dtype=torch.float64) * 20
        hi = torch.rand(1, 4, generator=gen, dtype=torch.float64) * 3.2e7
        lo32, hi32 = lo.float(), hi.float()
        out = get_bounder("ibp").bound(net, Domains(lo32, hi32, torch.eye(3)[None]))
        # exact extremes of w32 x + b32 over the float32 box, in float64
        W, B = w.float().double(), b.float().double()
        exact_lo = (W.clamp(min=0) @ lo32.double().T + W.clamp(max=0) @ hi32.double().T).T + B
        exact_hi = (W.clamp(min=0) @ hi32.double().T + W.clamp(max=0) @ lo32.double().T).T + B
        assert (out.lower.double() <= exact_lo).all() and (out.upper.double() >= exact_hi).all()
