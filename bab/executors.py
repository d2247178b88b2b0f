"""Executors: run independent tasks, here or on a Ray cluster, and hand back results as they finish.

An :class:`Executor` maps a picklable function over items. Results reach ``on_done(index,
result)`` in the calling process, one at a time, in completion order; :meth:`Executor.run`
returns them in item order. Nothing here prints or writes files.

* :class:`ThreadExecutor` - ``jobs`` threads in this process (the bench's tasks each start and
  watch their own verifier process, so threads are enough);
* :class:`RayExecutor` - one Ray task per item on an existing cluster (``address``) or on a
  local one it starts and stops; every task asks for ``num_cpus`` CPUs (its thread count)
  or ``num_gpus`` GPUs. Ray is an optional extra (``pip install "bab-verifier[ray]"``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

OnStart = Callable[[int], None]
OnDone = Callable[[int, Any], None]


class ExecutorUnavailable(RuntimeError):
    """The executor cannot run here (e.g. Ray is not installed); the message says why."""


class Executor(Protocol):
    """Runs ``fn(item)`` for every item."""

    def run(self, fn: Callable[[Any], Any], items: Sequence[Any], *,
            on_start: OnStart | None = None, on_done: OnDone | None = None) -> list[Any]:
        """Results in item order; callbacks in this process, under a lock."""
        ...


@dataclass
class ThreadExecutor:
    """``jobs`` worker threads (one: run in the calling thread). ``cancel`` is called once when
    the run is interrupted (an exception or ``KeyboardInterrupt``), before waiting for the
    running tasks: it should make them return quickly (e.g. kill their processes)."""

    jobs: int = 1
    cancel: Callable[[], None] | None = None
    stopped: bool = field(default=False, init=False)

    def run(self, fn: Callable[[Any], Any], items: Sequence[Any], *,
            on_start: OnStart | None = None, on_done: OnDone | None = None) -> list[Any]:
        """See :class:`Executor`."""
        lock = threading.Lock()
        results: list[Any] = [None] * len(items)

        def work(index: int) -> None:
            if self.stopped:
                return
            if on_start is not None:
                with lock:
                    on_start(index)
            results[index] = fn(items[index])
            if on_done is not None:
                with lock:
                    on_done(index, results[index])

        pool = ThreadPoolExecutor(max_workers=self.jobs) if self.jobs > 1 else None
        try:
            if pool is None:
                for index in range(len(items)):
                    work(index)
            else:
                for future in [pool.submit(work, i) for i in range(len(items))]:
                    future.result()
        except BaseException:
            self.stopped = True
            if self.cancel is not None:
                self.cancel()
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return results


def require_ray() -> Any:
    """The ``ray`` module, or :class:`ExecutorUnavailable` with the install hint."""
    try:
        import ray
    except ImportError:
        raise ExecutorUnavailable(
            "the Ray executor needs Ray: pip install \"bab-verifier[ray]\" (or \"ray>=2.9\")") from None
    return ray


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A ``host:port`` or ``ray://host:port`` address must accept a TCP connection (Ray itself
    keeps retrying an unreachable one for minutes); ``auto`` and the like pass unchecked."""
    import socket

    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ExecutorUnavailable(f"cannot reach a Ray cluster at {address}: {exc}") from None


def project_root() -> str:
    """This checkout's root folder (put on the workers' ``PYTHONPATH``)."""
    return str(Path(__file__).resolve().parent.parent)


@dataclass
class RayExecutor:
    """One Ray task per item. ``address``: an existing cluster (``auto``, ``ray://...`` or
    ``host:port``); ``None`` starts a local cluster with ``local_cpus`` CPUs (all by default)
    for the run. ``max_in_flight`` caps the tasks submitted at once (``None``: all; the
    cluster's free resources decide what runs)."""

    address: str | None = None
    num_cpus: float = 1
    num_gpus: float = 0
    local_cpus: int | None = None
    max_in_flight: int | None = None

    def _connect(self, ray: Any) -> bool:
        """Connect (or start a local cluster); True when this call started Ray."""
        if ray.is_initialized():
            return False
        import os

        path = os.pathsep.join(p for p in (project_root(), os.environ.get("PYTHONPATH")) if p)
        kw: dict[str, Any] = dict(runtime_env={"env_vars": {"PYTHONPATH": path}}, log_to_driver=False)
        if self.address is None:
            kw.update(num_cpus=self.local_cpus, include_dashboard=False)
        else:
            check_reachable(self.address)
            kw["address"] = self.address
        try:
            ray.init(**kw)
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; all mean "cannot connect"
            where = self.address or "a local cluster"
            raise ExecutorUnavailable(f"cannot start Ray on {where}: {exc}") from None
        return True

    @contextmanager
    def session(self) -> Iterator[Any]:
        """The ``ray`` module, connected for the block (a local cluster started here is
        stopped after it); runs inside the block share the connection."""
        ray = require_ray()
        started = self._connect(ray)
        try:
            yield ray
        finally:
            if started:
                ray.shutdown()

    def run(self, fn: Callable[[Any], Any], items: Sequence[Any], *,
            on_start: OnStart | None = None, on_done: OnDone | None = None) -> list[Any]:
        """See :class:`Executor`; ``on_start`` is called when a task is submitted."""
        require_ray()
        if not items:
            return []
        with self.session() as ray:
            return self._run(ray, fn, items, on_start, on_done)

    def _run(self, ray: Any, fn: Callable[[Any], Any], items: Sequence[Any],
             on_start: OnStart | None, on_done: OnDone | None) -> list[Any]:
        remote = ray.remote(_apply).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)
        fn_ref = ray.put(fn)  # shipped once, not with every task
        results: list[Any] = [None] * len(items)
        waiting = list(range(len(items)))
        pending: dict[Any, int] = {}
        limit = self.max_in_flight or len(items)
        try:
            while waiting or pending:
                while waiting and len(pending) < limit:
                    index = waiting.pop(0)
                    if on_start is not None:
                        on_start(index)
                    pending[remote.remote(fn_ref, items[index])] = index
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    index = pending.pop(ref)
                    results[index] = ray.get(ref)
                    if on_done is not None:
                        on_done(index, results[index])
        except BaseException:
            for ref in pending:  # not forced: the task gets KeyboardInterrupt and cleans up
                ray.cancel(ref)
            raise
        return results


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    """The body of a Ray task (Ray resolves ``fn``'s object reference before the call)."""
    return fn(item)
