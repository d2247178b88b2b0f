"""Batched regions (``bab.batch_regions``): every input region of a property in one search.

A property of 50 disjoint input boxes on a one-input network with wide layers (nn4sys-like) is
decided by one batched search with far fewer bound calls than the one-search-per-region loop;
the two modes agree on random multi-region properties with different clause structures, and
with MILP (an exact leaf solve per region and clause) on tiny networks. The falsifier's batched
PGD finds the same candidates as its per-region loop. A checkpointed batched search stopped
partway resumes to the same verdict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import bab
from bab.config import BabConfig, Config, FalsifyConfig, VerifyConfig
from bab.region_batch import group_regions, stack_regions
from bab.result import Status
from tests.builders import random_mlp
from vnnlib.spec import Ball, Clause, Region, Spec


def _cfg(batch: bool, **bab_kw) -> Config:
    # no falsification phase: the search itself must find the counterexamples
    return Config(verify=VerifyConfig(method="bab", threads=1), falsify=FalsifyConfig(enabled=False),
                  bab=BabConfig(batch_regions=batch, **bab_kw))


def _run(path: Path, spec: Spec, batch: bool, **bab_kw):
    res = bab.verify(path, spec, _cfg(batch, **bab_kw), timeout=120)
    return res, res.stats.extra["bab"]


def _witness_ok(net, spec: Spec, res) -> bool:
    """The counterexample lies in the region it names and violates one of its clauses."""
    cex = res.counterexample
    y = net.evaluate(np.asarray(cex.x, np.float64)[None])[0]
    region = spec.regions[cex.region]
    return region.contains(cex.x, 1e-6) and any(c.holds(y, 1e-5) for c in region.clauses)


def _grid_min(net, lo: np.ndarray, hi: np.ndarray, rows: np.ndarray, n: int = 2001) -> np.ndarray:
    """Dense-grid minima of every row of ``rows @ f(x)`` over a box of one or two inputs."""
    axes = [np.linspace(a, b, n if len(lo) == 1 else 121) for a, b in zip(lo, hi)]
    x = np.stack([g.ravel() for g in np.meshgrid(*axes)], 1)
    return (net.evaluate(x) @ rows.T).min(0)


# ------------------------------------------------------------------------ 50 disjoint boxes


@pytest.fixture(scope="module")
def boxes50(tmp_path_factory):
    """A 1-128-128-1 network, 50 disjoint boxes over [-5, 5], and each box's dense-grid minimum."""
    import onnx_models

    path = random_mlp(tmp_path_factory.mktemp("b50") / "wide.onnx", [1, 128, 128, 1], seed=2)
    net = onnx_models.load(path)
    edges = np.linspace(-5.0, 5.0, 101)
    boxes = [(edges[2 * i], edges[2 * i + 1]) for i in range(50)]
    mins = [float(_grid_min(net, np.array([lo]), np.array([hi]), np.array([[1.0]]))[0]) for lo, hi in boxes]
    return path, net, boxes, mins


def _boxes_spec(boxes, thresholds) -> Spec:
    """Regions ``x in box_i``, unsafe when ``y <= t_i``."""
    return Spec(tuple(Region(np.array([lo]), np.array([hi]), (Clause(np.array([[1.0]]), np.array([t])),))
                      for (lo, hi), t in zip(boxes, thresholds)), 1, 1)


def test_fifty_boxes_unsat_in_one_batched_search(boxes50) -> None:
    """Each box's threshold sits 5e-4 under its minimum (the grid error is below 1e-5): unsat,
    and the batched search needs a tenth of the loop's bound calls or fewer."""
    path, _, boxes, mins = boxes50
    spec = _boxes_spec(boxes, [m - 5e-4 for m in mins])
    on, st_on = _run(path, spec, True)
    off, st_off = _run(path, spec, False)
    assert on.status is Status.UNSAT and off.status is Status.UNSAT, (on.reason, off.reason)
    assert st_on.extra["regions"] == 50 and st_on.extra["region_groups"] == 1
    assert st_off.extra["regions"] == 50 and st_off.extra["region_groups"] == 50
    assert st_off.extra["bound_calls"] >= 50  # at least one root pass per region
    assert 10 * st_on.extra["bound_calls"] <= st_off.extra["bound_calls"], (st_on.extra, st_off.extra)
    assert st_on.domains_visited >= 50 and st_on.iterations >= 1  # the boxes did need splitting


def test_fifty_boxes_sat_witness_replayed(boxes50) -> None:
    """Only box 37's threshold lies above its minimum: both modes find a witness there."""
    path, net, boxes, mins = boxes50
    spec = _boxes_spec(boxes, [m - 5e-4 if i != 37 else m + 1e-3 for i, m in enumerate(mins)])
    on, st_on = _run(path, spec, True)
    off, st_off = _run(path, spec, False)
    for res in (on, off):
        assert res.status is Status.SAT and res.counterexample.region == 37
        assert _witness_ok(net, spec, res)
    assert st_on.extra["bound_calls"] < st_off.extra["bound_calls"]


# ------------------------------------------------------------- random multi-region properties


def _random_property(net, rng: np.random.Generator, n_in: int, n_out: int, sat: bool) -> Spec:
    """3-5 regions with 1-3 clauses of 1-2 rows each; every row's threshold sits under its grid
    minimum by 2-10% of the output range (infeasible), except, with ``sat``, one clause of the
    last region whose rows sit above it by as much."""
    regions = []
    n_reg = int(rng.integers(3, 6))
    for r in range(n_reg):
        lo = rng.uniform(-1, 0.5, n_in)
        hi = lo + rng.uniform(0.2, 0.8, n_in)
        clauses = []
        n_cl = int(rng.integers(1, 4))
        for k in range(n_cl):
            rows = rng.normal(0, 1, (int(rng.integers(1, 3)), n_out))
            m = _grid_min(net, lo, hi, rows)
            span = np.ptp(net.evaluate(np.stack([lo, hi, (lo + hi) / 2])) @ rows.T, 0) + 0.1
            sign = 1.0 if sat and r == n_reg - 1 and k == n_cl - 1 else -1.0
            clauses.append(Clause(rows, m + sign * span * rng.uniform(0.02, 0.1, len(m))))
        regions.append(Region(lo, hi, tuple(clauses)))
    return Spec(tuple(regions), n_in, n_out)


def _milp_verdict(net, spec: Spec) -> Status:
    """``sat`` when an exact MILP finds a point for some (region, clause), else ``unsat``."""
    from encoders.decide import decide_leaf

    for region in spec.regions:
        for clause in region.clauses:
            res = decide_leaf(net, region.lower, region.upper, clause.C, clause.d, time_limit=30)
            assert res.status in ("feasible", "infeasible"), res.reason
            if res.status == "feasible":
                return Status.SAT
    return Status.UNSAT


@pytest.mark.parametrize("seed", range(8))
def test_random_properties_agree_with_the_loop_and_milp(tmp_path, seed) -> None:
    import onnx_models

    rng = np.random.default_rng(100 + seed)
    n_in, n_out = 1 + seed % 2, 2 + seed % 2
    path = random_mlp(tmp_path / f"r{seed}.onnx", [n_in, 12, 12, n_out], seed=seed)
    net = onnx_models.load(path)
    spec = _random_property(net, rng, n_in, n_out, sat=seed % 2 == 1)
    on, st_on = _run(path, spec, True, input_branching="widest" if seed % 3 == 0 else "auto")
    off, _ = _run(path, spec, False, input_branching="widest" if seed % 3 == 0 else "auto")
    exact = _milp_verdict(net, spec)
    assert on.status is exact and off.status is exact, (seed, on.status, off.status, exact, on.reason)
    assert st_on.extra["region_groups"] == 1
    for res in (on, off):
        if res.status is Status.SAT:
            assert _witness_ok(net, spec, res)


@pytest.mark.parametrize("seed", [0, 2, 3, 7])
def test_relu_split_batched_roots_agree_with_the_loop_and_milp(tmp_path, seed) -> None:
    """ReLU-split BaB (forced): a root per (region, clause), seeded by one alpha-CROWN pass over
    all region boxes; verdicts as the per-region loop's and MILP's, fewer bound calls."""
    import onnx_models

    rng = np.random.default_rng(200 + seed)
    n_in, n_out = 1 + seed % 2, 2 + seed % 2
    path = random_mlp(tmp_path / f"q{seed}.onnx", [n_in, 12, 12, n_out], seed=seed)
    net = onnx_models.load(path)
    spec = _random_property(net, rng, n_in, n_out, sat=seed % 2 == 1)
    on, st_on = _run(path, spec, True, input_split_threshold=0)
    off, st_off = _run(path, spec, False, input_split_threshold=0)
    exact = _milp_verdict(net, spec)
    assert on.status is exact and off.status is exact, (seed, on.status, off.status, exact, on.reason)
    assert st_on.strategy == "relu-split" and st_on.extra["region_groups"] == 1
    assert st_on.extra["bound_calls"] < st_off.extra["bound_calls"]
    for res in (on, off):
        if res.status is Status.SAT:
            assert _witness_ok(net, spec, res)


@pytest.mark.parametrize("threshold", [20, 0])
def test_l2_ball_regions_batched(tmp_path, threshold) -> None:
    """Regions with ℓ2 balls (one centre and radius per region) in one batch, input or ReLU
    splits: the verdict of the per-region loop, witnesses inside their ball."""
    import onnx_models

    path = random_mlp(tmp_path / "l2.onnx", [2, 10, 10, 2], seed=7)
    net = onnx_models.load(path)
    rows = np.array([[1.0, -1.0]])
    for shift, expect in ((-0.05, Status.UNSAT), (0.3, Status.SAT)):
        regions = []
        for c in ([0.2, 0.1], [-0.5, 0.4], [0.6, -0.6]):
            ball = Ball(np.array(c), 0.25, "2")
            x = np.asarray(c) + 0.25 * np.stack([np.cos(t := np.linspace(0, 2 * np.pi, 4001)), np.sin(t)], 1)
            x = np.concatenate([x * s + np.asarray(c) * (1 - s) for s in np.linspace(0, 1, 41)])
            m = float((net.evaluate(x) @ rows.T).min())
            regions.append(Region.with_ball(ball, (Clause(rows, np.array([m + shift])),)))
        spec = Spec(tuple(regions), 2, 2)
        on, st_on = _run(path, spec, True, input_split_threshold=threshold)
        off, _ = _run(path, spec, False, input_split_threshold=threshold)
        assert on.status is expect and off.status is expect, (shift, on.reason, off.reason)
        assert st_on.extra["region_groups"] == 1
        if expect is Status.SAT:
            assert _witness_ok(net, spec, on)


def test_a_clause_without_rows_and_padded_rows(tmp_path) -> None:
    """Regions of different shapes in one batch: a region whose clause has no rows (it always
    holds: sat at its box centre), next to regions with more rows and clauses."""
    import onnx_models

    path = random_mlp(tmp_path / "p.onnx", [2, 8, 2], seed=4)
    net = onnx_models.load(path)
    far = Clause(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([-100.0, -100.0]))
    regions = (Region(np.zeros(2), np.ones(2), (far, Clause(np.array([[1.0, -1.0]]), np.array([-100.0])))),
               Region(-np.ones(2), np.zeros(2), (Clause(np.zeros((0, 2)), np.zeros(0)),)))
    spec = Spec(regions, 2, 2)
    res, stats = _run(path, spec, True)
    assert res.status is Status.SAT and res.counterexample.region == 1 and _witness_ok(net, spec, res)
    res, _ = _run(path, Spec(regions[:1] * 3, 2, 2), True)
    assert res.status is Status.UNSAT


def test_stack_regions_pads_rows_and_clauses() -> None:
    c1 = Clause(np.array([[1.0, 0.0]]), np.array([0.5]))
    c2 = Clause(np.array([[0.0, 1.0], [1.0, 1.0]]), np.array([1.0, 2.0]))
    st = stack_regions([Region(np.zeros(1), np.ones(1), (c1, c2)), Region(np.ones(1), 2 * np.ones(1), (c1,))],
                       2, dtype=torch.float64)
    assert st.C.shape == (2, 3, 2) and st.R.shape == (2, 3, 2)
    assert st.d[0].tolist() == [0.5, 1.0, 2.0] and st.d[1, 0] == 0.5 and torch.isinf(st.d[1, 1:]).all()
    assert st.R[0].tolist() == [[True, False], [False, True], [False, True]]
    assert st.clause_ok.tolist() == [[True, True], [True, False]] and not st.rowless.any()
    ball = Region.with_ball(Ball(np.zeros(1), 0.5, "2"), (c1,))
    assert group_regions([ball, Region(np.zeros(1), np.ones(1), (c1,)), ball]) == [[0, 2], [1]]
    assert group_regions([ball, ball], batch=False) == [[0], [1]]


def test_batched_falsifier_pgd_matches_the_per_region_loop(tmp_path) -> None:
    """The falsifier's batched PGD (box regions in one loop; a ball region on its own) starts
    from the same points and takes the same steps as one PGD per region: the same candidates."""
    import onnx_models
    from bab.config import FalsifyConfig
    from bab.falsify import Falsifier

    path = random_mlp(tmp_path / "f.onnx", [2, 16, 16, 3], seed=3)
    net = onnx_models.load(path)
    spec = _random_property(net, np.random.default_rng(3), 2, 3, sat=True)
    ball = Region.with_ball(Ball(np.zeros(2), 0.3, "2"), spec.regions[0].clauses)
    regions = (spec.regions[0], ball) + spec.regions[1:]
    cfg = FalsifyConfig(random_samples=16, pgd_steps=30, max_batch=40)  # several batched groups
    per_region = list(Falsifier(net, cfg, seed=1).run(regions, batch=False))
    batched = list(Falsifier(net, cfg, seed=1).run(regions, batch=True))
    key = lambda c: (c.region, c.clause, c.margin)
    assert len(per_region) == len(batched) > 0
    for a, b in zip(sorted(per_region, key=key), sorted(batched, key=key)):
        assert (a.region, a.clause) == (b.region, b.clause)
        assert np.allclose(a.x, b.x, atol=1e-5) and abs(a.margin - b.margin) < 1e-4


# -------------------------------------------------------------------------- checkpoints


def test_checkpointed_batched_search_resumes(tmp_path) -> None:
    """A batched multi-region search stopped after a few checkpoints resumes to the same verdict,
    and before + after add up to at most 1.2x the domains of an uninterrupted run."""
    from bab import config as C
    from bab.checkpoint import open_checkpoint, verify_resumable
    from tests.test_checkpoint import Stopped, StopAfter

    path = random_mlp(tmp_path / "ck.onnx", [1, 64, 64, 1], seed=2)
    import onnx_models

    net = onnx_models.load(path)
    edges = np.linspace(-3.0, 3.0, 21)
    parts = []
    for i in range(10):
        lo, hi = edges[2 * i], edges[2 * i + 1]
        t = float(_grid_min(net, np.array([lo]), np.array([hi]), np.array([[1.0]]))[0]) - 2e-4
        parts.append(f"(and (>= X_0 {float(lo)!r}) (<= X_0 {float(hi)!r}) (<= Y_0 {t!r}))")
    prop = tmp_path / "ck.vnnlib"
    prop.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (or " + " ".join(parts) + "))\n")
    cfg = C.load(None, [{"verify": {"method": "bab", "threads": 1}, "falsify": {"enabled": False},
                         "bab": {"batch_size": 4, "input_branching": "widest"}}])
    full = verify_resumable(path, prop, cfg, open_checkpoint(tmp_path / "full.pt", path, prop, cfg, 60.0), 120)
    n_full = full.stats.extra["bab"].domains_visited
    assert full.status is Status.UNSAT and full.stats.extra["bab"].extra["regions"] == 10
    assert full.stats.extra["bab"].iterations >= 6, n_full

    part = open_checkpoint(tmp_path / "part.pt", path, prop, cfg, 0.0)
    part.__class__ = StopAfter
    part.limit = 3  # saves (one per engine step) before the stop
    with pytest.raises(Stopped):
        verify_resumable(path, prop, cfg, part, 120)
    state = torch.load(tmp_path / "part.pt", weights_only=False)
    saved = state["engines"]["widest"]["stats"]["domains_visited"]
    assert state["region"] == 0 and 0 < saved < n_full
    assert len(state["engines"]["widest"]["store"]["batch"]["region"]) > 0
    again = open_checkpoint(tmp_path / "part.pt", path, prop, cfg, 60.0, resume=True)
    res = verify_resumable(path, prop, cfg, again, 120)
    assert res.status is Status.UNSAT
    assert saved < res.stats.extra["bab"].domains_visited <= 1.2 * n_full
