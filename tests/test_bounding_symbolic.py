"""Forward symbolic bounds and the crown-fwd hybrid: containment of sampled outputs, phases."""

from __future__ import annotations

import pytest
import torch

from bab.bounding import Domains, get_bounder
from tests.irnets import hand_221, random_mlp, small_cnn


def _domains(net, n: int, seed: int) -> tuple[Domains, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, net.n_inputs, generator=g)
    rad = 0.4 * torch.rand(n, net.n_inputs, generator=g)
    C = torch.randn(n, 3, net.n_outputs, generator=g)
    u = torch.rand(n, 1500, net.n_inputs, generator=g) * 2 - 1
    x = (centre[:, None] + rad[:, None] * u).reshape(-1, net.n_inputs)
    y = net.forward(x).reshape(n, 1500, -1)
    observed = torch.einsum("nmo,nso->nsm", C, y).amin(1)
    return Domains(centre - rad, centre + rad, C), observed


@pytest.mark.parametrize("name", ["symbolic", "crown-fwd"])
@pytest.mark.parametrize("make", [lambda: random_mlp([4, 12, 12, 12, 3], seed=2), small_cnn],
                         ids=["mlp", "cnn"])
def test_bounds_contain_samples(name, make) -> None:
    net = make()
    dom, observed = _domains(net, 8, seed=5)
    lower = get_bounder(name).bound(net, dom).lower
    assert torch.all(lower <= observed + 1e-5)


@pytest.mark.parametrize("name", ["symbolic", "crown-fwd"])
def test_at_least_as_tight_as_ibp(name) -> None:
    net = random_mlp([3, 10, 10, 2], seed=7)
    dom, _ = _domains(net, 16, seed=1)
    assert torch.all(get_bounder(name).bound(net, dom).lower >= get_bounder("ibp").bound(net, dom).lower - 1e-5)


def test_hand_221_symbolic_exact() -> None:
    # h1 = x1+x2, h2 = x1-x2 on [-1,1]^2 are unstable on [-2,2]: CROWN's tie rule gives lower
    # slope 1, so the symbolic bound is y >= h1 + h2 = 2*x1 >= -2; intersected with the
    # interval bound y in [0, 4] the lower bound is 0. The upper function is
    # (h1+2)/2 + (h2+2)/2 = x1 + 2 <= 3.
    net = hand_221()
    dom = Domains(torch.tensor([[-1.0, -1.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[[1.0], [-1.0]]]))
    from bab.bounding.polyhedra.symbolic import concretize_sym, forward_pass

    syms, _ = forward_pass(net, dom)
    lo, hi = concretize_sym(syms[-1], dom.lower, dom.upper)
    assert lo.item() == pytest.approx(-2.0, abs=1e-6) and hi.item() == pytest.approx(3.0, abs=1e-6)
    assert get_bounder("symbolic").bound(net, dom).lower[0].tolist() == pytest.approx([0.0, -3.0], abs=2e-5)


def test_fixed_phases_respected() -> None:
    net = hand_221()
    dom = Domains(torch.tensor([[-1.0, -1.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[[-1.0]]]),
                  {1: torch.tensor([[-1, 0]])})  # h1 inactive: y = relu(h2) <= 2
    for name in ("symbolic", "crown-fwd"):
        assert get_bounder(name).bound(net, dom).lower.item() >= -2.0 - 1e-6
