"""The largest l_p radius a method certifies around a point: ``bab.radius(...)`` / ``bab radius``.

(The module is not ``bab/radius.py``: a submodule of that name would shadow the function.)

Lipschitz methods have a closed form (``bab.bounding.lipschitz.certified_radius``, when that
module is present). Every other method is bisected on ``eps``: each step runs ``verify`` on
the property "some other class scores at least as high as ``label`` somewhere in
``{x : ||x - x0||_p <= eps} ∩ [lo, hi]``". ``unsat`` certifies ``eps`` (the lower end moves
up); anything else (``unknown``, ``timeout``, ``sat``) moves the upper end down. A ``sat``
from any method comes with a replayed counterexample, so ``||cex - x0||_p`` is an upper bound
on the minimal adversarial distance (:attr:`RadiusResult.upper`). Falsification runs only for
complete methods (an incomplete method's radius is what its bounds certify).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vnnlib.spec import Ball, Clause, Region, Spec, norm_name, p_norm


class RadiusInputError(ValueError):
    """Bad input to :func:`radius` (missing file, wrong sizes, unknown norm or method)."""


@dataclass
class RadiusResult:
    """``radius``: the largest radius certified; ``interval``: ``(certified, not certified)``
    (``inf`` above when every radius tried was certified); ``upper``: the smallest
    ``||cex - x0||_p`` over the counterexamples found (``None``: none), an upper bound on the
    minimal adversarial distance; ``steps``: verify calls (or closed-form evaluations);
    ``times``: seconds per step; ``statuses``: ``(eps, status)`` per step."""

    radius: float
    upper: float | None
    steps: int
    interval: tuple[float, float]
    times: list[float] = field(default_factory=list)
    method: str = ""
    norm: str = "inf"
    closed_form: bool = False
    statuses: list[tuple[float, str]] = field(default_factory=list)

    @property
    def time_s(self) -> float:
        """Total seconds."""
        return float(sum(self.times))


def robustness_spec(ball: Ball, label: int, n_outputs: int, lower: np.ndarray | None,
                    upper: np.ndarray | None) -> Spec:
    """Unsafe set: some class ``j != label`` has ``y_label - y_j <= 0`` in ``ball ∩ [lower, upper]``."""
    clauses = []
    for j in range(n_outputs):
        if j != label:
            row = np.zeros((1, n_outputs))
            row[0, label], row[0, j] = 1.0, -1.0
            clauses.append(Clause(row, np.zeros(1)))
    region = Region.with_ball(ball, tuple(clauses), lower, upper)
    return Spec((region,), int(ball.center.size), n_outputs)


def _inputs(model: Any, center: Any, label: int, norm: str, method: str,
            lo: float | None, hi: float | None) -> tuple[Any, np.ndarray, str, Any]:
    """Loaded network, flat centre, norm name and method row (or :class:`RadiusInputError`)."""
    import onnx_models
    from bab import taxonomy

    try:
        p = norm_name(norm)
    except ValueError as exc:
        raise RadiusInputError(str(exc)) from None
    try:
        row = taxonomy.info(method)
    except ValueError as exc:
        raise RadiusInputError(str(exc)) from None
    if isinstance(model, (str, Path)) and not Path(model).is_file():
        raise RadiusInputError(f"model file not found: {model}")
    network = onnx_models.load(model) if isinstance(model, (str, Path)) else model
    if isinstance(center, (str, Path)):
        if not Path(center).is_file():
            raise RadiusInputError(f"centre file not found: {center}")
        try:
            center = np.load(center, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise RadiusInputError(f"cannot read {center}: {exc}") from None
    x0 = np.asarray(center.detach().cpu().numpy() if hasattr(center, "detach") else center, np.float64).reshape(-1)
    if x0.size != network.n_inputs:
        raise RadiusInputError(f"the centre has {x0.size} values but the model takes {network.n_inputs} inputs")
    if not 0 <= int(label) < network.n_outputs:
        raise RadiusInputError(f"label {label} is not one of the model's {network.n_outputs} classes")
    if (lo is None) != (hi is None) or (lo is not None and not lo <= hi):
        raise RadiusInputError("give both --lo and --hi, with lo <= hi")
    if lo is not None and (np.any(x0 < lo) or np.any(x0 > hi)):
        raise RadiusInputError(f"the centre lies outside the data box [{lo:g}, {hi:g}]")
    return network, x0, p, row


def _config(base: Any, method: str, timeout: float, complete: bool) -> Any:
    """``base`` with the method, the per-step timeout, and falsification for complete methods only."""
    verify = dataclasses.replace(base.verify, method=method, timeout=float(timeout))
    falsify = dataclasses.replace(base.falsify, enabled=bool(complete) and base.falsify.enabled)
    return dataclasses.replace(base, verify=verify, falsify=falsify)


def _closed_form(network: Any, x0: np.ndarray, label: int, p: str, method: str) -> tuple[float, int] | None:
    """``(radius, steps)`` from the Lipschitz module, or ``None`` when it is not there."""
    try:
        from bab.bounding.lipschitz import certified_radius
    except ImportError:
        return None
    out = certified_radius(network, x0, int(label), p, method, return_steps=True)
    eps, trace = out if isinstance(out, tuple) else (out, [])
    return float(eps), max(1, len(trace))


def radius(model: Any, center: Any, label: int, *, norm: str = "inf", method: str = "default",
           lo: float | None = None, hi: float | None = None, max_eps: float | None = None,
           steps: int = 10, timeout: float = 30.0, config: Any = None) -> RadiusResult:
    """The largest radius ``method`` certifies around ``center`` (see the module docstring).

    ``model``: an ONNX path or a Network; ``center``: an array (or ``.npy`` path) with the
    model's number of inputs; ``lo``/``hi``: the data box every input lies in (optional);
    ``max_eps``: the largest radius tried (default: the p-distance from the centre to the
    farthest corner of the data box, beyond which the set no longer grows; 1 without a box);
    ``steps``: bisection steps after the first try at ``max_eps``; ``timeout``: seconds per
    verify call.
    """
    from bab.config import Config

    network, x0, p, row = _inputs(model, center, label, norm, method, lo, hi)
    if int(steps) < 0 or not float(timeout) > 0 or (max_eps is not None and not float(max_eps) > 0):
        raise RadiusInputError("steps must be >= 0, timeout > 0 and max-eps > 0")
    lower = None if lo is None else np.full(x0.size, float(lo))
    upper = None if hi is None else np.full(x0.size, float(hi))
    if max_eps is None:
        max_eps = 1.0 if lower is None else p_norm(np.maximum(x0 - lower, upper - x0), p)
    if row.category.name == "LIPSCHITZ":
        t0 = time.monotonic()
        got = _closed_form(network, x0, label, p, method)
        if got is not None:
            r = min(got[0], float(max_eps))
            return RadiusResult(r, None, got[1], (r, math.inf if got[0] >= max_eps else r),
                                [time.monotonic() - t0], method, p, True)
    if not _classified(network, x0, int(label)):  # no radius is robust, not even 0
        return RadiusResult(0.0, 0.0, 0, (0.0, 0.0), method=method, norm=p)
    cfg = _config(config or Config(), method, timeout, row.category.complete)
    return _bisect(network, x0, int(label), p, float(max_eps), int(steps), cfg, lower, upper)


def _classified(network: Any, x0: np.ndarray, label: int) -> bool:
    """Whether the network puts ``label`` strictly above every other class at ``x0``."""
    import torch

    with torch.no_grad():
        y = network.forward(torch.as_tensor(x0, dtype=network.dtype)[None])[0].double().numpy()
    return bool(np.all(np.delete(y, label) < y[label]))


def _bisect(network: Any, x0: np.ndarray, label: int, p: str, max_eps: float, steps: int, cfg: Any,
            lower: np.ndarray | None, upper: np.ndarray | None) -> RadiusResult:
    """Try ``max_eps``, then halve the interval ``[certified, not certified]`` ``steps`` times."""
    from bab.api import verify

    res = RadiusResult(0.0, None, 0, (0.0, math.inf), method=cfg.verify.method, norm=p)
    good, bad = 0.0, math.inf
    eps = max_eps
    for _ in range(steps + 1):
        spec = robustness_spec(Ball(x0, eps, p), label, network.n_outputs, lower, upper)
        out = verify(network, spec, cfg)
        res.steps += 1
        res.times.append(float(out.time_s))
        res.statuses.append((eps, out.status.value))
        if out.status.value == "unsat":
            good = eps
        else:
            bad = eps
            if out.counterexample is not None:
                dist = p_norm(np.asarray(out.counterexample.x, np.float64) - x0, p)
                res.upper = dist if res.upper is None else min(res.upper, dist)
                bad = min(bad, dist)
        if bad <= good or good >= max_eps:
            break
        eps = (good + bad) / 2
    res.radius, res.interval = good, (good, bad)
    return res
