"""Solver methods on the shared VNN-COMP 2021 benchmarks (skipped when they are absent)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bab.config import SolverConfig
from encoders.decide import dispatcher_for
from encoders.encoding import float64_network
from encoders.lp import row_bounds, tighten

ROOT = Path(__file__).resolve().parents[1]


def test_milp_honours_the_deadline(bench_dir) -> None:
    """A MILP that cannot finish (256x6, eps 0.05) stops at the deadline: timeout/unknown."""
    d = bench_dir / "mnistfc"
    model, prop = d / "mnist-net_256x6.onnx", d / "prop_0_0.05.vnnlib"
    if not model.exists() or not prop.exists():
        pytest.skip("mnistfc 256x6 instance not present")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "bab", "verify", str(model), str(prop), "--method",
                          "milp", "--timeout", "5"], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=60, check=False)
    wall = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] in ("timeout", "unknown"), out.stdout
    assert wall < 7.0, (wall, out.stdout)


def _subdomains(net, spec, rng):
    """The property box, a random shrunken box, and that box with a few phases fixed."""
    from bab.bounding import Domains
    from bab.bounding.polyhedra.crown import Crown

    reg = spec.regions[0]
    C = np.concatenate([c.C for c in reg.clauses])
    w = reg.upper - reg.lower
    lo, hi = reg.lower + w * rng.uniform(0, 0.4, w.size), reg.upper - w * rng.uniform(0, 0.4, w.size)
    out = [(reg.lower, reg.upper, {}), (lo, hi, {})]
    b = Crown("crown").bound(net, Domains(torch.as_tensor(lo)[None], torch.as_tensor(hi)[None], torch.as_tensor(C)[None]))
    relu = next(i for i, n in enumerate(net.nodes) if n.layer.kind == "ReLU")
    plo, phi = (t[0].reshape(-1).numpy() for t in b.intermediate[net.nodes[relu].inputs[0]])
    unstable = np.nonzero((plo < 0) & (phi > 0))[0]
    x0 = torch.as_tensor(rng.uniform(lo, hi))[None]  # phases of a point: a non-empty domain
    pre = net.forward_all(x0)[net.nodes[relu].inputs[0]][0].numpy()
    phase = np.zeros(plo.size)
    phase[unstable[:6]] = np.where(pre[unstable[:6]] > 0, 1, -1)
    out.append((lo, hi, {relu: phase}))
    return C, out


def test_lp_at_least_crown_and_lp_full_at_least_lp(bench_dir) -> None:
    """Same intermediate bounds: LP >= CROWN per row; LP-tightened bounds: lp-full >= lp."""
    import onnx_models
    import vnnlib
    from bab.bounding import Domains
    from bab.bounding.polyhedra.crown import Crown

    d = bench_dir / "mnistfc"
    if not (d / "mnist-net_256x2.onnx").exists():
        pytest.skip("mnistfc 256x2 not present")
    net = float64_network(onnx_models.load(d / "mnist-net_256x2.onnx"))
    cfg = SolverConfig()
    disp = dispatcher_for(cfg)
    rng = np.random.default_rng(0)
    checked = 0
    for prop in ("prop_0_0.03", "prop_1_0.05"):
        spec = vnnlib.parse(d / f"{prop}.vnnlib", n_inputs=784, n_outputs=10)
        C, doms = _subdomains(net, spec, rng)
        for lo, hi, phases in doms if prop == "prop_0_0.03" else doms[1:]:
            ph = {k: torch.as_tensor(v).reshape(1, -1) for k, v in phases.items()}
            b = Crown("crown").bound(net, Domains(torch.as_tensor(lo)[None], torch.as_tensor(hi)[None],
                                                  torch.as_tensor(C)[None], ph))
            inter = {k: (l[0].reshape(-1).numpy(), h[0].reshape(-1).numpy()) for k, (l, h) in b.intermediate.items()}
            crown = b.lower[0].numpy()
            lp = row_bounds(net, lo, hi, C, cfg, disp, 60, phases, inter)
            assert np.all(np.isfinite(lp)), (prop, checked, lp)
            assert np.all(lp >= crown - 1e-6), (prop, lp - crown)
            full = tighten(net, lo, hi, inter, cfg, disp, 60, phases)
            lpf = row_bounds(net, lo, hi, C, cfg, disp, 60, phases, full)
            assert np.all(lpf >= lp - 1e-6), (prop, lpf - lp)
            checked += 1
    assert checked == 5
