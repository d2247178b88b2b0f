"""LMIVerify: the quadratic-constraint / S-procedure LMI of Fazlyab, Morari, Pappas (IEEE TAC
2020, "DeepSDP") as a Bounder.

The input set and every ReLU layer are described by quadratic constraints (QCs) on
``v = (1, x, z)``; the S-procedure asks for multipliers making

  M_out(t) - M_in(Gamma) - M_mid(lambda, nu, eta, T, ...)  PSD,

which certifies ``c·f(x) >= t``. ``t`` enters linearly, so it is maximised directly (no
bisection). QCs used:

* input box ``(x - l)(u - x) >= 0`` (diagonal Gamma >= 0);
* per unstable neuron the ReLU QC: ``z (z - s) = 0`` (free lambda), ``z - s >= 0`` (nu >= 0),
  ``z >= 0`` (eta >= 0);
* the repeated-nonlinearity (slope-restricted in [0, 1]) QC between pairs of unstable
  neurons of one layer: ``(z_i - z_j)((s_i - s_j) - (z_i - z_j)) >= 0`` (T's off-diagonal
  multipliers >= 0; at most ``max_pairs`` pairs per layer, nearest indices first);
* the interval QCs from the CROWN pre-activation bounds: ``(s - l)(u - s) >= 0`` and
  ``z (u' - z) >= 0``; stably active/inactive neurons are exact (``z = s`` / ``z = 0``).

Its QC set contains ``sdp``'s, so in exact arithmetic ``lmi >= sdp``. Layer support, limits,
solver choice and the sound recovery are shared with :mod:`bab.bounding.sdp.sdpverify`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bab.bounding.sdp.sdpverify import Lifted, QcList, SdpVerify, make_rules, sdp_constraints


def _pairs(k: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``i < j`` of ``k`` neurons, nearest first, at most ``limit``."""
    out_i, out_j = [], []
    for gap in range(1, k):
        i = np.arange(k - gap)
        out_i.append(i)
        out_j.append(i + gap)
        if sum(len(a) for a in out_i) >= limit:
            break
    if not out_i:
        return np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(out_i)[:limit], np.concatenate(out_j)[:limit]


def lmi_constraints(lf: Lifted, max_pairs: int) -> QcList:
    """Fazlyab et al.'s QCs (see the module docstring)."""
    qc = sdp_constraints(lf)
    for ly in lf.layers:
        U = ly.unstable
        a, aa = ly.pre[U], ly.pre_abs[U]
        lo, hi = ly.lo[U], ly.hi[U]
        qc.add(a - qc.const(lo), qc.const(hi) - a, aa + qc.const(np.abs(lo)),
               aa + qc.const(np.abs(hi)))  # (s - l)(u - s) >= 0
        i, j = _pairs(U.size, max_pairs)
        if i.size:
            Z = qc.unit(ly.pos)
            dz, dza = Z[i] - Z[j], Z[i] + Z[j]
            qc.add(dz, (a[i] - a[j]) - dz, dza, aa[i] + aa[j] + dza)
    return qc


class LmiVerify(SdpVerify):
    """DeepSDP-style LMI bounder; same options as :class:`SdpVerify` plus ``max_pairs``."""

    name = "lmi"

    def __init__(self, max_hidden: int = 200, max_dim: int = 400, solver: str | None = None,
                 solver_opts: dict[str, Any] | None = None, ipm_max_dim: int = 40,
                 max_pairs: int = 500) -> None:
        super().__init__(max_hidden, max_dim, solver, solver_opts, ipm_max_dim)
        self.max_pairs = max_pairs
        self.rules = make_rules(self.name)

    def constraints(self, lf: Lifted) -> QcList:  # type: ignore[override]
        """QCs of one lifted domain."""
        return lmi_constraints(lf, self.max_pairs)
