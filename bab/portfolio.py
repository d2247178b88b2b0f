"""Interleaved brancher portfolio: several BaB searches of one region, run in turns.

No input-split brancher wins everywhere: a bound-improvement split can need a hundred times
fewer domains than the gradient smear on one property and ten times more on another. The
portfolio runs one :class:`~bab.engine.Engine` per brancher on the same problem and gives them
slices of domain visits in turn, the slice doubling after every round. Each engine resumes
where it stopped, so no work is repeated; the first verdict (``sat`` or ``unsat``) wins, and the
total work is at most about ``2 * len(engines)`` times that of the best brancher alone.
"""

from __future__ import annotations

from bab.engine import BabOutcome, Engine


def interleave(engines: dict[str, Engine], first_slice: int, growth: float = 2.0) -> tuple[BabOutcome, str]:
    """Run ``engines`` in turns until one reaches a verdict: ``(outcome, winner name)``.

    An engine that ends ``unknown`` (a domain cap, an undecided leaf) drops out; when all have,
    the first such outcome is returned. Deadline exceptions propagate.
    """
    alive = dict(engines)
    dropped: list[tuple[BabOutcome, str]] = []
    budget = float(max(1, first_slice))
    while alive:
        for name, engine in list(alive.items()):
            outcome = engine.run_for(int(budget))
            if outcome is None:
                continue
            if outcome.verdict in ("sat", "unsat"):
                return outcome, name
            dropped.append((outcome, name))
            del alive[name]
        budget *= growth
    return dropped[0]
