"""The standard front end's ``verify`` (VNN-LIB 2.0 §5.3): query + ``--network`` files -> a run.

:func:`prepare` turns the query file and the ``NAME -> FILE`` mapping into a
:class:`Prepared` problem (one :class:`~onnx_models.network.Network`, one
:class:`~vnnlib.spec.Spec`, and the declared variables with where their values sit in a
counterexample's flat ``x``/``y``), or an :class:`Undecided` answer with the reason.
:func:`run_standard` runs it and prints the standard's output. Capability answers
(:mod:`bab.commands.capabilities`) probe this same :func:`prepare`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bab.standard import Assignment, StandardInputError, TIMED_OUT

#: Element types whose analysis is sound here. bab bounds the network as a function over the
#: reals (float64 bound passes with safety margins, docs/relu_split.md "Soundness"); it does not
#: model float32/float64 rounding inside the network, so by §5.4.1 it reports ``real`` only and by
#: §5.3.2 (3) it rejects queries that declare other types.
SOUND_ELEMENT_TYPES = ("real",)
_V2_HEADER = re.compile(r"\A(?:\s|;[^\n]*\n)*\(\s*vnnlib-version\b")


@dataclass(frozen=True)
class VarSlot:
    """A declared variable: its values are ``source[offset : offset + prod(shape)]``."""

    name: str
    elem_type: str
    shape: tuple[int, ...]
    source: str  # "x" (the flat network input) or "y" (the flat network output)
    offset: int

    def assignment(self, x: np.ndarray, y: np.ndarray) -> Assignment:
        """This variable's value in the counterexample ``(x, y)``."""
        flat = np.asarray(x if self.source == "x" else y, dtype=np.float64).reshape(-1)
        n = math.prod(self.shape)
        return Assignment(self.name, self.elem_type, self.shape, flat[self.offset:self.offset + n])


@dataclass(frozen=True)
class Prepared:
    """A decidable query: verify ``spec`` on ``network``; ``reference`` replays candidates."""

    network: Any
    spec: Any
    variables: tuple[VarSlot, ...]
    reference: Any = None
    reader: Any = None  # for 2.0 queries: ``reader.assignments(x, y)`` (bab.standard_v2)

    def assignments(self, x: np.ndarray, y: np.ndarray) -> list[Assignment]:
        """The declared variables' values in the counterexample ``(x, y)``."""
        if self.reader is not None:
            return self.reader.assignments(x, y)
        return [v.assignment(x, y) for v in self.variables]


@dataclass(frozen=True)
class Undecided:
    """A well-formed query this product cannot decide: the answer is ``unknown``."""

    reason: str


def is_v2(text: str) -> bool:
    """True when the first form is ``(vnnlib-version ...)`` (VNN-LIB 2.0 and later)."""
    try:
        from vnnlib.v2 import is_v2_text
    except ImportError:  # without the 2.0 parser: the header alone
        return bool(_V2_HEADER.match(text))
    return bool(is_v2_text(text))


def read_query(path: str | Path) -> str:
    """The query text (``.gz`` accepted)."""
    from vnnlib.parser import _decode

    return _decode(Path(path).read_bytes(), str(path))


def prepare(query: str | Path, networks: Mapping[str, Path]) -> Prepared | Undecided:
    """Load the query and its networks (bad input raises; see module docstring)."""
    text = read_query(query)
    if is_v2(text):
        from bab.standard_v2 import prepare_v2

        return prepare_v2(text, str(query), networks)
    return _prepare_v1(query, networks)


def _prepare_v1(query: str | Path, networks: Mapping[str, Path]) -> Prepared:
    """A VNN-LIB 1.0 file under the standard command line: its one network is the one given."""
    import onnx_models
    import vnnlib

    if len(networks) != 1:
        raise StandardInputError(
            f"{Path(query).name} is a VNN-LIB 1.0 query (no declare-network): give exactly one "
            f"--network NAME=FILE.onnx, got {len(networks)}")
    (path,) = networks.values()
    network = onnx_models.load(path)
    spec = vnnlib.parse_cached(query, n_inputs=network.n_inputs, n_outputs=network.n_outputs)
    slots = [VarSlot(f"X_{i}", "Real", (), "x", i) for i in range(network.n_inputs)]
    slots += [VarSlot(f"Y_{j}", "Real", (), "y", j) for j in range(network.n_outputs)]
    return Prepared(network, spec, tuple(slots))


def check_element_types(declared: Mapping[str, str]) -> None:
    """§5.3.2 (3): refuse declared types whose analysis would not be sound (name -> type)."""
    bad = {n: t for n, t in declared.items() if t.lower() not in SOUND_ELEMENT_TYPES}
    if bad:
        listed = ", ".join(f"{n} {t}" for n, t in bad.items())
        raise StandardInputError(
            f"declared element types not analysed soundly: {listed}; bab treats networks as "
            f"functions over the reals, so declare these variables 'real' to accept that "
            f"(VNN-LIB 2.0 §3.5 queries over real, §5.3.2 (3))")


def _start_watchdog(lock: threading.Lock, done: list[bool], deadline_s: float) -> threading.Timer:
    """At the deadline plus the grace period print ``timed-out`` and end the process."""
    from bab.commands.verify import GRACE_S

    def fire() -> None:
        with lock:
            if done[0]:
                return
            done[0] = True
        print(TIMED_OUT, flush=True)
        sys.stderr.flush()
        os._exit(0)

    timer = threading.Timer(max(0.0, deadline_s + GRACE_S), fire)
    timer.daemon = True
    timer.start()
    return timer


def run_standard(args: argparse.Namespace) -> int:
    """``bab verify QUERY [--network N=F ...] [--timeout S] [--serialise-assignments DIR]``."""
    from bab.cli import PROCESS_START
    from bab.commands.common import config_from_args
    from bab.standard import format_assignments, parse_networks, result_word, serialise_assignments

    cfg = config_from_args(args)
    timeout = cfg.verify.timeout if args.timeout is None else args.timeout
    lock, done = threading.Lock(), [False]
    watchdog = _start_watchdog(lock, done, timeout - (time.monotonic() - PROCESS_START))
    try:  # an error (bad input) must disarm the watchdog too: in-process callers live on
        problem = prepare(args.model, parse_networks(args.network or []))
        if isinstance(problem, Undecided):
            word, assignments, reason = "unknown", [], problem.reason
        else:
            from bab.api import verify

            result = verify(problem.network, problem.spec, cfg, timeout=timeout, start=PROCESS_START,
                            reference=problem.reference)
            word, reason, assignments = result_word(result.status), result.reason, []
            cex = result.counterexample
            if word == "sat" and cex is not None:
                assignments = problem.assignments(cex.x, cex.y)
    finally:
        watchdog.cancel()
    with lock:
        if done[0]:
            return 0
        done[0] = True
    if assignments and args.serialise_assignments:
        serialise_assignments(assignments, args.serialise_assignments)
        assignments = []
    sys.stdout.write(word + "\n" + format_assignments(assignments))
    sys.stdout.flush()
    if reason and word != "sat":
        print(f"bab verify: {word}: {reason}", file=sys.stderr)
    return 0
