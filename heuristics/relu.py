"""Branchers of activation-split BaB: which neuron each domain splits on.

The candidates are the free unstable ReLU neurons and the neurons of every other elementwise
nonlinearity (Sigmoid, Tanh, ``relax.UNARY``) whose pre-activation interval is still wide; one
score ranks them all, so networks mixing ReLU and other activations use one search. Non-ReLU
parts of ``branch_data`` carry their ``layer`` and are scored by :func:`shaped_scores` (the
relaxation gap removed by the split, times ``|lA|``) in every filter below.

Each brancher has ``name`` and ``choose(problem, batch) -> LongTensor [N]`` of global neuron
indices (the branchable ReLUs' neurons concatenated, see
:meth:`~bab.relu_split.ReluSplitProblem.locate`). ``problem.branch_data(batch)`` gives, per
branchable ReLU, the pre-activation bounds ``lo``/``hi`` ``[N, n]``, the mask of free unstable
neurons, ``lA`` (the coefficient of the ReLU's output in the domain's final linear bound,
summed over the clause rows) and the preceding layer's bias. Only free unstable neurons are
ever chosen (the engine never splits a domain without one).

* ``babsr`` — the BaBSR score of Bunel et al. (2020): the estimated change of the bound from
  removing the neuron's relaxation, ``|min(b lA (s - 1), b lA s) + min(lA, 0) * (-l s)|`` with
  ``s = u / (u - l)``; ties and all-zero scores fall back to the intercept score, then to width.
* ``fsb`` — filtered smart branching (De Palma et al. 2021): the top ``k`` candidates by BaBSR
  and the top ``k`` by the intercept score ``(-l) u / (u - l) * max(-lA, 0)`` are each
  evaluated by one cheap bound pass of both children (parents' slopes and multipliers, no
  optimisation); the candidate whose worse child has the highest margin wins.
* ``widest`` — the baseline: largest ``(u - l) * |lA|`` (width alone where ``lA`` vanishes).
"""

from __future__ import annotations

from typing import Any

import torch

NEG = -float("inf")


def _masked(score: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    return torch.where(free, score, torch.full_like(score, NEG))


GRID = 16  # points per interval for the mean relaxation gap of non-ReLU neurons


def _line_gap(layer: Any, l: torch.Tensor, u: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """Mean distance on ``[l, u]`` (``[N, n]``) between ``f`` and its relaxation line, the lower
    line where ``lower`` is true, else the upper one (float64, on a grid of ``GRID`` points)."""
    from bab.bounding.polyhedra.relax import UNARY

    r = UNARY[type(layer)](layer, l, u)
    squeeze = lambda t: t.reshape(l.shape).double()
    w = torch.where(lower, squeeze(r.lw), squeeze(r.uw))
    b = torch.where(lower, squeeze(r.lb), squeeze(r.ub))
    k = (torch.arange(GRID, dtype=torch.float64, device=l.device) + 0.5) / GRID
    x = l.double().unsqueeze(-1) + k * (u - l).double().unsqueeze(-1)
    fx = layer.forward(x.to(l.dtype)).double()
    gap = torch.where(lower.unsqueeze(-1), fx - (w.unsqueeze(-1) * x + b.unsqueeze(-1)),
                      (w.unsqueeze(-1) * x + b.unsqueeze(-1)) - fx)
    return gap.clamp(min=0).mean(-1)


def shaped_scores(part: dict[str, Any]) -> torch.Tensor:
    """``[N, n]`` estimated bound gain of splitting each neuron of a non-ReLU nonlinearity:
    ``|lA|`` times the drop of the mean gap between ``f`` and the line the bound uses (the lower
    line where ``lA >= 0``, else the upper one), from the parent's interval to the two children's
    (weighted by their widths); the BaBSR idea with the relaxation's area in place of the
    ReLU triangle's intercept."""
    from bab.relu_split import split_point

    layer, lo, hi, lA = part["layer"], part["lo"], part["hi"], part["lA"]
    free = part["unstable"]
    l = torch.where(free, lo, torch.zeros_like(lo)).double()
    u = torch.where(free, hi, torch.ones_like(hi)).double()
    s = split_point(type(layer), l, u).clamp(l, u)
    lower = lA >= 0
    whole = _line_gap(layer, l, u, lower)
    left, right = _line_gap(layer, l, s, lower), _line_gap(layer, s, u, lower)
    width = (u - l).clamp(min=1e-30)
    gain = whole - ((s - l) * left + (u - s) * right) / width
    return _masked((lA.abs().double() * gain.clamp(min=0)).to(lo.dtype), free)


def babsr_scores(data: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """``[N, total]`` BaBSR scores (``-inf`` on neurons that cannot be split)."""
    out = []
    for part in data:
        if "layer" in part:
            out.append(shaped_scores(part))
            continue
        lo, hi, lA, free = part["lo"], part["hi"], part["lA"], part["unstable"]
        l, u = lo.clamp(max=0), hi.clamp(min=0)
        s = u / (u - l).clamp(min=1e-12)
        intercept = torch.clamp(lA, max=0) * (-l * s)
        b = part["bias"]
        if b is None:
            bias_term = torch.zeros_like(lA)
        else:
            blA = b.to(lA).unsqueeze(0) * lA
            bias_term = torch.minimum(blA * (s - 1), blA * s)
        out.append(_masked((bias_term + intercept).abs(), free))
    return torch.cat(out, 1)


def intercept_scores(data: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """``[N, total]`` intercept-only scores (the second FSB filter)."""
    out = []
    for part in data:
        if "layer" in part:
            out.append(shaped_scores(part))
            continue
        lo, hi, lA, free = part["lo"], part["hi"], part["lA"], part["unstable"]
        l, u = lo.clamp(max=0), hi.clamp(min=0)
        score = (-l) * u / (u - l).clamp(min=1e-12) * (-lA).clamp(min=0)
        out.append(_masked(score, free))
    return torch.cat(out, 1)


def width_scores(data: list[dict[str, torch.Tensor]], weighted: bool = True) -> torch.Tensor:
    """``[N, total]`` interval width, times ``|lA|`` when ``weighted``."""
    out = []
    for part in data:
        w = part["hi"] - part["lo"]
        out.append(_masked(w * part["lA"].abs() if weighted else w, part["unstable"]))
    return torch.cat(out, 1)


def _pick(*scores: torch.Tensor) -> torch.Tensor:
    """Argmax of the first score; domains where it is flat (max <= 0) use the next one."""
    choice = scores[0].argmax(1)
    for first, nxt in zip(scores[:-1], scores[1:]):
        flat = first.amax(1) <= 0
        if bool(flat.any()):
            choice = torch.where(flat, nxt.argmax(1), choice)
        else:
            break
    return choice


class BaBSR:
    """BaBSR (see the module docstring)."""

    name = "babsr"

    def choose(self, problem: Any, batch: Any) -> torch.Tensor:
        data = problem.branch_data(batch)
        return _pick(babsr_scores(data), intercept_scores(data), width_scores(data, False))


class Widest:
    """Largest pre-activation interval weighted by ``|lA|``."""

    name = "widest"

    def choose(self, problem: Any, batch: Any) -> torch.Tensor:
        data = problem.branch_data(batch)
        return _pick(width_scores(data), width_scores(data, False))


class FSB:
    """Filtered smart branching with ``k`` candidates per filter."""

    name = "fsb"

    def __init__(self, k: int = 3) -> None:
        self.k = max(1, int(k))

    def choose(self, problem: Any, batch: Any) -> torch.Tensor:
        data = problem.branch_data(batch)
        sr, ic, wd = babsr_scores(data), intercept_scores(data), width_scores(data, False)
        fallback = _pick(sr, ic, wd)
        k = min(self.k, sr.shape[1])
        top_sr, top_ic = sr.topk(k, 1), ic.topk(k, 1)
        cand = torch.cat([top_sr.indices, top_ic.indices], 1)
        ok = torch.cat([top_sr.values > NEG, top_ic.values > NEG], 1)
        cand = torch.where(ok, cand, fallback[:, None].expand_as(cand))
        margins = problem.try_splits(batch, cand)  # [N, K, 2]
        worse = margins.amin(2)
        worse = torch.where(torch.isnan(worse), torch.full_like(worse, NEG), worse)
        best = worse.argmax(1)
        return cand.gather(1, best[:, None]).squeeze(1)


RELU_BRANCHERS = {"babsr": BaBSR, "fsb": FSB, "widest": Widest}


def get_relu_brancher(name: str, **kw: Any) -> Any:
    """A ReLU brancher by name (``fsb`` takes ``k``)."""
    if name not in RELU_BRANCHERS:
        raise ValueError(f"unknown ReLU brancher '{name}'; available: {', '.join(RELU_BRANCHERS)}")
    return RELU_BRANCHERS[name](**kw) if name == "fsb" else RELU_BRANCHERS[name]()
