"""The Bounder interface: lower bounds of ``C · f(x)`` over a batch of sub-domains.

A sub-domain is an input box plus (optionally) fixed ReLU phases. Every bounding method of
the SoK taxonomy plugs in behind :class:`Bounder`; each keeps one registry of per-layer rules
and dispatches through :meth:`Registry.rule`, which raises a clear error for unknown ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Protocol, TypeVar

import torch

from onnx_models.layers import Layer
from onnx_models.network import Network


class UnsupportedLayerError(NotImplementedError):
    """A bounding method has no rule for a layer kind."""


class BounderRefusal(ValueError):
    """A bounder declines an instance it cannot bound within its limits (too many hidden
    units for an SDP, an LP too large, a solver that reported an inaccurate solve, ...).

    The message is the reason; incomplete methods turn it into ``unknown`` with that reason,
    never into a looser bound or a crash.
    """


R = TypeVar("R", bound=Callable[..., Any])


class Registry(Generic[R]):
    """One table of per-layer rules for a bounding method."""

    def __init__(self, method: str) -> None:
        self.method = method
        self._rules: dict[type[Layer], R] = {}

    def register(self, *kinds: type[Layer]) -> Callable[[R], R]:
        """Decorator: register ``fn`` as the rule for the given layer classes."""

        def deco(fn: R) -> R:
            for kind in kinds:
                self._rules[kind] = fn
            return fn

        return deco

    def rule(self, layer: Layer) -> R:
        """The single dispatch point: the rule for ``layer`` or a clear error."""
        fn = self._rules.get(type(layer))
        if fn is None:
            known = ", ".join(sorted(k.__name__ for k in self._rules))
            raise UnsupportedLayerError(
                f"bounding method '{self.method}' has no rule for layer {layer.kind}; "
                f"it supports: {known}")
        return fn

    def supports(self, network: Network) -> list[str]:
        """Names of the network's layer kinds this registry cannot handle (empty: all fine)."""
        return sorted({n.layer.kind for n in network.nodes if type(n.layer) not in self._rules})


@dataclass
class Domains:
    """A batch of ``N`` sub-domains.

    ``lower``/``upper``: input boxes ``[N, n_in]``. ``C``: clause matrices ``[N, M, n_out]``.
    ``phases``: optional fixed ReLU phases per ReLU node index, each ``[N, *shape]`` with
    ``-1`` (inactive), ``0`` (free) or ``+1`` (active). ``center`` ``[N, n_in]``, ``eps``
    ``[N]`` and ``p`` (``"inf"``, ``"2"``, ``"1"``): an optional l_p ball per domain; the input
    set is then ``ball ∩ [lower, upper]`` (bounders that only read the box stay sound).
    """

    lower: torch.Tensor
    upper: torch.Tensor
    C: torch.Tensor
    phases: dict[int, torch.Tensor] = field(default_factory=dict)
    center: torch.Tensor | None = None
    eps: torch.Tensor | None = None
    p: str = "inf"

    @property
    def size(self) -> int:
        """Number of sub-domains."""
        return int(self.lower.shape[0])

    @property
    def has_ball(self) -> bool:
        """Whether the domains carry an l_p ball."""
        return self.center is not None and self.eps is not None

    def ball_of(self, index: Any = None, **kw: Any) -> dict[str, Any]:
        """Keyword arguments copying the ball to another :class:`Domains` (rows ``index``,
        a slice or index tensor; ``kw``: ``dtype``/``device`` for ``Tensor.to``)."""
        if not self.has_ball:
            return {}
        c, e = self.center, self.eps
        if index is not None:
            c, e = c[index], e[index]
        return {"center": c.to(**kw) if kw else c, "eps": e.to(**kw) if kw else e, "p": self.p}

    @property
    def input_set(self) -> str:
        """``"box"`` or the ball's norm (``"inf"``, ``"2"``, ``"1"``)."""
        return self.p if self.has_ball else "box"


@dataclass
class Bounds:
    """What a bounder returns: lower bounds ``[N, M]`` of ``C f(x)`` and optional extras."""

    lower: torch.Tensor
    upper: torch.Tensor | None = None
    intermediate: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    state: Any = None


SET_NAMES = {"box": "box", "inf": "ℓ∞ ball", "2": "ℓ2 ball", "1": "ℓ1 ball"}


def check_input_set(bounder: Any, domains: Domains | str) -> str:
    """How ``bounder`` treats the domains' input set (``"exact"``, ``"hull"``), or
    :class:`BounderRefusal` naming the set.

    A bounder declares ``input_sets = {"inf": ..., "2": ..., "1": ...}`` (``"exact"``: the
    ball enters its bound; ``"hull"``: it bounds the ball's box hull, sound but looser). Boxes
    and ℓ∞ balls (whose intersection with a box is a box) are accepted by every bounder; a
    bounder without the attribute handles boxes only.
    """
    kind = domains if isinstance(domains, str) else domains.input_set
    if kind in ("box", "inf"):
        return "exact"
    how = getattr(bounder, "input_sets", {}).get(kind)
    if how is None:
        name = getattr(bounder, "name", type(bounder).__name__)
        raise BounderRefusal(f"{name} cannot handle an {SET_NAMES[kind]}: it bounds boxes only "
                             "(its box hull would be a silent relaxation)")
    return how


class Bounder(Protocol):
    """A bounding method: a name and a ``bound`` call on a batch of domains.

    A bounder that may run long (one solver call per row) has an attribute ``remaining``:
    ``None`` or a callable giving the seconds left; callers with a deadline set it, and the
    bounder caps its solver calls by it (rows left unsolved get ``-inf``).
    """

    name: str

    def bound(self, network: Network, domains: Domains, state: Any = None) -> Bounds:
        """Lower (and optionally upper) bounds of ``C f(x)`` over each domain."""
        ...


def round_down(x64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x64`` in ``dtype``, rounded toward ``-inf`` (a cast rounds to nearest)."""
    y = x64.to(dtype)
    if dtype == x64.dtype:
        return y
    return torch.where(y.double() > x64, torch.nextafter(y, torch.full_like(y, -float("inf"))), y)


def round_up(x64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x64`` in ``dtype``, rounded toward ``+inf``."""
    return -round_down(-x64, dtype)


def clause_bounds(C: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval bounds of ``C y`` for ``y`` in ``[lo, hi]`` (``C``: [N, M, n], box: [N, n]).

    Computed in float64 and rounded outward (``gamma_{n+4}`` times the magnitudes), so the
    result is sound in the input dtype even for wide boxes, where ``mid - rad`` cancels.
    """
    dtype = C.dtype
    C, lo, hi = C.double(), lo.double(), hi.double()
    mid = ((lo + hi) / 2).unsqueeze(-1)
    rad = ((hi - lo) / 2).unsqueeze(-1)
    rad = rad + torch.finfo(torch.float64).eps * (mid.abs() + rad)
    centre = torch.bmm(C, mid).squeeze(-1)
    spread = torch.bmm(C.abs(), rad).squeeze(-1)
    n = C.shape[-1] + 4
    u = torch.finfo(torch.float64).eps / 2
    err = n * u / (1 - n * u) * (torch.bmm(C.abs(), mid.abs()).squeeze(-1) + spread)
    return round_down(centre - spread - err, dtype), round_up(centre + spread + err, dtype)
