"""One certification per (model, method, point), plus the per-model ``clean`` and ``pgd`` rows.

A point is certified when ``bab.api.verify`` answers ``unsat`` on the robustness property of
its ball: one region (the box), one clause per other class ``j``: ``y_label - y_j <= 0``
(the unsafe set). Nothing here prints or writes files.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from vnnlib.spec import Clause, Region, Spec

NA, MISCLASSIFIED, ERROR = "n/a", "misclassified", "error"
PGD_STEPS, PGD_RESTARTS = 40, 4


@dataclass(frozen=True)
class PointRow:
    """One line of ``points.csv``. ``status``: a verify word (unsat/sat/unknown/timeout),
    ``n/a``, ``error`` or ``misclassified``; for ``clean``: correct/misclassified; for
    ``pgd``: robust/attacked/misclassified."""

    model: str
    method: str
    point: int
    label: int
    status: str
    certified: bool
    time_s: float
    reason: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        """``(model, method, point)``: what a resumed run skips."""
        return self.model, self.method, self.point


@dataclass(frozen=True)
class PointTask:
    """What a worker needs to certify one point."""

    model: str
    method: str
    point: int
    label: int
    lower: np.ndarray
    upper: np.ndarray
    timeout: float
    ball: Any = None  # vnnlib.spec.Ball for l2/l1 (then lower/upper are its hull in the clip box)


def robustness_spec(lower: np.ndarray, upper: np.ndarray, label: int, n_outputs: int,
                    ball: Any = None) -> Spec:
    """The unsafe set of a ball: some other class scores at least as high as ``label``
    (l-inf: the box; l2/l1: ``ball`` intersected with the box, its hull)."""
    clauses = []
    for j in range(n_outputs):
        if j == label:
            continue
        row = np.zeros((1, n_outputs))
        row[0, label], row[0, j] = 1.0, -1.0
        clauses.append(Clause(row, np.zeros(1)))
    region = Region(np.asarray(lower, np.float64), np.asarray(upper, np.float64), tuple(clauses), ball)
    return Spec((region,), len(region.lower), n_outputs)


def method_config(base: Any, method: str, timeout: float, falsify: bool = False) -> Any:
    """``base`` with the method, the timeout, one torch thread and falsification set."""
    verify = dataclasses.replace(base.verify, method=method, timeout=float(timeout), threads=1)
    return dataclasses.replace(base, verify=verify,
                               falsify=dataclasses.replace(base.falsify, enabled=falsify))


def verify(*args: Any, **kwargs: Any) -> Any:
    """``bab.api.verify`` (imported on first use; tests count calls through this name)."""
    from bab.api import verify as api_verify

    return api_verify(*args, **kwargs)


def certify_point(network: Any, reference: Any, task: PointTask, cfg: Any) -> PointRow:
    """Run ``verify`` on one point; bounder refusals and unsupported layers give ``n/a``."""
    from bab.bounding import BounderRefusal, UnsupportedLayerError

    spec = robustness_spec(task.lower, task.upper, task.label, network.n_outputs, task.ball)
    start = time.perf_counter()
    try:
        res = verify(network, spec, cfg, task.timeout, reference=reference)
    except (BounderRefusal, UnsupportedLayerError, ImportError) as exc:
        return _row(task, NA, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - one failing point must not end the comparison
        return _row(task, ERROR, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    refused = res.stats.extra.get("refused") if res.status.value == "unknown" else None
    if refused:  # a one-pass bounder declined the instance or a layer: not the method's failure
        return _row(task, NA, time.perf_counter() - start, refused)
    return _row(task, res.status.value, time.perf_counter() - start, res.reason)


def _row(task: PointTask, status: str, elapsed: float, reason: str) -> PointRow:
    return PointRow(task.model, task.method, task.point, task.label, status, status == "unsat",
                    elapsed, " ".join(str(reason).split()))


def probe(network: Any, method: str) -> str | None:
    """Why ``method`` cannot run on ``network`` at all (``None``: it can).

    Cheap, static checks only: the method's module (and bounder) must import, and a solver
    method must support every layer kind (its module's ``UNSUPPORTED``). A bounder that
    refuses the network (``UnsupportedLayerError`` / ``BounderRefusal``) is seen per point, by
    :func:`certify_point`, within the point's timeout.
    """
    from bab import taxonomy
    from bab.methods import get_method

    row = taxonomy.info(method)
    try:
        get_method(method)
        module = importlib.import_module(row.entry.split(":")[0])
    except Exception as exc:  # noqa: BLE001 - a module being written may not import yet
        return _import_failure(exc)
    unsupported = getattr(module, "UNSUPPORTED", ())
    bad = sorted({n.layer.kind for n in network.nodes if isinstance(n.layer, tuple(unsupported))})
    if bad:
        return f"{', '.join(bad)} not supported by {method}"
    if row.bounder is None:
        return None
    return _probe_bounder(method)


def _import_failure(exc: Exception) -> str:
    """A short reason for a method whose code does not import."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"module {exc.name} not available"
    return f"does not import: {type(exc).__name__}: {exc}"


def _probe_bounder(method: str) -> str | None:
    """The bounder's code must import (bounding itself happens per point, under the timeout)."""
    from bab.bounding import get_bounder

    try:
        get_bounder(method)
    except Exception as exc:  # noqa: BLE001
        return _import_failure(exc)
    return None


def predictions(reference: Any, x: np.ndarray) -> np.ndarray:
    """Predicted classes of ``x`` [N, n_in] on the reference (ties: lowest index)."""
    return np.argmax(reference.run(x), axis=1)


def clean_rows(model: str, reference: Any, x: np.ndarray, y: np.ndarray,
               indices: list[int]) -> list[PointRow]:
    """``clean`` rows: is each point classified as its label?"""
    if not indices:
        return []
    start = time.perf_counter()
    pred = predictions(reference, x[indices])
    each = (time.perf_counter() - start) / len(indices)
    return [PointRow(model, "clean", i, int(y[i]), "correct" if p == y[i] else MISCLASSIFIED,
                     bool(p == y[i]), each, "" if p == y[i] else f"predicted {int(p)}")
            for i, p in zip(indices, pred.tolist())]


def pgd_rows(model: str, network: Any, reference: Any, x: np.ndarray, y: np.ndarray,
             indices: list[int], correct: dict[int, bool], eps: float,
             clip: tuple[float, float] | None, seed: int = 0, norm: str = "inf") -> list[PointRow]:
    """``pgd`` rows: robust unless a PGD point in the ball, replayed on the reference, is
    classified otherwise (an upper bound on certified accuracy). For l2/l1 the attack runs in
    the box hull and the replay projects each point onto the ball first."""
    from bab.compare.data import ball, lp_ball
    from bab.replay import Replayer

    run = [i for i in indices if correct[i]]
    rows = {i: PointRow(model, "pgd", i, int(y[i]), MISCLASSIFIED, False, 0.0) for i in indices if not correct[i]}
    if run:
        start = time.perf_counter()
        boxes = [ball(x[i], eps, clip) for i in run]
        lo = np.stack([b[0] for b in boxes])
        hi = np.stack([b[1] for b in boxes])
        adv = pgd_attack(network, lo, hi, y[run], seed)
        each = (time.perf_counter() - start) / len(run)
        dtype = getattr(network.io, "input_dtype", "float32")
        for k, i in enumerate(run):
            spec = robustness_spec(lo[k], hi[k], int(y[i]), network.n_outputs, lp_ball(x[i], eps, norm))
            cex = Replayer(reference, spec.regions, dtype).check(adv[k], 0)
            status = "robust" if cex is None else "attacked"
            why = "" if cex is None else f"classified {int(np.argmax(cex.y))}"
            rows[i] = PointRow(model, "pgd", i, int(y[i]), status, cex is None, each, why)
    return [rows[i] for i in indices]


def pgd_attack(network: Any, lo: np.ndarray, hi: np.ndarray, labels: np.ndarray,
               seed: int = 0, steps: int = PGD_STEPS, restarts: int = PGD_RESTARTS) -> np.ndarray:
    """Batched sign-gradient PGD on the margin ``max_j y_j - y_label``; the best point per
    row (over restarts and steps) in ``[lo, hi]``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    dt = network.dtype
    lo_t, hi_t = torch.as_tensor(lo, dtype=dt), torch.as_tensor(hi, dtype=dt)
    lab = torch.as_tensor(labels, dtype=torch.long)
    n = lo_t.shape[0]
    best = ((lo_t + hi_t) / 2).clone()
    best_m = torch.full((n,), -float("inf"), dtype=dt)
    width = hi_t - lo_t
    for r in range(restarts):
        u = torch.rand(lo_t.shape, generator=gen, dtype=dt) if r else torch.full_like(lo_t, 0.5)
        x = lo_t + u * width
        step = width / 4
        for it in range(steps):
            x = x.detach().requires_grad_(True)
            m = _margin(network.forward(x), lab)
            grad, = torch.autograd.grad(m.sum(), x)
            with torch.no_grad():
                better = m.detach() > best_m
                best[better], best_m[better] = x.detach()[better], m.detach()[better]
                x = torch.minimum(torch.maximum(x + step * grad.sign(), lo_t), hi_t)
            if (it + 1) % 10 == 0:
                step = step / 2
        with torch.no_grad():
            m = _margin(network.forward(x), lab)
            better = m > best_m
            best[better], best_m[better] = x[better], m[better]
    return best.detach().double().numpy()


def _margin(out: Any, labels: Any) -> Any:
    """``max_{j != label} y_j - y_label`` per row (>= 0: misclassified or tied)."""
    import torch

    own = out.gather(1, labels[:, None]).squeeze(1)
    other = out.masked_fill(torch.nn.functional.one_hot(labels, out.shape[1]).bool(), -float("inf"))
    return other.max(dim=1).values - own
