"""The ``--executor``/``--address`` options that ``bab bench`` and ``bab compare`` share, and
the Ray executor built from them (docs/cluster.md)."""

from __future__ import annotations

import argparse
from typing import Any


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--executor process|ray`` and ``--address ADDR``."""
    p.add_argument("--executor", choices=("process", "ray"), default="process",
                   help="process: verifier processes here (default); ray: one Ray task each")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="with --executor ray: an existing cluster (auto, ray://host:port, "
                        "host:port); default: start a local one")


def executor_argument_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of the two options, or ``None``."""
    if args.address and args.executor != "ray":
        return "--address needs --executor ray"
    return None


def ray_executor_for(address: str | None, jobs: int | None, threads: int, gpus: float = 0) -> Any:
    """The Ray executor for ``--executor ray``: tasks of ``threads`` CPUs (and ``gpus`` GPUs);
    a local cluster of ``jobs`` tasks' CPUs (every core without ``--jobs``), or at most
    ``jobs`` tasks in flight on ``address``. Raises ``ExecutorUnavailable`` without Ray."""
    from bab.executors import RayExecutor, require_ray

    require_ray()
    local = None if address or jobs is None else jobs * threads
    return RayExecutor(address=address, num_cpus=threads, num_gpus=gpus, local_cpus=local,
                       max_in_flight=jobs if address else None)
