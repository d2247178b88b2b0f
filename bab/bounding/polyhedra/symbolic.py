"""Forward symbolic bounds (ReluVal/Neurify-style symbolic intervals) and their CROWN hybrid.

Every node carries a lower and an upper *linear function of the input*: coefficient tensors
``[N, n_in + 1, *shape]`` whose last column is the constant term. Affine layers map them
exactly (positive weights take the lower function, negative ones the upper); nonlinear layers
use the same sound relaxations as CROWN on the concretised pre-activation interval. The cost
is ``O(n_in)`` times a forward pass, so this is the method for low-dimensional inputs.

``symbolic`` bounds ``C f(x)`` from the forward functions alone. ``crown-fwd`` uses the
forward bounds as intermediate bounds and finishes with one CROWN backward pass: nearly the
tightness of full CROWN at a small fraction of its cost when ``n_in`` is small.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from bab.bounding.balls import DUAL, uses_ball
from bab.bounding.base import Bounds, Domains, Registry, clause_bounds
from bab.bounding.interval.ibp import RULES as IBP_RULES, apply_phase
from bab.bounding.polyhedra.relax import POLICIES, relu_data, relu_relax, s_shaped_relax
from onnx_models import layers as L
from onnx_models.network import Network

Sym = tuple[torch.Tensor, torch.Tensor]  # (lower, upper) coefficient tensors [N, K, *shape]
RULES: Registry = Registry("symbolic")


def _cols(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Fold the column axis into the batch: ``[N, K, *s] -> [N*K, *s]``."""
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:]), (t.shape[0], t.shape[1])

def _uncols(t: torch.Tensor, nk: tuple[int, int]) -> torch.Tensor:
    return t.reshape(nk[0], nk[1], *t.shape[1:])


def _mixed(sym: Sym, op_pos, op_neg) -> Sym:
    """Apply a linear map split into its positive and negative parts (no bias)."""
    lo, nk = _cols(sym[0])
    hi, _ = _cols(sym[1])
    new_lo = op_pos(lo) + op_neg(hi)
    new_hi = op_pos(hi) + op_neg(lo)
    return _uncols(new_lo, nk), _uncols(new_hi, nk)


def _add_const(sym: Sym, lo_c: torch.Tensor, hi_c: torch.Tensor | None = None) -> Sym:
    """Add a constant (broadcast over the sample shape) to the constant column."""
    lo, hi = sym[0].clone(), sym[1].clone()
    lo[:, -1] = lo[:, -1] + lo_c
    hi[:, -1] = hi[:, -1] + (lo_c if hi_c is None else hi_c)
    return lo, hi


@RULES.register(L.Linear)
def _linear(layer: L.Linear, sym: Sym, ctx: Any) -> Sym:
    w = layer.weight
    out = _mixed(sym, lambda x: F.linear(x, w.clamp(min=0)), lambda x: F.linear(x, w.clamp(max=0)))
    return _add_const(out, layer.bias)


@RULES.register(L.Conv2d)
def _conv(layer: L.Conv2d, sym: Sym, ctx: Any) -> Sym:
    args = (None, layer.stride, layer.padding, layer.dilation, layer.groups)
    w = layer.weight
    out = _mixed(sym, lambda x: F.conv2d(x, w.clamp(min=0), *args), lambda x: F.conv2d(x, w.clamp(max=0), *args))
    return _add_const(out, layer.bias[:, None, None])


@RULES.register(L.ElementwiseAffine)
def _scale(layer: L.ElementwiseAffine, sym: Sym, ctx: Any) -> Sym:
    s = layer.scale
    out = _mixed(sym, lambda x: x * s.clamp(min=0), lambda x: x * s.clamp(max=0))
    return _add_const(out, layer.shift)


@RULES.register(L.Reshape, L.Transpose, L.AvgPool2d)
def _linear_no_bias(layer: L.Layer, sym: Sym, ctx: Any) -> Sym:
    """Linear maps with non-negative weights and no offset: apply to every column."""
    lo, nk = _cols(sym[0])
    hi, _ = _cols(sym[1])
    return _uncols(layer.forward(lo), nk), _uncols(layer.forward(hi), nk)


@RULES.register(L.Pad)
def _pad(layer: L.Pad, sym: Sym, ctx: Any) -> Sym:
    lo, nk = _cols(sym[0])
    hi, _ = _cols(sym[1])
    lo, hi = _uncols(F.pad(lo, layer.pads), nk), _uncols(F.pad(hi, layer.pads), nk)
    if layer.value != 0.0:
        mask = _uncols(F.pad(torch.zeros_like(_cols(sym[0][:, :1])[0]), layer.pads, value=1.0), (nk[0], 1))
        lo[:, -1:] = lo[:, -1:] + layer.value * mask
        hi[:, -1:] = hi[:, -1:] + layer.value * mask
    return lo, hi


@RULES.register(L.Add)
def _add(layer: L.Add, a: Sym, b: Sym, ctx: Any) -> Sym:
    return a[0] + b[0], a[1] + b[1]


@RULES.register(L.ReLU, L.Sigmoid, L.Tanh)
def _elementwise(layer: L.Layer, sym: Sym, ctx: Any) -> Sym:
    """Relax on the concretised input interval; all slopes are non-negative."""
    lo_b, hi_b = ctx["box"]
    if isinstance(layer, L.ReLU):
        r = relu_relax(relu_data(lo_b, hi_b, ctx["phase"], POLICIES["crown"]))
    else:
        r = s_shaped_relax(type(layer), lo_b, hi_b)
    # relaxation tensors are [N, 1, *shape]: the 1 broadcasts over the columns
    out = (sym[0] * r.lw, sym[1] * r.uw)
    zero = torch.zeros_like(lo_b)
    return _add_const(out, zero if r.lb is None else r.lb[:, 0], zero if r.ub is None else r.ub[:, 0])


@RULES.register(L.MaxPool2d)
def _maxpool(layer: L.MaxPool2d, sym: Sym, ctx: Any) -> Sym:
    """Concretise: the output interval becomes constant functions."""
    lo, hi = IBP_RULES.rule(layer)(layer, ctx["box"])
    return _constant(lo, hi, sym[0].shape[1])


def _constant(lo: torch.Tensor, hi: torch.Tensor, k: int) -> Sym:
    zl = torch.zeros(lo.shape[0], k, *lo.shape[1:], dtype=lo.dtype, device=lo.device)
    zh = zl.clone()
    zl[:, -1], zh[:, -1] = lo, hi
    return zl, zh


def concretize_sym(sym: Sym, lower: torch.Tensor, upper: torch.Tensor,
                   domains: Domains | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval of the linear functions over the input box (``lower``/``upper``: [N, n_in]);
    with an ℓ2/ℓ1 ball in ``domains``, over ``ball ∩ box`` (the tighter of the box and the
    dual-norm bound, each sound)."""
    n, n_in = lower.shape
    shape = (n, n_in) + (1,) * (sym[0].dim() - 2)
    l, u = lower.reshape(shape), upper.reshape(shape)
    a, b = sym[0][:, :-1], sym[1][:, :-1]
    lo = (a.clamp(min=0) * l + a.clamp(max=0) * u).sum(1) + sym[0][:, -1]
    hi = (b.clamp(min=0) * u + b.clamp(max=0) * l).sum(1) + sym[1][:, -1]
    if domains is not None and uses_ball(domains):
        c, e = domains.center.reshape(shape), domains.eps.reshape((n,) + (1,) * (sym[0].dim() - 2))
        q = DUAL[domains.p]
        order = float("inf") if q == float("inf") else q
        lo = torch.maximum(lo, (a * c).sum(1) - e * torch.linalg.vector_norm(a, order, dim=1) + sym[0][:, -1])
        hi = torch.minimum(hi, (b * c).sum(1) + e * torch.linalg.vector_norm(b, order, dim=1) + sym[1][:, -1])
    return lo, hi


def forward_pass(network: Network, domains: Domains) -> tuple[list[Sym], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Symbolic functions and (IBP-intersected) intervals of every node."""
    n, n_in = domains.lower.shape
    eye = torch.zeros(n, n_in + 1, n_in, dtype=domains.lower.dtype, device=domains.lower.device)
    eye[:, torch.arange(n_in), torch.arange(n_in)] = 1.0
    start = eye.reshape(n, n_in + 1, *network.input_shape)
    inp_box = (domains.lower.reshape(n, *network.input_shape), domains.upper.reshape(n, *network.input_shape))
    syms: list[Sym] = []
    boxes: list[tuple[torch.Tensor, torch.Tensor]] = []
    for idx, node in enumerate(network.nodes):
        args = [(start, start) if i < 0 else syms[i] for i in node.inputs]
        in_boxes = [inp_box if i < 0 else boxes[i] for i in node.inputs]
        if isinstance(node.layer, L.ReLU):
            in_boxes[0] = apply_phase(in_boxes[0], domains.phases.get(idx))
        ctx = {"box": in_boxes[0], "phase": domains.phases.get(idx)}
        sym = RULES.rule(node.layer)(node.layer, *args, ctx)
        ibp = IBP_RULES.rule(node.layer)(node.layer, *in_boxes)
        slo, shi = concretize_sym(sym, domains.lower, domains.upper, domains)
        syms.append(sym)
        boxes.append((torch.maximum(slo, ibp[0]), torch.minimum(shi, ibp[1])))
    return syms, boxes


MEMORY_ELEMENTS = 1 << 26  # largest coefficient tensor per pass, in elements


def in_chunks(network: Network, domains: Domains, fn) -> Bounds:
    """Run ``fn`` on slices of the batch so that ``[N, n_in+1, widest layer]`` fits the budget."""
    widest = max([network.n_inputs] + [math.prod(n.out_shape) for n in network.nodes])
    step = max(1, MEMORY_ELEMENTS // ((network.n_inputs + 1) * widest))
    if domains.size <= step:
        return fn(domains)
    parts = [fn(Domains(domains.lower[s:s + step], domains.upper[s:s + step], domains.C[s:s + step],
                        {k: v[s:s + step] for k, v in domains.phases.items()}, **domains.ball_of(slice(s, s + step))))
             for s in range(0, domains.size, step)]
    upper = None if parts[0].upper is None else torch.cat([p.upper for p in parts])
    inter = {k: (torch.cat([p.intermediate[k][0] for p in parts]), torch.cat([p.intermediate[k][1] for p in parts]))
             for k in parts[0].intermediate}
    return Bounds(lower=torch.cat([p.lower for p in parts]), upper=upper, intermediate=inter)


class Symbolic:
    """Forward symbolic intervals as a Bounder (``symbolic``)."""

    name = "symbolic"
    input_sets = {"inf": "exact", "2": "exact", "1": "exact"}

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        return in_chunks(network, domains, lambda dom: self._bound(network, dom))

    def _bound(self, network: Network, domains: Domains) -> Bounds:
        with torch.no_grad():
            syms, boxes = forward_pass(network, domains)
            n = domains.size
            lo_s, hi_s = syms[-1]
            k = lo_s.shape[1]
            lo_s, hi_s = lo_s.reshape(n, k, -1), hi_s.reshape(n, k, -1)
            C = domains.C
            row_lo = (torch.einsum("nmo,nko->nkm", C.clamp(min=0), lo_s)
                      + torch.einsum("nmo,nko->nkm", C.clamp(max=0), hi_s))
            lower, _ = concretize_sym((row_lo, row_lo), domains.lower, domains.upper, domains)
            ilo, ihi = boxes[-1]
            ib_lo, ib_hi = clause_bounds(C, ilo.reshape(n, -1), ihi.reshape(n, -1))
        return Bounds(lower=torch.maximum(lower, ib_lo), upper=ib_hi, intermediate=dict(enumerate(boxes)))


class CrownForward:
    """CROWN's final backward pass on top of forward symbolic intermediate bounds (``crown-fwd``)."""

    name = "crown-fwd"
    input_sets = {"inf": "exact", "2": "exact", "1": "exact"}

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        return in_chunks(network, domains, lambda dom: self._bound(network, dom))

    def _bound(self, network: Network, domains: Domains) -> Bounds:
        from bab.bounding.polyhedra.crown import Crown, Options, Sweep, exact_matmul, plan_for, prepare

        crown = Crown("crown", intermediate="ibp", upper=False)
        crown.check(network)
        net, dom = prepare(network, domains)
        with torch.no_grad(), exact_matmul(dom.lower.device):
            _, boxes = forward_pass(net, dom)
            opts = Options(intermediate="ibp", upper=False, final_ibp=True)
            sw = Sweep(net, plan_for(net), dom, crown.rules, crown.policy, opts, floor=boxes).run()
            lower = sw.final(dom.C)
            ilo, ihi = sw.ibp_final(dom.C)
        return Bounds(lower=torch.maximum(lower, ilo), upper=ihi, intermediate=dict(enumerate(sw.boxes)))
