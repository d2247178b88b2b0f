"""One verifier process per bench instance: its command line, and running it in its own
session with a hard kill at the deadline (:mod:`bab.bench` judges what it wrote)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CommandFactory = Callable[[Path, Path, float, Path], list[str]]
"""``(onnx, vnnlib, timeout_s, results_file) -> argv`` for one verifier process."""


def fmt_seconds(t: float) -> str:
    """``300`` for whole seconds, else a round-tripping decimal."""
    return str(int(t)) if float(t).is_integer() else repr(float(t))


def verify_command(method: str | None = None, extra_args: Sequence[str] = ()) -> CommandFactory:
    """The default factory: ``python -m bab verify ...`` with optional method / extra args."""

    def factory(onnx: Path, vnnlib: Path, timeout: float, results_file: Path) -> list[str]:
        cmd = [sys.executable, "-m", "bab", "verify", str(onnx), str(vnnlib),
               "--timeout", fmt_seconds(timeout), "--results-file", str(results_file)]
        if method:
            cmd += ["--method", method]
        return cmd + list(extra_args)

    return factory


class ProcessRegistry:
    """Running verifier processes, so an interrupted run can kill their groups."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.stopped = False

    def add(self, proc: subprocess.Popen) -> None:
        """Track ``proc`` (killed at once if the run was already stopped)."""
        with self._lock:
            self._procs.add(proc)
            if self.stopped:
                kill_group(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        """Stop tracking ``proc`` (call before reaping it)."""
        with self._lock:
            self._procs.discard(proc)

    def kill_all(self) -> None:
        """Kill every tracked process group and refuse new ones."""
        with self._lock:
            self.stopped = True
            for proc in self._procs:
                kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group led by ``proc`` (started with ``start_new_session``)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def project_env() -> dict[str, str]:
    """The environment for children, with this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def wait_unreaped(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait until ``proc`` exits (True) or ``deadline`` passes (False), without reaping it.

    An unreaped (zombie) leader keeps its process-group id reserved, so killing the group
    afterwards cannot hit an unrelated process that reused the pid.
    """
    while True:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if time.perf_counter() >= deadline:
            return False
        time.sleep(0.02)


def run_process(
    cmd: list[str], timeout: float, log_path: Path, registry: ProcessRegistry | None
) -> tuple[int | None, float]:
    """Run ``cmd`` in its own session; ``(exit code or None if killed, wall seconds)``."""
    start = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=project_env(),
        )
    registry = registry if registry is not None else ProcessRegistry()
    registry.add(proc)
    try:
        exited = wait_unreaped(proc, start + timeout)
        elapsed = time.perf_counter() - start
    finally:
        kill_group(proc)  # the hard kill, or stray grandchildren after a normal exit
        registry.discard(proc)
        code = proc.wait()
    return (code if exited else None), elapsed


def log_tail(path: Path, limit: int = 300) -> str:
    """The last ``limit`` characters of a process log."""
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""
