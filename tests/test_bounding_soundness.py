"""Soundness of every bounder on the shared VNN-COMP 2021 networks.

For each network (all but the two largest oval21 ones), 20 sub-domains come from its
properties' boxes: full boxes and random shrunk sub-boxes, some with random fixed ReLU phases
(taken from the activation pattern of a point inside, so the domain is never empty). Each
lower bound of ``C f(x)`` must be <= the smallest value seen on 2,000 sampled inputs plus 10
PGD-minimised inputs per sub-domain, keeping only inputs consistent with the fixed phases
(slack 1e-5 in float32). That full check is ``-m slow``; the default run keeps it quick with
one ACAS Xu network, no CIFAR network and 300 samples per sub-domain.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bab.bounding import BounderRefusal, Domains, UnsupportedLayerError, get_bounder
from onnx_models import layers as L

METHODS = ["ibp", "crown", "deeppoly", "fastlin", "alpha-crown", "symbolic", "crown-fwd",
           "crown-ibp", "zonotope", "refinezono", "wk", "krelu"]
SKIP = {"cifar_deep_kw.onnx", "cifar_wide_kw.onnx"}
FORWARD = {"symbolic", "crown-fwd"}
LP_BASED = {"refinezono", "krelu"}  # one LP per row and domain: only networks whose LP is quick
LP_MAX_NEURONS = 1000  # hidden neurons (outputs of ReLU nodes) of the networks they run on
SLOW_ON_CONV = {"zonotope"}  # dense generators of the first conv layer: conv nets only in the full check
PARTIAL_OPS = {"wk", "krelu"}  # methods whose paper covers only some ops: networks with others are skipped
N_DOMAINS, N_SAMPLES, N_PGD = 20, 2000, 10


def _networks(bench: Path, full: bool) -> list[tuple[Path, list[Path]]]:
    """(network, its properties) pairs from the instance lists."""
    from bab.bench import read_instances

    pairs: dict[Path, list[Path]] = {}
    for csv in sorted(bench.glob("*/*_instances.csv")):
        for inst in read_instances(csv):
            pairs.setdefault(inst.onnx_path, []).append(inst.vnnlib_path)
    out = [(n, sorted(set(p))) for n, p in sorted(pairs.items()) if n.name not in SKIP]
    if not full:  # the default run: one ACAS Xu network, no CIFAR network
        out = [(n, p) for n, p in out if ("ACASXU" not in n.name or "_1_1_" in n.name)
               and "cifar" not in n.name]
    return out


def _hidden(net) -> int:
    """Number of ReLU outputs (hidden neurons) of a network."""
    return sum(int(np.prod(n.out_shape)) for n in net.nodes if isinstance(n.layer, L.ReLU))


def _relu_inputs(net) -> dict[int, int]:
    """ReLU node index -> index of the node feeding it (-1: the input)."""
    return {i: n.inputs[0] for i, n in enumerate(net.nodes) if isinstance(n.layer, L.ReLU)}


def _pre_acts(net, x: torch.Tensor) -> dict[int, torch.Tensor]:
    values = net.forward_all(x)
    return {r: (x if j < 0 else values[j]).reshape(x.shape[0], -1) for r, j in _relu_inputs(net).items()}


def _domains(net, props: list[Path], rng: random.Random) -> tuple[Domains, list[dict[int, torch.Tensor]]]:
    """20 sub-domains: boxes (full or shrunk), clause rows, and sometimes fixed phases."""
    import vnnlib

    los, his, Cs, phase_list = [], [], [], []
    for k in range(N_DOMAINS):
        spec = vnnlib.parse_cached(rng.choice(props), net.n_inputs, net.n_outputs)
        region = rng.choice(spec.regions)
        rows = np.concatenate([c.C for c in region.clauses])[:9]
        lo, hi = region.lower.copy(), region.upper.copy()
        if k % 2:  # a random shrunk sub-box
            frac = rng.uniform(0.05, 0.5)
            start = lo + (hi - lo) * (1 - frac) * np.random.default_rng(k).random(lo.shape)
            lo, hi = start, np.minimum(start + frac * (hi - lo), hi)
        los.append(lo), his.append(hi)
        Cs.append(np.pad(rows, ((0, 9 - rows.shape[0]), (0, 0))))
    t = lambda a: torch.as_tensor(np.stack(a), dtype=torch.float32)
    dom = Domains(t(los), t(his), t(Cs))
    phases: dict[int, torch.Tensor] = {}
    centre = (dom.lower + dom.upper) / 2
    with torch.no_grad():
        pre = _pre_acts(net, centre)
    for r, z in pre.items():
        mask = torch.rand(z.shape, generator=torch.Generator().manual_seed(r)) < 0.3
        mask[: N_DOMAINS // 2] = False  # half of the domains keep every ReLU free
        sign = torch.where(z >= 0, 1, -1)
        phases[r] = torch.where(mask, sign, 0).reshape(z.shape[0], *net.nodes[r].out_shape).to(torch.int8)
    return Domains(dom.lower, dom.upper, dom.C, phases), []


def _consistent(net, x: torch.Tensor, dom: Domains, i: int) -> torch.Tensor:
    """Mask of inputs (for domain ``i``) whose activation pattern matches its fixed phases."""
    ok = torch.ones(x.shape[0], dtype=torch.bool)
    for r, z in _pre_acts(net, x).items():
        ph = dom.phases[r][i].reshape(-1)
        ok &= ((ph == 0) | ((ph > 0) & (z >= 0)) | ((ph < 0) & (z <= 0))).all(1)
    return ok


def _pgd(net, C: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """10 PGD-minimised inputs of ``min_rows C f(x)`` in the box."""
    x = lo + (hi - lo) * torch.rand(N_PGD, lo.numel())
    step = (hi - lo) / 10
    for it in range(30):
        x = x.detach().requires_grad_(True)
        obj = (net.forward(x) @ C.T).amin(1).sum()
        g, = torch.autograd.grad(obj, x)
        x = torch.minimum(torch.maximum(x - step * g.sign(), lo), hi)
        if it % 10 == 9:
            step = step / 2
    return x.detach()


def _observed(net, dom: Domains, n_samples: int) -> torch.Tensor:
    """Smallest observed ``C f(x)`` per domain and row over consistent samples (+inf if none)."""
    out = torch.full(dom.C.shape[:2], float("inf"))
    for i in range(dom.size):
        lo, hi = dom.lower[i], dom.upper[i]
        x = torch.cat([(lo + hi)[None] / 2, lo + (hi - lo) * torch.rand(n_samples, lo.numel()),
                       _pgd(net, dom.C[i], lo, hi)])
        with torch.no_grad():
            x = x[_consistent(net, x, dom, i)]
            if len(x):
                out[i] = (net.forward(x) @ dom.C[i].T).amin(0)
    return out


_CASES: dict[bool, list] = {}


def _cases(bench: Path, full: bool) -> list:
    """(name, network, domains, observed) per network; sampled once and shared by every method."""
    import onnx_models

    if full not in _CASES:
        torch.manual_seed(0)
        cases = []
        for path, props in _networks(bench, full):
            net = onnx_models.load(path)
            dom, _ = _domains(net, props, random.Random(path.name))
            cases.append((path.name, net, dom, _observed(net, dom, N_SAMPLES if full else 300)))
        _CASES[full] = cases
    return _CASES[full]


def _check(bench: Path, method: str, full: bool) -> None:
    for name, net, dom, observed in _cases(bench, full):
        if method in FORWARD and net.n_inputs > (1000 if full else 100):
            continue  # forward symbolic bounds are meant for low-dimensional inputs
        if method in LP_BASED and _hidden(net) > LP_MAX_NEURONS:
            continue
        if method in SLOW_ON_CONV and not full and any(isinstance(n.layer, L.Conv2d) for n in net.nodes):
            continue  # ~2 s per conv domain: the conv networks are checked under -m slow
        try:
            lower = get_bounder(method).bound(net, dom).lower.detach()
        except (UnsupportedLayerError, BounderRefusal):
            if method not in PARTIAL_OPS:
                raise
            continue
        bad = lower > observed + 1e-5
        assert not bad.any(), f"{method} on {name}: bound exceeds observed by {(lower - observed)[bad].max():.3g}"


@pytest.mark.parametrize("method", METHODS)
def test_sound_on_shared_networks(bench_dir: Path, method: str) -> None:
    _check(bench_dir, method, full=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_sound_on_every_shared_network(bench_dir: Path, method: str) -> None:
    _check(bench_dir, method, full=True)


@pytest.mark.parametrize("tighter, looser", [("crown", "ibp"), ("alpha-crown", "crown")])
def test_tightness_order_on_shared_networks(bench_dir: Path, tighter: str, looser: str) -> None:
    """On the same sub-domains, crown >= ibp and alpha-crown >= crown (up to 1e-6)."""
    for name, net, dom, _ in _cases(bench_dir, full=False):
        hi = get_bounder(tighter).bound(net, dom).lower.detach()
        lo = get_bounder(looser).bound(net, dom).lower.detach()
        finite = torch.isfinite(hi) & torch.isfinite(lo)
        assert torch.all(hi[finite] >= lo[finite] - 1e-6), f"{tighter} < {looser} on {name}"
