"""The Python API: ``verify(model, spec, config=None, timeout=None) -> Result``.

The pipeline is: falsification (random samples, then PGD per clause; every candidate replayed
with onnxruntime), then the configured method (:mod:`bab.methods`) decides the rest. ``unsat``
needs every clause of every region proven infeasible; anything else is ``unknown``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bab.config import Config
from bab.methods import get_method
from bab.result import Counterexample, Result, Stats, Status
from onnx_models.network import Network
from vnnlib.spec import Spec


SMALL_NETWORK_PARAMS = 200_000


class VerifyTimeout(Exception):
    """Raised inside the pipeline when the deadline has passed."""


class AttackBudgetSpent(Exception):
    """Raised inside the attack phase once it has used its share of the time."""


class Deadline:
    """A wall-clock budget measured from ``start`` (``time.monotonic``)."""

    def __init__(self, seconds: float, start: float | None = None) -> None:
        self.start = time.monotonic() if start is None else start
        self.seconds = seconds

    def remaining(self) -> float:
        """Seconds left (negative once expired)."""
        return self.seconds - (time.monotonic() - self.start)

    def check(self) -> None:
        """Raise :class:`VerifyTimeout` once the budget is spent."""
        if self.remaining() <= 0:
            raise VerifyTimeout


class InputMismatchError(ValueError):
    """The property and the network disagree on the number of inputs or outputs."""


def load_inputs(model: str | Path | Network, spec: str | Path | Spec) -> tuple[Network, Spec]:
    """Load paths (or pass through loaded objects) and check that they fit each other."""
    import onnx_models
    import vnnlib

    network = model if isinstance(model, Network) else onnx_models.load(model)
    if isinstance(spec, Spec):
        prop = spec
    else:
        prop = vnnlib.load_property(spec, n_inputs=network.n_inputs, n_outputs=network.n_outputs)
    if prop.n_inputs != network.n_inputs or prop.n_outputs != network.n_outputs:
        raise InputMismatchError(
            f"property has {prop.n_inputs} inputs / {prop.n_outputs} outputs but the network "
            f"has {network.n_inputs} / {network.n_outputs}")
    return network, prop


def verify(model: str | Path | Network, spec: str | Path | Spec, config: Config | None = None,
           timeout: float | None = None, *, start: float | None = None, reference: Any = None) -> Result:
    """Verify ``spec`` on ``model``; paths or loaded objects are accepted.

    ``timeout`` (seconds, default from the config) counts from ``start`` (a
    ``time.monotonic()`` value, default now). ``reference`` is an
    :class:`onnx_models.OnnxReference` to replay counterexamples on; by default one is built
    from the network's source file.
    """
    cfg = config or Config()
    deadline = Deadline(cfg.verify.timeout if timeout is None else timeout, start)
    network, prop = load_inputs(model, spec)
    return Pipeline(network, prop, cfg, deadline, reference).run()


class Pipeline:
    """One verification run: attack, then bound; holds the run's statistics."""

    def __init__(self, network: Network, spec: Spec, cfg: Config, deadline: Deadline,
                 reference: Any = None) -> None:
        self.network = network.to(device=cfg.verify.device)
        self.spec = spec
        self.cfg = cfg
        self.deadline = deadline
        self.reference = reference
        self.stats = Stats(method=cfg.verify.method)
        self._bound_net: Network | None = None
        self._replay = None

    def run(self) -> Result:
        """The verdict; never raises for a timeout."""
        torch.manual_seed(self.cfg.verify.seed)
        threads = self.cfg.verify.threads or self._auto_threads()
        if threads > 0:
            torch.set_num_threads(threads)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads if threads > 0 else None):  # numpy's BLAS too
            return self._run()

    def _run(self) -> Result:
        try:
            cex = self._attack() if self.cfg.falsify.enabled else None
            if cex is not None:
                return self._result(Status.SAT, cex)
            t0 = time.monotonic()
            try:
                outcome = get_method(self.cfg.verify.method).decide(self)
            finally:
                self._timed("decide", t0)
            return self._result(outcome.status, outcome.counterexample, outcome.reason)
        except VerifyTimeout:
            return self._result(Status.TIMEOUT, reason="deadline reached")

    def _auto_threads(self) -> int:
        """One thread for small networks (thread hand-off costs more than it saves), else torch's default."""
        params = sum(t.numel() for n in self.network.nodes for t in n.layer.tensors().values())
        return 1 if params < SMALL_NETWORK_PARAMS else 0

    def _result(self, status: Status, cex: Counterexample | None = None, reason: str = "") -> Result:
        elapsed = time.monotonic() - self.deadline.start
        return Result(status=status, counterexample=cex, time_s=elapsed, stats=self.stats, reason=reason)

    def _timed(self, phase: str, t0: float) -> None:
        self.stats.phases[phase] = self.stats.phases.get(phase, 0.0) + time.monotonic() - t0

    def replay(self, x: np.ndarray, region: int) -> Counterexample | None:
        """Replay a candidate with onnxruntime (for methods that find counterexamples)."""
        replayer = self._replayer()
        if replayer is None:
            return None
        cex = replayer.check(x, region)
        self.stats.replay_rejections += cex is None
        return cex

    def bound_network(self) -> Network:
        """The network in the configured bounding dtype (a copy, made once, if it differs)."""
        dtype = getattr(torch, self.cfg.bounding.dtype)
        if dtype == self.network.dtype:
            return self.network
        if self._bound_net is None:
            self._bound_net = copy.deepcopy(self.network).to(dtype)
        return self._bound_net

    def _can_replay(self) -> bool:
        """Whether counterexamples can be replayed (onnxruntime starts only when one is needed)."""
        return self.reference is not None or bool(self.network.source and Path(self.network.source).exists())

    def _replayer(self):
        from bab.replay import Replayer
        from onnx_models import OnnxReference

        if self._replay is not None:
            return self._replay
        if self.reference is None:
            if not self.network.source or not Path(self.network.source).exists():
                self.stats.notes.append("no ONNX source file to replay counterexamples on")
                return None
            self.reference = OnnxReference(self.network.source)
        self._replay = Replayer(self.reference, self.spec.regions, self.network.io.input_dtype)
        return self._replay

    def _attack(self) -> Counterexample | None:
        """Falsification; the first candidate that survives replay wins."""
        from bab.falsify import Falsifier

        t0 = time.monotonic()
        try:
            if not self._can_replay():
                self.stats.notes.append("no ONNX source file to replay counterexamples on")
                return None
            stop = t0 + self.cfg.falsify.time_share * max(0.0, self.deadline.remaining())

            def check() -> None:
                self.deadline.check()
                if time.monotonic() > stop:
                    raise AttackBudgetSpent

            falsifier = Falsifier(self.network, self.cfg.falsify, self.cfg.verify.seed, check)
            try:
                for cand in falsifier.run(self.spec.regions, batch=self.cfg.bab.batch_regions):
                    self.stats.attack_candidates += 1
                    cex = self.replay(cand.x, cand.region)
                    if cex is not None:
                        self.stats.proved_by = "attack"
                        return cex
            except AttackBudgetSpent:
                self.stats.notes.append(f"attack stopped at falsify.time_share = {self.cfg.falsify.time_share}")
            return None
        finally:
            self._timed("attack", t0)
