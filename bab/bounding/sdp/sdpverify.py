"""SDPVerify (Raghunathan, Steinhardt, Liang, NeurIPS 2018) as a Bounder, and the lifting
shared with ``lmi``.

A fully connected ReLU network (Linear, ReLU, Reshape; ElementwiseAffine folded into the
affine maps) is read through a per-op registry into a chain of affine maps between ReLU
layers. Per domain, CROWN intermediate bounds (float64, widened) classify every neuron:
stably inactive neurons are the constant 0, stably active ones the affine form of their
pre-activation, and only unstable ones (and the free input coordinates) become coordinates of
the lifted vector ``v = (1, x, z)``. The SDP relaxation ``P = [1 v^T; v vv^T] >= 0`` with

  z >= 0,  z >= s,  z (z - s) = 0,  (x - l)(u - x) >= 0,  (z - l')(u' - z) >= 0

(``s``: pre-activation, ``[l', u'] = [max(l, 0), max(u, 0)]``) is solved through its dual,
whose multipliers give a floating-point-sound bound (:mod:`bab.bounding.sdp.solve`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch

from bab.bounding.base import BounderRefusal, Bounds, Domains, Registry
from bab.bounding.sdp.solve import EPS, DualSdp, QcSystem, SolveInfo, choose_solver
from onnx_models import layers as L
from onnx_models.network import Network

WIDEN = 1e-8  # relative widening of the float64 CROWN intermediate bounds


def _gk(k: int) -> float:
    """Relative rounding bound of a ``k``-term dot product plus one addition."""
    return 1.01 * (k + 2) * EPS


@dataclass
class Affine:
    """``y = A v + c`` with entrywise bounds ``Aabs >= |A|``, ``cabs >= |c|`` (rounding)."""

    A: np.ndarray
    c: np.ndarray
    Aabs: np.ndarray
    cabs: np.ndarray

    @staticmethod
    def identity(k: int) -> "Affine":
        return Affine(np.eye(k), np.zeros(k), np.eye(k), np.zeros(k))

    def then(self, W: np.ndarray, b: np.ndarray) -> "Affine":
        """``W (A v + c) + b``."""
        g = 3 * _gk(W.shape[1])
        Wa = np.abs(W)
        return Affine(W @ self.A, W @ self.c + b, (Wa @ self.Aabs) * (1 + g),
                      (Wa @ self.cabs + np.abs(b)) * (1 + g))


@dataclass
class Chain:
    """The network as ReLU layers: ``maps[k]`` takes the activations of ReLU ``k-1`` (or the
    input) to the pre-activations of ReLU ``k``; ``maps[-1]`` goes to the output.
    ``gamma``: relative rounding bound of the maps' entries (w.r.t. their abs bounds)."""

    relus: list[int] = field(default_factory=list)
    maps: list[Affine] = field(default_factory=list)
    gamma: float = 0.0

    @property
    def hidden(self) -> int:
        """Number of ReLU units."""
        return sum(m.A.shape[0] for m in self.maps[:-1])


@dataclass
class _Walk:
    pending: Affine
    chain: Chain
    shape: tuple[int, ...]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def make_rules(method: str) -> Registry:
    """The per-op registry of the SDP family (``method`` names the errors)."""
    rules: Registry = Registry(method)

    @rules.register(L.Linear)
    def _linear(layer: L.Linear, walk: _Walk, out_shape: tuple[int, ...]) -> None:
        W = _np(layer.weight)
        b = np.zeros(W.shape[0]) if layer.bias is None else _np(layer.bias)
        walk.chain.gamma += 3 * _gk(W.shape[1])
        walk.pending = walk.pending.then(W, b)

    @rules.register(L.ElementwiseAffine)
    def _scale(layer: L.ElementwiseAffine, walk: _Walk, out_shape: tuple[int, ...]) -> None:
        s = _np(torch.ones(out_shape, dtype=torch.float64) * layer.scale.double().cpu()).ravel()
        sh = _np(torch.ones(out_shape, dtype=torch.float64) * layer.shift.double().cpu()).ravel()
        walk.chain.gamma += 3 * _gk(1)
        p, g = walk.pending, 1 + 3 * _gk(1)
        walk.pending = Affine(s[:, None] * p.A, s * p.c + sh, np.abs(s)[:, None] * p.Aabs * g,
                              (np.abs(s) * p.cabs + np.abs(sh)) * g)

    @rules.register(L.Reshape)
    def _reshape(layer: L.Reshape, walk: _Walk, out_shape: tuple[int, ...]) -> None:
        """Flat C-order vectors are unchanged by a reshape."""

    @rules.register(L.ReLU)
    def _relu(layer: L.ReLU, walk: _Walk, out_shape: tuple[int, ...]) -> None:
        walk.chain.maps.append(walk.pending)
        walk.pending = Affine.identity(walk.pending.A.shape[0])

    return rules


def read_chain(network: Network, rules: Registry) -> Chain:
    """The network's ReLU chain; ``UnsupportedLayerError`` for any other op or a non-chain."""
    walk = _Walk(Affine.identity(network.n_inputs), Chain(), tuple(network.input_shape))
    for idx, node in enumerate(network.nodes):
        rule = rules.rule(node.layer)
        if tuple(node.inputs) != (idx - 1,):
            from bab.bounding.base import UnsupportedLayerError
            raise UnsupportedLayerError(
                f"bounding method '{rules.method}' needs a chain network; node {idx} "
                f"({node.layer.kind}) reads {list(node.inputs)}")
        if isinstance(node.layer, L.ReLU):
            walk.chain.relus.append(idx)
        rule(node.layer, walk, tuple(node.out_shape))
    walk.chain.maps.append(walk.pending)
    return walk.chain


@dataclass
class LiftedLayer:
    """One ReLU layer in lifted coordinates: pre-activation forms ``[k, n]`` and bounds."""

    pre: np.ndarray
    pre_abs: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    unstable: np.ndarray
    pos: np.ndarray
    active: np.ndarray
    inactive: np.ndarray


@dataclass
class Lifted:
    """One domain in the coordinates ``v = (1, free x, unstable z)``."""

    n: int
    vmax: np.ndarray
    x_pos: np.ndarray
    x_lo: np.ndarray
    x_hi: np.ndarray
    layers: list[LiftedLayer]
    out: np.ndarray
    out_abs: np.ndarray
    gamma: float

    def objective(self, c: np.ndarray) -> tuple[np.ndarray, float]:
        """``q`` with ``q·v = c·f(x)`` (computed) and a bound on its rounding over the domain."""
        q = c @ self.out
        qabs = (np.abs(c) @ self.out_abs) * (1 + 3 * _gk(c.size))
        g = self.gamma + _gk(c.size)
        return q, g * float(qabs @ self.vmax) * (1 + 1e-10)


def _status(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.flatnonzero((lo < 0) & (hi > 0)), np.flatnonzero(lo >= 0), np.flatnonzero(hi <= 0)


def lift(chain: Chain, xlo: np.ndarray, xhi: np.ndarray,
         bounds: list[tuple[np.ndarray, np.ndarray]]) -> Lifted:
    """Coordinates and affine forms of one domain (``bounds``: sound pre-activation bounds)."""
    free = np.flatnonzero(xhi > xlo)
    n = 1 + free.size + sum(_status(lo, hi)[0].size for lo, hi in bounds)
    E = np.zeros((xlo.size, n))
    E[free, 1 + np.arange(free.size)] = 1.0
    fixed = np.setdiff1d(np.arange(xlo.size), free)
    E[fixed, 0] = xlo[fixed]
    Eabs, gE = np.abs(E), 0.0
    vmax = np.zeros(n)
    vmax[0], vmax[1:1 + free.size] = 1.0, np.maximum(np.abs(xlo[free]), np.abs(xhi[free]))
    nxt, layers = 1 + free.size, []
    ga = chain.gamma
    for amap, (lo, hi) in zip(chain.maps, bounds):
        F, Fabs, gE = _apply(amap, E, Eabs, ga, gE)
        unst, act, ina = _status(lo, hi)
        pos = nxt + np.arange(unst.size)
        nxt += unst.size
        vmax[pos] = hi[unst]
        layers.append(LiftedLayer(F, Fabs, lo, hi, unst, pos, act, ina))
        E, Eabs = np.zeros_like(F), np.zeros_like(F)
        E[act], Eabs[act] = F[act], Fabs[act]
        E[unst, pos] = Eabs[unst, pos] = 1.0
    out, out_abs, gE = _apply(chain.maps[-1], E, Eabs, ga, gE)
    return Lifted(n, vmax, np.arange(1, 1 + free.size), xlo[free], xhi[free], layers, out,
                  out_abs, gE)


def _apply(m: Affine, E: np.ndarray, Eabs: np.ndarray, ga: float,
           ge: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Forms ``A E + c e_0`` with abs bounds and their relative rounding bound."""
    gk = _gk(E.shape[0])
    F = m.A @ E
    F[:, 0] += m.c
    Fabs = (m.Aabs @ Eabs) * (1 + 3 * gk)
    Fabs[:, 0] += m.cabs * (1 + 3 * gk)
    return F, Fabs, ga + ge + ga * ge + 2 * gk


class QcList:
    """Accumulates quadratic constraints ``(u·v)(w·v) >= 0`` (or ``= 0``) row blocks."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]] = []

    def unit(self, pos: np.ndarray) -> np.ndarray:
        """Rows ``e_pos``."""
        out = np.zeros((len(pos), self.n))
        out[np.arange(len(pos)), pos] = 1.0
        return out

    def const(self, vals: np.ndarray) -> np.ndarray:
        """Rows ``vals[i] e_0``."""
        out = np.zeros((len(vals), self.n))
        out[:, 0] = vals
        return out

    def add(self, u: np.ndarray, w: np.ndarray, uabs: np.ndarray, wabs: np.ndarray,
            eq: bool = False) -> None:
        """Append a block (``uabs``/``wabs``: entrywise bounds of the forms' magnitudes)."""
        if len(u):
            self.parts.append((u, w, uabs, wabs, eq))

    def system(self, vmax: np.ndarray, gamma: float) -> QcSystem:
        """The :class:`QcSystem` (``gamma``: relative rounding bound of the forms)."""
        cat = lambda k: sp.csr_matrix(np.concatenate([p[k] for p in self.parts]))
        eq = np.concatenate([np.full(len(p[0]), p[4]) for p in self.parts])
        return QcSystem(cat(0), cat(1), eq, cat(2), cat(3), vmax, 2 * gamma + 16 * EPS)


def sdp_constraints(lf: Lifted) -> QcList:
    """Raghunathan et al.'s constraints (plus exact handling of stable neurons)."""
    qc = QcList(lf.n)
    X = qc.unit(lf.x_pos)
    qc.add(X - qc.const(lf.x_lo), qc.const(lf.x_hi) - X, X + qc.const(np.abs(lf.x_lo)),
           X + qc.const(np.abs(lf.x_hi)))
    for ly in lf.layers:
        Z, U = qc.unit(ly.pos), ly.unstable
        one = qc.const(np.ones(U.size))
        a, aa = ly.pre[U], ly.pre_abs[U]
        qc.add(one, Z, one, Z)  # z >= 0
        qc.add(one, Z - a, one, Z + aa)  # z >= s
        qc.add(Z, Z - a, Z, Z + aa, eq=True)  # z (z - s) = 0
        qc.add(Z, qc.const(ly.hi[U]) - Z, Z, qc.const(np.abs(ly.hi[U])) + Z)  # z <= u'
        A, Ina = ly.active, ly.inactive
        qc.add(qc.const(np.ones(A.size)), ly.pre[A], qc.const(np.ones(A.size)), ly.pre_abs[A])
        pa, paa = ly.pre[A], ly.pre_abs[A]
        qc.add(pa - qc.const(ly.lo[A]), qc.const(ly.hi[A]) - pa, paa + qc.const(np.abs(ly.lo[A])),
               paa + qc.const(np.abs(ly.hi[A])))  # l <= s <= u on active neurons
        qc.add(qc.const(np.ones(Ina.size)), -ly.pre[Ina], qc.const(np.ones(Ina.size)), ly.pre_abs[Ina])
    return qc


@dataclass
class SdpState:
    """What an SDP-family bound pass did: one :class:`SolveInfo` per domain and row."""

    method: str
    solves: list[list[SolveInfo]]
    dims: list[int]


def pre_bounds(network: Network, domains: Domains, chain: Chain) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per ReLU layer: widened float64 CROWN pre-activation bounds ``[N, k]``, phase-clipped."""
    from bab.bounding import get_bounder

    crown = get_bounder("crown")
    crown.dtype = torch.float64
    N = domains.size
    dom = Domains(domains.lower, domains.upper,
                  torch.zeros(N, 1, network.n_outputs, dtype=domains.lower.dtype), domains.phases)
    inter = crown.bound(network, dom).intermediate
    out = []
    for r in chain.relus:
        j = network.nodes[r].inputs[0]
        lo, hi = (domains.lower, domains.upper) if j < 0 else inter[j]
        lo, hi = _np(lo).reshape(N, -1), _np(hi).reshape(N, -1)
        lo, hi = lo - WIDEN * (1 + np.abs(lo)), hi + WIDEN * (1 + np.abs(hi))
        ph = domains.phases.get(r)
        if ph is not None:
            ph = ph.reshape(N, -1).cpu().numpy()
            lo, hi = np.where(ph > 0, np.maximum(lo, 0), lo), np.where(ph < 0, np.minimum(hi, 0), hi)
        out.append((lo, hi))
    return out


def round_down(values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """float64 bounds as ``dtype`` without rounding up."""
    t = torch.as_tensor(values, dtype=torch.float64).to(dtype)
    up = t.double() > torch.as_tensor(values)
    return torch.where(up, torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype)), t)


class SdpVerify:
    """SDP relaxation bounder (``max_hidden``/``max_dim``: refuse larger instances;
    ``solver``: a cvxpy solver name, default MOSEK/Clarabel/SCS; ``ipm_max_dim``: above this
    matrix side the automatic choice is SCS, whose memory grows like ``n^2`` rather than ``n^4``).
    """

    name = "sdp"
    constraints: Callable[[Lifted], QcList] = staticmethod(sdp_constraints)

    def __init__(self, max_hidden: int = 200, max_dim: int = 400, solver: str | None = None,
                 solver_opts: dict[str, Any] | None = None, ipm_max_dim: int = 40) -> None:
        self.max_hidden, self.max_dim, self.ipm_max_dim = max_hidden, max_dim, ipm_max_dim
        self.solver, self.solver_opts = solver, solver_opts
        self.rules = make_rules(self.name)
        self.remaining: Callable[[], float] | None = None  # seconds left (set by the caller)

    def check(self, network: Network, domains: Domains | None = None) -> Chain:
        """The chain, or a refusal naming the limit (hidden units; free inputs + 1)."""
        chain = read_chain(network, self.rules)
        if chain.hidden > self.max_hidden:
            raise BounderRefusal(f"{self.name}: {chain.hidden} hidden units > limit "
                                 f"{self.max_hidden} (max_hidden)")
        free = network.n_inputs if domains is None else int((domains.upper > domains.lower).sum(1).max())
        if 1 + free > self.max_dim:
            raise BounderRefusal(f"{self.name}: SDP matrix side >= {1 + free} "
                                 f"(free inputs + 1) > limit {self.max_dim} (max_dim)")
        return chain

    def _solver(self, n: int) -> tuple[str, dict[str, Any]]:
        name = self.solver.upper() if self.solver else ("SCS" if n > self.ipm_max_dim else choose_solver())
        opts = {"eps_abs": 1e-5, "eps_rel": 1e-5, "max_iters": 100000} if name == "SCS" else {}
        opts.update(self.solver_opts or {})
        return choose_solver(name), opts

    def _solve(self, dual: DualSdp, lf: Lifted, c: np.ndarray) -> SolveInfo:
        """One row's solve within the time left (none left: not solved, bound ``-inf``)."""
        left = None if self.remaining is None else self.remaining()
        if left is not None and left <= 0:
            return SolveInfo(dual.solver, "time limit reached", 0.0)
        return dual.solve(*lf.objective(c), time_limit=left)

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        """Certified lower bounds of ``C f(x)``; a row whose solve is not optimal gets ``-inf``."""
        chain = self.check(network, domains)
        try:
            import cvxpy  # noqa: F401
        except ImportError as exc:
            raise BounderRefusal(f"{self.name} needs cvxpy (a dependency of this package: reinstall it): {exc}") from exc
        bounds = pre_bounds(network, domains, chain)
        C = _np(domains.C)
        xlo, xhi = _np(domains.lower), _np(domains.upper)
        N, M = C.shape[:2]
        lower = np.full((N, M), -np.inf)
        solves, dims = [], []
        for d in range(N):
            b = [(lo[d], hi[d]) for lo, hi in bounds]
            if any(np.any(lo > hi) for lo, hi in b):
                lower[d] = np.inf  # the fixed phases contradict the bounds: an empty domain
                solves.append([SolveInfo("none", "empty domain", 0.0, np.inf)] * M)
                dims.append(0)
                continue
            lf = lift(chain, xlo[d], xhi[d], b)
            if lf.n > self.max_dim:
                raise BounderRefusal(f"{self.name}: SDP matrix side {lf.n} > limit {self.max_dim} (max_dim)")
            dual = DualSdp(self.constraints(lf).system(lf.vmax, lf.gamma), *self._solver(lf.n))
            row = [self._solve(dual, lf, C[d, r]) for r in range(M)]
            lower[d] = [s.bound for s in row]
            solves.append(row)
            dims.append(lf.n)
        return Bounds(lower=round_down(lower, domains.lower.dtype).to(domains.lower.device),
                      state=SdpState(self.name, solves, dims))
