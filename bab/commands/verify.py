"""``bab verify MODEL.onnx PROP.vnnlib``: one instance, VNN-COMP results file, one-line verdict.

With ONE positional argument, ``bab verify QUERY.vnnlib --network NAME=FILE.onnx ...`` is the
VNN-LIB 2.0 standard form (chapter 5 of the standard, :mod:`bab.standard_query`); two
positionals are always the VNN-COMP form above (docs/cli_standard.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bab.commands.common import add_config_args, config_from_args
from bab.commands.resume import add_checkpoint_args, checkpoint_from_args

GRACE_S = 1.0  # the watchdog fires this long after the deadline, well inside the 2 s allowed


def register(sub: Any) -> None:
    """Add the ``verify`` sub-command."""
    p = sub.add_parser("verify", help="verify one ONNX network against one VNN-LIB property",
                       description="Falsify, then bound; writes a VNN-COMP results file.")
    p.add_argument("model", metavar="MODEL.onnx|QUERY.vnnlib",
                   help="network (.onnx or .onnx.gz); alone: a VNN-LIB query (standard form)")
    p.add_argument("property", nargs="?", metavar="PROP.vnnlib",
                   help="property (.vnnlib); absent: the VNN-LIB 2.0 standard form")
    p.add_argument("--network", action="append", metavar="NAME=FILE.onnx",
                   help="standard form: the ONNX file of a declared network (repeatable)")
    p.add_argument("--serialise-assignments", "--assignments", metavar="DIR", default=None,
                   help="standard form: write a sat assignment as DIR/NAME.pb TensorProtos")
    p.add_argument("--timeout", type=float, default=None, help="wall-clock limit in seconds (hard)")
    p.add_argument("--results-file", default=None, help="VNN-COMP results file to write")
    add_config_args(p)
    add_checkpoint_args(p)
    p.set_defaults(func=run, fast_exit=True)


class ResultWriter:
    """Writes the results file exactly once: from the main thread or from the watchdog."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.done = False

    def write(self, text: str) -> bool:
        """Write ``text`` unless something was written already; True if this call wrote."""
        with self.lock:
            if self.done:
                return False
            if self.path:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "w", encoding="utf-8") as fh:
                    fh.write(text)
            self.done = True
            return True


def start_watchdog(writer: ResultWriter, timeout: float, start: float, label: str) -> threading.Timer:
    """Hard stop: at ``start + timeout + GRACE_S`` write ``timeout`` and end the process."""

    def fire() -> None:
        if writer.write("timeout\n"):
            print(f"timeout  ({time.monotonic() - start:.2f} s)  {label}  [hard stop]", flush=True)
            sys.stderr.flush()
            os._exit(0)

    delay = max(0.0, timeout + GRACE_S - (time.monotonic() - start))
    timer = threading.Timer(delay, fire)
    timer.daemon = True
    timer.start()
    return timer


def results_text(result: Any) -> str:
    """The results file body: the verdict word, and the witness after ``sat``."""
    from bab.result import Status
    from bab.witness import format_witness

    text = result.status.value + "\n"
    if result.status is Status.SAT and result.counterexample is not None:
        cex = result.counterexample
        text += format_witness(cex.x, cex.y, cex.dtype) + "\n"
    return text


def standard_form(args: argparse.Namespace) -> bool:
    """One positional: the standard form; two: the VNN-COMP form (options checked to match)."""
    from bab.cli import BadInput

    if args.property is None:
        for flag, given in (("--results-file", args.results_file),
                            ("--checkpoint", getattr(args, "checkpoint", None)),
                            ("--resume", getattr(args, "resume", False))):
            if given:
                raise BadInput(f"{flag} belongs to the form `bab verify MODEL.onnx PROP.vnnlib`")
        return True
    if args.network or args.serialise_assignments:
        raise BadInput("--network/--serialise-assignments belong to the standard form "
                       "`bab verify QUERY.vnnlib --network NAME=FILE.onnx` (one positional)")
    return False


def _decide(args: argparse.Namespace, cfg: Any, ckpt: Any, timeout: float, start: float) -> Any:
    """The verdict: the NumPy fast path when it applies, else the full (or resumable) run."""
    result = None
    if ckpt is None and cfg.verify.fast_path and cfg.verify.method == "default":
        from bab.fastpath import try_fast_path  # NumPy only: decided here, torch is never imported

        result = try_fast_path(args.model, args.property, cfg, timeout, start)
    if result is None and ckpt is None:
        from bab.api import verify

        result = verify(args.model, args.property, cfg, timeout=timeout, start=start)
    elif result is None:
        from bab.checkpoint import verify_resumable

        result = verify_resumable(args.model, args.property, cfg, ckpt, timeout, start)
    return result


def run(args: argparse.Namespace) -> int:
    """Run one instance; the timeout counts from process start."""
    from bab.cli import PROCESS_START

    if standard_form(args):
        from bab.standard_query import run_standard

        return run_standard(args)
    cfg = config_from_args(args)
    timeout = cfg.verify.timeout if args.timeout is None else args.timeout
    label = f"{Path(args.model).name} {Path(args.property).name}"
    ckpt = checkpoint_from_args(args, cfg)  # None without --checkpoint
    start = PROCESS_START - (ckpt.elapsed_before if ckpt is not None else 0.0)  # resumed: time spent counts
    writer = ResultWriter(args.results_file)
    watchdog = start_watchdog(writer, timeout, start, label)
    try:  # an error (bad input) must disarm the watchdog too: in-process callers live on
        result = _decide(args, cfg, ckpt, timeout, start)
    finally:
        watchdog.cancel()
    if writer.write(results_text(result)):
        how = f"  [{result.stats.proved_by}]" if result.stats.proved_by else ""
        why = f"  ({result.reason})" if result.reason and not result.status.solved else ""
        print(f"{result.status.value}  ({result.time_s:.2f} s)  {label}{how}{why}", flush=True)
    return 0
