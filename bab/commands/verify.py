"""``bab verify MODEL.onnx PROP.vnnlib``: one instance, VNN-COMP results file, one-line verdict."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bab.commands.common import add_config_args, config_from_args

GRACE_S = 1.0  # the watchdog fires this long after the deadline, well inside the 2 s allowed


def register(sub: Any) -> None:
    """Add the ``verify`` sub-command."""
    p = sub.add_parser("verify", help="verify one ONNX network against one VNN-LIB property",
                       description="Falsify, then bound; writes a VNN-COMP results file.")
    p.add_argument("model", help="network (.onnx or .onnx.gz)")
    p.add_argument("property", help="property (.vnnlib)")
    p.add_argument("--timeout", type=float, default=None, help="wall-clock limit in seconds (hard)")
    p.add_argument("--results-file", default=None, help="VNN-COMP results file to write")
    add_config_args(p)
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


def run(args: argparse.Namespace) -> int:
    """Run one instance; the timeout counts from process start."""
    from bab.cli import PROCESS_START

    cfg = config_from_args(args)
    timeout = cfg.verify.timeout if args.timeout is None else args.timeout
    label = f"{Path(args.model).name} {Path(args.property).name}"
    writer = ResultWriter(args.results_file)
    watchdog = start_watchdog(writer, timeout, PROCESS_START, label)
    from bab.api import verify

    result = verify(args.model, args.property, cfg, timeout=timeout, start=PROCESS_START)
    watchdog.cancel()
    if writer.write(results_text(result)):
        how = f"  [{result.stats.proved_by}]" if result.stats.proved_by else ""
        why = f"  ({result.reason})" if result.reason and not result.status.solved else ""
        print(f"{result.status.value}  ({result.time_s:.2f} s)  {label}{how}{why}", flush=True)
    return 0
