"""``bab bench LIST.csv``: run a VNN-COMP instance list, score it, and summarise.

Progress goes to stderr (a rich progress bar on a terminal, one line per instance otherwise),
then a per-network table (stderr) and exactly one summary line on stdout. Exit code 0 when
no answer was wrong, 1 otherwise, 2 for bad input (or ``--executor ray`` without Ray).

``--executor process`` (default) runs ``--jobs`` verifier processes here; ``--executor ray``
runs every instance as a Ray task (docs/cluster.md). Both give the same rows; ``--output``
is rewritten as rows finish, and ``--resume`` keeps the rows it already holds.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_WRONG, EXIT_BAD_INPUT = 0, 1, 2


def register(sub: Any) -> None:
    """Add the ``bench`` sub-command."""
    from bab.commands.executor_options import add_executor_arguments

    p = sub.add_parser(
        "bench", help="run and score a VNN-COMP instance list",
        description="Run every instance of a list (onnx,vnnlib,timeout) in its own "
                    "`bab verify` process and score the answers (VNN-COMP 2021 points, "
                    "no time bonus).")
    p.add_argument("list", help="instances CSV: onnx,vnnlib,timeout per line")
    p.add_argument("--root", default=None,
                   help="folder the list's paths are relative to (default: the list's folder)")
    p.add_argument("--method", default=None, help="passed to `bab verify --method`")
    p.add_argument("--timeout-cap", type=float, default=None, metavar="S",
                   help="run each instance for at most S seconds")
    p.add_argument("--expected", default=None, metavar="EXPECTED.csv",
                   help="expected answers: benchmark,onnx,vnnlib,timeout,expected[,note]")
    p.add_argument("--output", default=None, metavar="RESULTS.csv",
                   help="write one CSV row per instance (updated as instances finish)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="instances run in parallel (default 1; with --executor ray: a local "
                        "cluster of N tasks' CPUs, or at most N tasks at once on --address)")
    add_executor_arguments(p)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="passed to `bab verify --device`; with ray, cuda tasks ask for one GPU")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows --output already holds and run only the others")
    p.add_argument("--results-dir", default=None, metavar="DIR",
                   help="keep every instance's results file (verdict and witness) in DIR")
    p.add_argument("--extra-args", default="", metavar='"..."',
                   help="extra arguments appended to every `bab verify` call")
    p.set_defaults(func=run)


class Reporter:
    """Progress on stderr: a rich bar on a terminal, one plain line per instance otherwise."""

    def __init__(self, total: int, console: Any) -> None:
        self.total = total
        self.console = console
        self.rows: dict[int, Any] = {}
        self.progress: Any = None
        self.task: Any = None
        self.output: Path | None = None
        self.results_dir: Path | None = None

    def __enter__(self) -> "Reporter":
        if self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                                       TextColumn, TimeElapsedColumn)

            self.progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=12),
                MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[counts]}"),
                console=self.console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task("bench", total=self.total, counts="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def counts(self) -> str:
        """Counts so far, e.g. ``sat=1 unsat=3 unk=0 t/o=0 err=0 wrong=0``."""
        from bab.bench import summarise

        s = summarise(list(self.rows.values()))
        return (f"sat={s.sat} unsat={s.unsat} unk={s.unknown} t/o={s.timeout} "
                f"err={s.error} wrong={s.wrong}")

    def on_start(self, index: int, inst: Any) -> None:
        """An instance started."""
        if self.progress is not None:
            name = f"{Path(inst.onnx).name} {Path(inst.vnnlib).name}"
            if len(name) > 48:
                name = name[:22] + "…" + name[-25:]
            self.progress.update(self.task, description=f"[{index + 1}/{self.total}] {name}")

    def on_done(self, index: int, row: Any) -> None:
        """An instance finished: update counts, the bar and the results file."""
        from bab.bench import write_results_csv

        self.rows[index] = row
        if self.output is not None:
            write_results_csv([self.rows[i] for i in sorted(self.rows)], self.output)
        if self.results_dir is not None and row.output:
            (self.results_dir / result_name(index, row)).write_text(row.output, encoding="utf-8")
        mark = " WRONG" if row.correct == "no" else ""
        why = f" ({row.detail[:160]})" if row.correct == "no" or row.result == "error" else ""
        if self.progress is not None:
            self.progress.update(self.task, completed=len(self.rows), counts=self.counts())
            if why:
                self.progress.console.print(f"{row.result}{mark}: {row.onnx} {row.vnnlib}{why}",
                                            markup=False, highlight=False)
        else:
            self.console.print(
                f"[{len(self.rows)}/{self.total}] {row.result}{mark} {row.time_s:.2f}s "
                f"{row.onnx} {row.vnnlib}{why}", markup=False, highlight=False, soft_wrap=True)


def network_table(rows: list[Any]) -> Any:
    """A rich table of per-network counts and median times."""
    from rich.table import Table

    from bab.bench import network_stats

    table = Table(title="per network", title_justify="left")
    for name in ("network", "n", "solved", "sat", "unsat", "wrong", "med s", "med solved s"):
        if name == "network":
            table.add_column(name, overflow="fold")
        else:
            table.add_column(name, justify="right")
    for s in network_stats(rows):
        solved_med = "-" if s.median_solved_time_s is None else f"{s.median_solved_time_s:.2f}"
        table.add_row(s.onnx, str(s.total), str(s.solved), str(s.sat), str(s.unsat),
                      str(s.wrong), f"{s.median_time_s:.2f}", solved_med)
    return table


def result_name(index: int, row: Any) -> str:
    """The file name of an instance's kept results file (list position, network, property)."""
    stem = "_".join(Path(p).name.split(".")[0] for p in (row.onnx, row.vnnlib))
    return f"{index + 1:04d}_{stem}.txt"


def _options(args: argparse.Namespace) -> Any:
    """Bench options from the command line (raises ``BenchInputError`` on bad values)."""
    from bab.bench import BenchInputError, BenchOptions, read_expected, verify_command

    if args.jobs is not None and args.jobs < 1:
        raise BenchInputError("--jobs must be at least 1")
    if args.timeout_cap is not None and not args.timeout_cap > 0:
        raise BenchInputError("--timeout-cap must be positive")
    if args.resume and not args.output:
        raise BenchInputError("--resume needs --output (the results CSV to continue)")
    from bab.commands.executor_options import executor_argument_error

    if (problem := executor_argument_error(args)) is not None:
        raise BenchInputError(problem)
    try:
        extra = shlex.split(args.extra_args)
    except ValueError as exc:
        raise BenchInputError(f"--extra-args: {exc}") from None
    if args.device:
        extra += ["--device", args.device]
    expected = read_expected(args.expected) if args.expected else {}
    executor = None
    if args.executor == "ray":
        extra, executor = ray_executor(list(extra), args)
    else:
        extra = share_cores(list(extra), args.jobs or 1)
    return BenchOptions(command_factory=verify_command(args.method, extra), expected=expected,
                        timeout_cap=args.timeout_cap, jobs=args.jobs or 1, executor=executor)


def task_threads(extra: list[str]) -> int | None:
    """The ``verify.threads`` value the extra arguments set (the last one), else ``None``."""
    found = None
    for arg in extra:
        if arg.startswith("verify.threads="):
            found = arg.split("=", 1)[1]
    if found is None:
        return None
    try:
        return int(found)
    except ValueError:
        from bab.bench import BenchInputError

        raise BenchInputError(f"bad verify.threads value {found!r}") from None


def ray_executor(extra: list[str], args: argparse.Namespace) -> tuple[list[str], Any]:
    """The extra arguments (one torch thread per task unless set) and the Ray executor:
    every task asks for as many CPUs as its threads, and one GPU with ``--device cuda``."""
    from bab.bench import BenchInputError
    from bab.commands.executor_options import ray_executor_for
    from bab.executors import ExecutorUnavailable, require_ray

    try:
        require_ray()
    except ExecutorUnavailable as exc:
        raise BenchInputError(f"--executor ray: {exc}") from None
    threads = task_threads(extra)
    if threads is None:
        threads, extra = 1, [*extra, "--set", "verify.threads=1"]
    if threads < 1:
        raise BenchInputError("--executor ray needs verify.threads >= 1 (each task asks for "
                              "that many CPUs)")
    gpus = 1 if args.device == "cuda" else 0
    return extra, ray_executor_for(args.address, args.jobs, threads, gpus)


def run(args: argparse.Namespace) -> int:
    """Run the list; print the table (stderr) and the summary line (stdout)."""
    from rich.console import Console

    from bab.bench import (BenchInputError, finished_rows, read_instances, read_results_csv,
                           run_bench, summarise)
    from bab.executors import ExecutorUnavailable

    console = Console(stderr=True)
    if not console.is_terminal:  # a log file: no need to wrap at 80 columns
        console = Console(stderr=True, width=max(console.width, 140))
    try:
        instances = read_instances(args.list, args.root)
        options = _options(args)
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        if args.results_dir:
            Path(args.results_dir).mkdir(parents=True, exist_ok=True)
        done = (finished_rows(instances, read_results_csv(args.output), options.expected)
                if args.resume else {})
    except (BenchInputError, OSError) as exc:
        print(f"bab bench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    with Reporter(len(instances), console) as reporter:
        reporter.output = Path(args.output) if args.output else None
        reporter.results_dir = Path(args.results_dir) if args.results_dir else None
        reporter.rows.update(done)
        try:
            rows = run_bench(instances, options, on_start=reporter.on_start,
                             on_done=reporter.on_done, finished=done)
        except ExecutorUnavailable as exc:
            print(f"bab bench: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    console.print(network_table(rows))
    summary = summarise(rows)
    print(summary.line(), flush=True)
    return EXIT_OK if summary.wrong == 0 else EXIT_WRONG


def share_cores(extra: list[str], jobs: int) -> list[str]:
    """With ``--jobs N > 1`` each instance gets ``cores // N`` torch threads (at least one)
    unless the extra arguments set ``verify.threads``: OpenMP teams larger than the free cores
    stall at every parallel region, which made bound passes many times slower in our runs."""
    if jobs <= 1 or any("verify.threads" in a for a in extra):
        return extra
    import os

    return [*extra, "--set", f"verify.threads={max(1, (os.cpu_count() or 1) // jobs)}"]
