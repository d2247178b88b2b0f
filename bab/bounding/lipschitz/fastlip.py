"""Fast-Lip (Weng et al., ICML 2018): local Lipschitz bounds from activation-pattern bounds.

The CROWN intermediate bounds on the box fix each activation's derivative interval; the
interval adjoint of each margin is pushed from the output to the input
(:func:`~bab.bounding.lipschitz.jacobian.adjoint_bounds`), giving elementwise Jacobian bounds
``[J_lo, J_hi]``. As a Bounder on a box with centre ``x0`` and radii ``r``:
``g(x) >= g(x0) - Σ_i max(|J_lo|, |J_hi|)_i r_i`` (``g(x0)`` in float64, minus a float slack);
on an ℓ2/ℓ1 ball ``∩`` box, expanded at the ball's centre, also ``g(x0) - ‖max|J|‖_q eps``.

Fixed ReLU phases are honoured: each group of domains with the same fixed phases is also
bounded through ``g~`` (:func:`~bab.bounding.lipschitz.jacobian.phase_network`: fixed neurons
have derivative exactly 1 or 0 on the whole box), and the tighter of the two bounds is kept.
"""

from __future__ import annotations

from typing import Any

import torch

from bab.bounding.base import Bounds, Domains
from bab.bounding.lipschitz import jacobian as jac
from bab.bounding.polyhedra.crown import prepare
from onnx_models.network import Network

Interval = jac.Interval


def crown_intermediate(network: Network, lower: torch.Tensor, upper: torch.Tensor,
                       ball: dict | None = None) -> dict[int, Interval]:
    """Every node's interval over the input sets from the CROWN bounder (no fixed phases;
    ``ball``: ``Domains`` ball keywords, the set is then ``ball ∩ box``)."""
    from bab.bounding import get_bounder

    n_out = network.n_outputs
    C = torch.zeros(lower.shape[0], 1, n_out, dtype=lower.dtype, device=lower.device)
    return get_bounder("crown").bound(network, Domains(lower, upper, C, **(ball or {}))).intermediate


class FastLip:
    """Fast-Lip as a :class:`~bab.bounding.base.Bounder` (float64 inside).

    Input sets: boxes, and ℓ2/ℓ1 balls (intersected with their box) exactly: the bound is
    expanded at the ball's centre and keeps the better of the box term and ``‖|J|‖_q eps``.
    """

    name = "fastlip"
    input_sets = {"inf": "exact", "2": "exact", "1": "exact"}

    def jacobian(self, prob: jac.JacProblem) -> Interval:
        """Elementwise bounds ``[N, M, *input_shape]`` of each margin's Jacobian."""
        return jac.adjoint_bounds(prob)[-1]

    def problem(self, network: Network, lower: torch.Tensor, upper: torch.Tensor,
                C: torch.Tensor, ball: dict | None = None) -> jac.JacProblem:
        """CROWN intermediate bounds on the input sets, then the Jacobian problem."""
        jac.check(network)
        return jac.build_problem(network, lower, upper, C, crown_intermediate(network, lower, upper, ball))

    def sets(self, network: Network, dom: Domains) -> tuple[Interval, dict[int, Interval]]:
        """Bounds ``[N, M]`` of ``C f`` over the input sets (float64 network and domains) and
        the intermediate intervals."""
        prob = self.problem(network, dom.lower, dom.upper, dom.C, dom.ball_of())
        return jac.set_bounds(network, dom, self.jacobian(prob)), prob.values

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        """Lower and upper bounds of ``C f(x)`` over each domain, plus CROWN's intervals."""
        jac.check(network)
        net, dom = prepare(network, domains, torch.float64)
        if dom.has_ball and not jac.ball_ok(dom):  # a centre outside its box: use the box only
            dom = Domains(dom.lower, dom.upper, dom.C, dom.phases)
        with torch.no_grad():
            (lo, hi), values = self.sets(net, dom)
            values = {k: (a.clone(), b.clone()) for k, (a, b) in values.items()}
            for rows, phase in jac.phase_groups(dom.phases, dom.size):
                pnet, where = jac.phase_network(net, phase, dom.lower[rows], dom.upper[rows])
                sub = Domains(dom.lower[rows], dom.upper[rows], dom.C[rows], **dom.ball_of(rows))
                (plo, phi), pvals = self.sets(pnet, sub)
                lo[rows], hi[rows] = torch.maximum(lo[rows], plo), torch.minimum(hi[rows], phi)
                for k, (a, b) in values.items():  # both enclose g on the sub-domain
                    pa, pb = pvals[where[k]]
                    a[rows], b[rows] = torch.maximum(a[rows], pa), torch.minimum(b[rows], pb)
        dt = domains.lower.dtype
        lower, upper = jac.outward(lo, hi, dt)
        inter = {k: jac.outward(a, b, dt) for k, (a, b) in values.items()}
        return Bounds(lower=lower, upper=upper, intermediate=inter)
