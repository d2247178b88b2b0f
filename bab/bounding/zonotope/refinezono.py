"""RefineZono (Singh, Gehr, Pueschel, Vechev, ICLR 2019): DeepZ with early ReLU bounds refined
by LP (or MILP) over the network prefix.

Per domain, the inputs of the first ``layers`` ReLU nodes (those whose prefix the solvers can
encode: no Sigmoid/Tanh before them) are tightened in order. For each, the unstable and unfixed
neurons' bounds are minimised and maximised over the triangle LP (MILP while ``milp_layers`` is
not used up and the prefix has at most ``milp_max_unstable`` unstable ReLUs) built from the
current boxes (``encoders.encoding.encode`` up to that node), widened by the solver tolerance
(:func:`encoders.decide.prove_eps`), rounded outward to the working dtype and intersected with
the zonotope's box. DeepZ is then rerun from the refined boxes (its ReLU relaxations use them;
refined stable neurons become exact) and every box is intersected with the plain DeepZ boxes,
so refined boxes lie inside DeepZ's and the final bound is the better of the two. The solver
time per domain is capped by ``seconds`` (neurons left when it runs out keep their boxes).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from bab.bounding.base import Bounds, Domains
from bab.bounding.zonotope.deepz import Interval, Zonotope
from bab.bounding.zonotope.zono import down, up
from encoders.lp import solve_value
from onnx_models import layers as L
from onnx_models.network import Network


def refinable(network: Network, layers: int) -> list[int]:
    """The first ``layers`` ReLU nodes fed by a node whose prefix is piecewise linear."""
    out: list[int] = []
    for idx, node in enumerate(network.nodes):
        if isinstance(node.layer, (L.Sigmoid, L.Tanh)):
            break
        if isinstance(node.layer, L.ReLU) and node.inputs[0] >= 0 and len(out) < layers:
            out.append(idx)
    return out


class RefineZono:
    """RefineZono as a :class:`~bab.bounding.base.Bounder` (``refinezono``).

    Options: ``layers`` (ReLU layers refined), ``seconds`` (solver time per domain),
    ``milp_layers`` (how many of them use MILP, when the prefix has at most
    ``milp_max_unstable`` unstable ReLUs), ``config`` (a :class:`bab.config.SolverConfig`),
    plus :class:`~bab.bounding.zonotope.deepz.Zonotope`'s ``dtype``/``device``/``memory_elements``.
    """

    name = "refinezono"

    def __init__(self, layers: int = 2, seconds: float = 0.1, milp_layers: int = 1,
                 milp_max_unstable: int = 30, config: Any = None, **zono: Any) -> None:
        from bab.config import SolverConfig

        self.layers, self.seconds = layers, seconds
        self.milp_layers, self.milp_max_unstable = milp_layers, milp_max_unstable
        self.cfg = config or SolverConfig()
        self.zono = Zonotope(**zono)

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        """Lower and upper bounds of ``C f(x)`` plus every node's (refined) box."""
        base = self.zono.bound(network, domains)
        floor = dict(base.intermediate)
        targets = refinable(network, self.layers)
        if not targets or domains.size == 0:
            return base
        from encoders.decide import dispatcher_for
        from encoders.encoding import float64_network

        net64, disp = float64_network(network), dispatcher_for(self.cfg)
        spent = np.zeros(domains.size)
        current = base
        for layer_no, relu in enumerate(targets):
            j = network.nodes[relu].inputs[0]
            lo, hi = (t.clone() for t in floor[j])
            for i in range(domains.size):
                if spent[i] >= self.seconds:
                    continue
                t0 = time.monotonic()
                self._refine(net64, domains, i, relu, current.intermediate, (lo, hi),
                             layer_no < self.milp_layers, disp, self.seconds - spent[i])
                spent[i] += time.monotonic() - t0
            floor[j] = (torch.maximum(floor[j][0], lo), torch.minimum(floor[j][1], hi))
            current = self.zono.run(network, domains, floor)
            floor = {k: (torch.maximum(a, floor[k][0]), torch.minimum(b, floor[k][1]))
                     for k, (a, b) in current.intermediate.items()}
        lower = torch.maximum(current.lower, base.lower)
        upper = torch.minimum(current.upper, base.upper)
        return Bounds(lower=lower, upper=upper, intermediate=floor)

    def _refine(self, net64: Network, domains: Domains, i: int, relu: int, boxes: dict[int, Interval],
                out: Interval, milp: bool, disp: Any, seconds: float) -> None:
        """Tighten ``out`` (the boxes of the ReLU's input node, ``[N, *shape]``) for domain ``i``."""
        from encoders.decide import prove_eps
        from encoders.encoding import encode, resize
        from encoders.model import lower as lower_model

        j = net64.nodes[relu].inputs[0]
        lo, hi = out[0][i].reshape(-1), out[1][i].reshape(-1)
        phase = domains.phases.get(relu)
        free = torch.ones_like(lo, dtype=torch.bool) if phase is None else phase[i].reshape(-1) == 0
        sel = ((lo < 0) & (hi > 0) & free).nonzero().flatten().cpu().numpy()
        if sel.size == 0:
            return
        end = time.monotonic() + seconds
        inter = {k: (b[0][i].detach().cpu().double().numpy(), b[1][i].detach().cpu().double().numpy())
                 for k, b in boxes.items() if k < j}
        phases = {k: v[i].cpu().numpy() for k, v in domains.phases.items() if k < j}
        enc = encode(net64, domains.lower[i].cpu().double().numpy(), domains.upper[i].cpu().double().numpy(),
                     phases, inter, upto=j)
        if enc.empty:
            return
        use_milp = milp and enc.n_unstable <= self.milp_max_unstable
        model = lower_model(enc, "milp" if use_milp else "lp")
        A = resize(enc.output.rows(sel).A, model.n_vars)
        c = enc.output.c[sel]
        res = disp.solve_many(model, sp.vstack([A, -A]).tocsr(), np.concatenate([c, -c]),
                              max(0.0, end - time.monotonic()), float(self.cfg.feasibility_tol))
        vals = np.array([solve_value(r) for r in res])
        eps = prove_eps(self.cfg)
        k = sel.size
        vals = np.where(np.isfinite(vals), vals, -np.inf)  # no proven bound (or an empty domain): no change
        new_lo, new_hi = vals[:k] - eps * (1 + np.abs(vals[:k])), -vals[k:] + eps * (1 + np.abs(vals[k:]))
        new_lo, new_hi = np.nan_to_num(new_lo, nan=-np.inf), np.nan_to_num(new_hi, nan=np.inf)
        dtype, dev = lo.dtype, lo.device
        t_lo = down(torch.as_tensor(new_lo, dtype=torch.float64), dtype).to(dev)
        t_hi = up(torch.as_tensor(new_hi, dtype=torch.float64), dtype).to(dev)
        idx = torch.as_tensor(sel, device=dev)
        flat_lo, flat_hi = out[0][i].view(-1), out[1][i].view(-1)
        flat_lo[idx] = torch.maximum(flat_lo[idx], t_lo)
        flat_hi[idx] = torch.minimum(flat_hi[idx], t_hi)
