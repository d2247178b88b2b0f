"""Backward Conv2d fast path for non-overlapping patches (kernel == stride, as in a ViT's
patch embedding): a reshape plus one matmul, equal to the general ``conv_transpose2d`` path."""

from __future__ import annotations

import pytest
import torch

from bab.bounding.base import Domains
from bab.bounding.polyhedra import backward
from bab.bounding.polyhedra.crown import Crown
from onnx_models import layers as L
from tests.irnets import chain


class _Ctx:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def in_shape(self, idx: int, k: int = 0) -> tuple[int, ...]:
        return self.shape


def _vjp(weight: torch.Tensor, stride: tuple[int, int], in_shape: tuple[int, ...], A: torch.Tensor) -> torch.Tensor:
    """The exact transpose of the convolution (autograd, float64), the oracle."""
    x = torch.zeros(A.shape[0] * A.shape[1], *in_shape, dtype=torch.float64)
    out = torch.func.vjp(lambda t: torch.nn.functional.conv2d(t, weight.double(), None, stride), x)[1]
    return out(A.reshape(-1, *A.shape[2:]))[0].reshape(*A.shape[:2], *in_shape)


CASES = [  # (Co, Ci, kernel, input H, W)
    (8, 3, (4, 4), 16, 16),
    (5, 2, (2, 3), 7, 10),   # rows/columns no patch covers: zero coefficients
    (6, 1, (16, 16), 32, 35),
    (4, 3, (1, 1), 3, 5),
]


@pytest.mark.parametrize("Co,Ci,k,H,W", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_patch_path_equals_general_path(Co, Ci, k, H, W, dtype, monkeypatch) -> None:
    g = torch.Generator().manual_seed(Co * H + W)
    layer = L.Conv2d(torch.randn(Co, Ci, *k, generator=g, dtype=dtype), torch.randn(Co, generator=g, dtype=dtype), k)
    assert backward._patches(layer)
    Ho, Wo = H // k[0], W // k[1]
    A = torch.randn(3, 2, Co, Ho, Wo, generator=g, dtype=dtype)
    (fast,), bias = backward._conv(_Ctx((Ci, H, W)), 0, layer, A)
    oracle = _vjp(layer.weight, k, (Ci, H, W), A.double())
    assert fast.shape == (3, 2, Ci, H, W) and fast.dtype == dtype
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    assert torch.allclose(fast.double(), oracle, rtol=tol, atol=tol * oracle.abs().max())
    monkeypatch.setattr(backward, "_patches", lambda layer: False)
    (general,), bias2 = backward._conv(_Ctx((Ci, H, W)), 0, layer, A)
    assert torch.allclose(fast, general, rtol=1e-6 if dtype == torch.float64 else 1e-5,
                          atol=1e-6 * general.abs().max())
    assert torch.equal(bias, bias2)


def test_general_path_unchanged_for_overlapping_kernels() -> None:
    layer = L.Conv2d(torch.randn(3, 2, 3, 3), torch.zeros(3), (2, 2))
    assert not backward._patches(layer)
    assert not backward._patches(L.Conv2d(torch.randn(3, 2, 2, 2), torch.zeros(3), (2, 2), (1, 1)))
    assert not backward._patches(L.Conv2d(torch.randn(4, 1, 2, 2), torch.zeros(4), (2, 2), groups=1, dilation=(2, 2)))


def test_crown_bounds_same_with_and_without_fast_path(monkeypatch) -> None:
    """A patch-embedding network: CROWN bounds agree with the conv_transpose2d path to 1e-6
    relative, and contain dense samples."""
    g = torch.Generator().manual_seed(3)
    net = chain([L.Conv2d(torch.randn(6, 3, 4, 4, generator=g) / 4, 0.1 * torch.randn(6, generator=g), (4, 4)),
                 L.ReLU(), L.Reshape((24,)), L.Linear(torch.randn(5, 24, generator=g) / 5, torch.zeros(5)),
                 L.ReLU(), L.Linear(torch.randn(3, 5, generator=g), torch.zeros(3))], (3, 8, 8))
    x0 = torch.rand(2, 192, generator=g)
    dom = Domains(x0 - 0.05, x0 + 0.05, torch.randn(2, 4, 3, generator=g))
    fast = Crown().bound(net, dom).lower
    monkeypatch.setattr(backward, "_patches", lambda layer: False)
    slow = Crown().bound(net, dom).lower
    assert torch.allclose(fast, slow, rtol=1e-6, atol=1e-6 * slow.abs().max())
    x = dom.lower[:, None] + (dom.upper - dom.lower)[:, None] * torch.rand(2, 2000, 192, generator=g)
    y = net.forward(x.reshape(-1, 192)).reshape(2, 2000, 3)
    cy = torch.einsum("nmo,nso->nsm", dom.C, y).min(1).values
    assert torch.all(fast <= cy + 1e-5)
