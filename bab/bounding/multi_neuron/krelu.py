"""``krelu``: the triangle LP plus joint constraints over groups of unstable ReLUs.

Singh, Ganvir, Püschel, Vechev, "Beyond the single neuron convex barrier for neural network
certification" (NeurIPS 2019, k-ReLU) and Müller et al., "PRIMA" (POPL 2022). Per domain:

1. intermediate boxes from one float64 CROWN sweep over the whole batch;
2. the encoding (:mod:`encoders.encoding`) and its triangle LP (:func:`encoders.model.lower`);
3. for every ReLU layer, up to ``groups_per_layer`` groups of ``k`` unstable neurons chosen by
   overlap of their inputs (:mod:`.groups`), the octagonal bounds of each group's
   pre-activations by CROWN back-substitution (:mod:`.octagon`), and the facets of the exact
   convex hull of ``{(x, relu(x)) : x in box ∩ octagon}`` that cut the triangles, with
   right-hand sides recomputed soundly (:mod:`.hull`); the rows go into the LP through
   :func:`encoders.extra_rows.add_rows`;
4. one LP minimum per row of ``C f(x)``, each widened downwards by the solver tolerance
   (:func:`encoders.decide.prove_eps`); ``-inf`` where the LP did not finish, ``+inf`` when
   the domain's relaxation is infeasible (empty domain).

Sigmoid/Tanh networks and LPs above ``max_lp_size`` (variables plus rows) are refused with
:class:`~bab.bounding.base.BounderRefusal`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from bab.bounding.base import BounderRefusal, Bounds, Domains
from bab.bounding.multi_neuron import groups as grp
from bab.bounding.multi_neuron.hull import JointRows, joint_rows, octagon_directions
from bab.bounding.multi_neuron.octagon import octagons
from bab.bounding.polyhedra.crown import Crown, Sweep, prepare
from encoders.decide import dispatcher_for, prove_eps
from encoders.encoding import Encoding, ReluBlock, UnsupportedNetwork, encode, float64_network
from encoders.extra_rows import add_rows
from encoders.lp import solve_value
from encoders.model import LinearModel, lower
from onnx_models import layers as L
from onnx_models.network import Network

GEN_SHARE = 0.5  # at most this share of a domain's time limit goes to generating constraints


@dataclass(frozen=True)
class Settings:
    """The knobs of one run (constructor arguments, or a ``multi_neuron`` config section)."""

    k: int
    groups_per_layer: int
    time_limit: float
    rows_per_group: int
    max_lp_size: int


@dataclass
class Plan:
    """One domain: its encoding, triangle LP and, per ReLU block, the chosen groups."""

    enc: Encoding
    model: LinearModel | None
    groups: list[np.ndarray]  # per block: [G, k] positions into the block


@dataclass
class Placed:
    """One group's joint rows and the model columns of its pre- and post-activations."""

    rows: JointRows
    pre: np.ndarray
    post: np.ndarray


class KRelu:
    """Multi-neuron LP bounder (see the module docstring).

    ``k``: group size (2 or 3); ``groups_per_layer``: groups per ReLU layer and domain;
    ``time_limit``: seconds per domain (constraint generation plus the LPs);
    ``rows_per_group``: deepest hull facets kept per group; ``max_lp_size``: refuse LPs with
    more variables plus rows; ``config``: a :class:`bab.config.Config` (its ``multi_neuron``
    section gives the first three settings when they are not passed explicitly, its ``solver``
    section the LP back end and tolerances) or a ``MultiNeuronConfig``; without either, the
    ``MultiNeuronConfig`` defaults (k = 2, 20 groups per layer, 30 s per domain).
    """

    name = "krelu"
    # an ℓ1 ball is exact LP rows (encoders.encoding); an ℓ2 ball would need a cone: refused
    input_sets = {"inf": "exact", "1": "exact"}

    def __init__(self, k: int | None = None, groups_per_layer: int | None = None,
                 time_limit: float | None = None, rows_per_group: int = 40,
                 max_lp_size: int = 200_000, config: Any = None) -> None:
        self.explicit = {"k": k, "groups_per_layer": groups_per_layer, "time_limit": time_limit}
        self.rows_per_group, self.max_lp_size = rows_per_group, max_lp_size
        self.config = config

    def resolved(self) -> tuple[Settings, Any]:
        """Settings (explicit arguments, else the config section, else its defaults) and the
        solver config (the config's ``solver`` section, else the defaults)."""
        from bab.config import MultiNeuronConfig, SolverConfig

        cfg = self.config
        section = getattr(cfg, "multi_neuron", cfg)
        if not isinstance(section, MultiNeuronConfig):
            section = MultiNeuronConfig()
        pick = {name: getattr(section, name) if v is None else v for name, v in self.explicit.items()}
        s = Settings(int(pick["k"]), int(pick["groups_per_layer"]), float(pick["time_limit"]),
                     self.rows_per_group, self.max_lp_size)
        if s.k not in (2, 3):
            raise ValueError(f"krelu: k must be 2 or 3, got {s.k}")
        return s, getattr(cfg, "solver", None) or SolverConfig()

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        """Lower bounds ``[N, M]`` of ``C f(x)``; intermediate boxes are CROWN's (float64)."""
        bad = sorted({n.layer.kind for n in network.nodes if isinstance(n.layer, (L.Sigmoid, L.Tanh))})
        if bad:
            raise BounderRefusal(f"krelu: {', '.join(bad)} cannot be encoded as an LP "
                                 "(piecewise-linear networks only)")
        s, solver = self.resolved()
        net = float64_network(network)
        crown = Crown("crown", dtype=torch.float64, device="cpu")
        crown.check(net)
        net, dom = prepare(net, domains, torch.float64, "cpu")
        with torch.no_grad():
            sweep = crown.sweep(net, dom)
        budget = s.time_limit * dom.size
        start = time.monotonic()
        try:
            plans = [self._plan(net, dom, sweep, i, s) for i in range(dom.size)]
        except UnsupportedNetwork as exc:  # Exp, Sin, Floor, ...: not an LP
            raise BounderRefusal(f"krelu: {exc}") from exc
        rows = self._joint_rows(net, sweep, plans, s, start + GEN_SHARE * budget)
        disp = dispatcher_for(solver)
        out = []
        for i, (p, r) in enumerate(zip(plans, rows)):
            left = (start + budget - time.monotonic()) / (dom.size - i)
            out.append(self._solve(p, r, dom.C[i].numpy(), solver, disp, max(0.05, left)))
        return Bounds(lower=_round_down(np.stack(out), domains.lower.dtype, domains.lower.device),
                      intermediate=dict(enumerate(sweep.boxes)))

    def _plan(self, net: Network, dom: Domains, sweep: Sweep, i: int, s: Settings) -> Plan:
        """Encode domain ``i`` on the CROWN boxes and choose its groups."""
        inter = {k: (lo[i], hi[i]) for k, (lo, hi) in enumerate(sweep.boxes)}
        phases = {k: v[i] for k, v in dom.phases.items()}
        ball = None
        if dom.has_ball and dom.p != "inf":
            from vnnlib.spec import Ball

            ball = Ball(dom.center[i].numpy(), float(dom.eps[i]), dom.p)
        enc = encode(net, dom.lower[i].numpy(), dom.upper[i].numpy(), phases, inter, ball=ball)
        if enc.empty:
            return Plan(enc, None, [])
        model = lower(enc, "lp")
        if model.n_vars + model.n_rows > s.max_lp_size:
            raise BounderRefusal(f"krelu: LP with {model.n_vars} variables and {model.n_rows} rows "
                                 f"exceeds max_lp_size={s.max_lp_size}")
        stacked = grp.stacked_rows(enc) if enc.relus else None
        chosen = [grp.choose(grp.input_rows(stacked, b), b.lo, b.hi, s.k, s.groups_per_layer)
                  for b in enc.relus]
        return Plan(enc, model, chosen)

    def _joint_rows(self, net: Network, sweep: Sweep, plans: list[Plan], s: Settings,
                    until: float) -> list[list[Placed]]:
        """Per domain, the joint rows of every group (ReLU node by node) until ``until``."""
        out: list[list[Placed]] = [[] for _ in plans]
        for r in sorted({b.node for p in plans for b in p.enc.relus}):
            info = [_block_groups(p, r) for p in plans]
            for k in sorted({g.shape[1] for _, g, _ in info if g.shape[0]}):
                if time.monotonic() > until:
                    return out
                dirs = octagon_directions(k)
                sel = [g if g.shape[1] == k else np.zeros((0, k), np.int64) for _, g, _ in info]
                flat = [nz[g] for (_, _, nz), g in zip(info, sel)]
                boxes = [(b.lo[g], b.hi[g]) if b is not None else (np.zeros((0, k)),) * 2
                         for (b, _, _), g in zip(info, sel)]
                octs = octagons(sweep, net.nodes[r].inputs[0], flat, dirs, boxes)
                for i, ((b, _, _), g) in enumerate(zip(info, sel)):
                    out[i] += _hulls(b, g, dirs, octs[i], s.rows_per_group, until)
        return out

    def _solve(self, plan: Plan, rows: list[Placed], C: np.ndarray, solver: Any, disp: Any,
               time_limit: float) -> np.ndarray:
        """Widened LP minima of every row of ``C f(x)`` for one domain."""
        if plan.model is None:
            return np.full(C.shape[0], np.inf)  # the fixed phases contradict sound bounds
        end = time.monotonic() + time_limit
        values = lp_minima(plan.enc, add_joint_rows(plan.model, rows), C, solver, disp, time_limit)
        if rows and np.any(np.isposinf(values)):  # "infeasible" with the joint rows: trust the triangle's
            values = lp_minima(plan.enc, plan.model, C, solver, disp, max(0.05, end - time.monotonic()))
        eps = prove_eps(solver)
        return np.where(np.isfinite(values), values - eps * (1.0 + np.abs(values)), values)


def _hulls(b: ReluBlock | None, g: np.ndarray, dirs: np.ndarray, oct_: tuple[np.ndarray, np.ndarray],
           rows_per_group: int, until: float) -> list[Placed]:
    """Joint rows of each group of one block, with the model columns they act on."""
    out = []
    for t in range(g.shape[0]):
        if time.monotonic() > until:
            break
        q = g[t]
        rows = joint_rows(b.lo[q], b.hi[q], dirs, oct_[0][t], oct_[1][t], rows_per_group)
        out.append(Placed(rows, b.pre[q], b.post[q]))
    return out


def _block_groups(plan: Plan, node: int) -> tuple[ReluBlock | None, np.ndarray, np.ndarray]:
    """The block of ``node`` in a plan, its groups and the flat neuron index of each position."""
    for b, g in zip(plan.enc.relus, plan.groups):
        if b.node == node:
            lo, hi = plan.enc.pre_bounds[node]
            return b, g, np.nonzero((lo < 0) & (hi > 0))[0]
    return None, np.zeros((0, 2), np.int64), np.zeros(0, np.int64)


def add_joint_rows(model: LinearModel, placed: list[Placed]) -> LinearModel:
    """``model`` with every group's rows ``bx·pre + ay·post <= c``."""
    r_, c_, v_, hi = [], [], [], []
    m = 0
    for p in placed:
        jr = p.rows
        if jr.size == 0:
            continue
        vals = np.concatenate([jr.bx, jr.ay], 1)
        idx = np.arange(m, m + jr.size)[:, None].repeat(vals.shape[1], 1)
        cols = np.broadcast_to(np.concatenate([p.pre, p.post])[None], idx.shape)
        nz = vals != 0
        r_.append(idx[nz]), c_.append(cols[nz]), v_.append(vals[nz]), hi.append(jr.c)
        m += jr.size
    if m == 0:
        return model
    A = sp.csr_matrix((np.concatenate(v_), (np.concatenate(r_), np.concatenate(c_))), shape=(m, model.n_vars))
    return add_rows(model, A, np.full(m, -np.inf), np.concatenate(hi))


def lp_minima(enc: Encoding, model: LinearModel, C: np.ndarray, solver: Any, disp: Any,
              time_limit: float) -> np.ndarray:
    """Raw LP minima of each row of ``C f(x)`` over ``model`` (``-inf``: unfinished,
    ``+inf``: infeasible), as :func:`encoders.lp.row_bounds` reads them."""
    objs = sp.csr_matrix(C @ enc.output.A)
    objs = sp.csr_matrix((objs.data, objs.indices, objs.indptr), shape=(objs.shape[0], model.n_vars))
    consts = C @ enc.output.c
    out = consts.astype(np.float64)  # a row without variables is its constant (padding rows)
    live = np.nonzero(np.diff(objs.indptr) > 0)[0]
    if live.size:
        res = disp.solve_many(model, objs[live], consts[live], time_limit, float(solver.feasibility_tol))
        out[live] = [solve_value(r) for r in res]
    return out


def _round_down(values: np.ndarray, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """``values`` in ``dtype``, never rounded upwards (a lower bound stays a lower bound)."""
    t64 = torch.as_tensor(values, dtype=torch.float64)
    t = t64.to(dtype)
    up = t.double() > t64
    if up.any():
        t = torch.where(up, torch.nextafter(t, torch.full_like(t, -math.inf)), t)
    return t.to(device)
