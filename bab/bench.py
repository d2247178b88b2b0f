"""Run a VNN-COMP instance list, one verifier process per instance, and score the answers.

Pure pieces (reading lists and expected answers, judging, scoring, summaries) are plain
functions over dataclasses; :func:`run_bench` adds the subprocesses (started and killed by
:mod:`bab.bench_process`), run by an executor of :mod:`bab.executors` (threads here, or Ray
tasks). Nothing here prints: callers get progress
through the ``on_start`` / ``on_done`` callbacks.

Scoring follows VNN-COMP 2021 (vnncomp.md §6): a correct ``sat`` or ``unsat`` earns 10
points, a wrong answer -100, anything else 0. There is no time bonus: that bonus ranks tools
against each other and a bench run has only one tool.

Judging (``correct`` column):

* ``sat`` whose witness fails :func:`bab.witness.check_witness` -> wrong, whatever is expected;
* ``sat``/``unsat`` against an expected ``sat``/``unsat`` -> right or wrong by equality (a
  valid witness against an expected ``unsat`` is still flagged wrong: one of the two is broken);
* ``sat`` with a valid witness where the expected answer is ``unknown`` (or the instance is
  not in the expected file) -> correct: the witness is a proof;
* ``unsat`` where the expected answer is ``unknown`` / absent -> solved but unjudged: the
  ``correct`` column stays blank and it scores 0, since nothing can confirm it;
* ``unknown``/``timeout``/``error`` -> blank, 0 points.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bab.bench_process import CommandFactory, ProcessRegistry, log_tail, run_process, verify_command

RESULT_WORDS = ("sat", "unsat", "unknown", "timeout", "error")
CSV_COLUMNS = (
    "benchmark", "onnx", "vnnlib", "result", "time_s", "expected", "correct",
    "witness_ok", "sat_invalid", "timeout_s", "detail",
)
POINTS_CORRECT = 10
POINTS_WRONG = -100
GRACE_S = 10.0

class BenchInputError(ValueError):
    """Bad input to a bench run (missing or malformed list / expected file)."""


@dataclass(frozen=True)
class Instance:
    """One line of an instance list; ``onnx``/``vnnlib`` as written, ``*_path`` resolved."""

    benchmark: str
    onnx: str
    vnnlib: str
    timeout: float
    onnx_path: Path
    vnnlib_path: Path

    @property
    def key(self) -> tuple[str, str, str]:
        """Key for matching expected answers."""
        return expected_key(self.benchmark, self.onnx, self.vnnlib)


@dataclass
class BenchRow:
    """The outcome of one instance."""

    benchmark: str
    onnx: str
    vnnlib: str
    result: str
    time_s: float
    expected: str = ""
    witness_ok: bool | None = None  # None: not a sat answer
    timeout_s: float = 0.0
    detail: str = ""
    output: str = field(default="", repr=False)  # the results file (verdict, witness); not in the CSV

    @property
    def solved(self) -> bool:
        """A definite verdict (right or wrong)."""
        return self.result in ("sat", "unsat")

    @property
    def sat_invalid(self) -> bool:
        """A ``sat`` whose witness failed the check."""
        return self.result == "sat" and self.witness_ok is False

    @property
    def correct(self) -> str:
        """``yes``, ``no`` or ``""`` (unsolved, or unjudgeable); see the module docstring."""
        return judge(self.result, self.expected, self.witness_ok)

    @property
    def points(self) -> int:
        """VNN-COMP 2021 points without time bonus."""
        return {"yes": POINTS_CORRECT, "no": POINTS_WRONG}.get(self.correct, 0)


@dataclass(frozen=True)
class BenchSummary:
    """Counts over a run."""

    solved: int = 0
    sat: int = 0
    unsat: int = 0
    unknown: int = 0
    timeout: int = 0
    error: int = 0
    wrong: int = 0
    total: int = 0
    score: int = 0

    def line(self) -> str:
        """The one-line summary printed at the end of ``bab bench``."""
        return (
            f"solved={self.solved} sat={self.sat} unsat={self.unsat} unknown={self.unknown} "
            f"timeout={self.timeout} error={self.error} wrong={self.wrong} "
            f"total={self.total} score={self.score}"
        )


@dataclass(frozen=True)
class NetworkStats:
    """Per-network counts for the report table (median times over all / solved runs)."""

    onnx: str
    total: int
    solved: int
    sat: int
    unsat: int
    wrong: int
    median_time_s: float
    median_solved_time_s: float | None


# ---------------------------------------------------------------- lists and expected answers


def normalise_path(path: str) -> str:
    """A list path for matching: whitespace and any leading ``./`` removed."""
    path = path.strip()
    while path.startswith("./"):
        path = path[2:]
    return path


def expected_key(benchmark: str, onnx: str, vnnlib: str) -> tuple[str, str, str]:
    """The (benchmark, onnx, vnnlib) key with both paths normalised."""
    return benchmark.strip(), normalise_path(onnx), normalise_path(vnnlib)


def _csv_rows(text: str) -> Iterable[tuple[int, list[str]]]:
    """Non-blank CSV rows with 1-based line numbers (CRLF and a missing final newline ok)."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        row = next(csv.reader(io.StringIO(line)), [])
        yield number, [cell.strip() for cell in row]


def _read_text(path: Path) -> str:
    """File text (UTF-8, optional BOM), or ``BenchInputError``."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise BenchInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BenchInputError(f"{path} is not UTF-8 text") from None


def parse_instances(text: str, benchmark: str, base: Path,
                    source: str = "<list>") -> list[Instance]:
    """Parse ``onnx,vnnlib,timeout`` lines; paths resolved against ``base``."""
    instances: list[Instance] = []
    for number, row in _csv_rows(text):
        if len(row) != 3 or not row[0] or not row[1]:
            raise BenchInputError(f"{source}:{number}: expected 'onnx,vnnlib,timeout'")
        try:
            timeout = float(row[2])
        except ValueError:
            raise BenchInputError(f"{source}:{number}: bad timeout {row[2]!r}") from None
        if not timeout > 0:
            raise BenchInputError(f"{source}:{number}: timeout must be positive")
        instances.append(Instance(benchmark, row[0], row[1], timeout, base / row[0],
                                  base / row[1]))
    return instances


def read_instances(list_path: str | Path, root: str | Path | None = None) -> list[Instance]:
    """Read an instance list; the benchmark name is the list's folder name.

    Paths are relative to the list's folder, or to ``root`` when given. Raises
    ``BenchInputError`` for a missing/malformed list or missing instance files.
    """
    path = Path(list_path)
    if not path.is_file():
        raise BenchInputError(f"instance list not found: {path}")
    folder = path.resolve().parent
    base = Path(root).resolve() if root is not None else folder
    if not base.is_dir():
        raise BenchInputError(f"root folder not found: {base}")
    instances = parse_instances(_read_text(path), folder.name, base, str(path))
    if not instances:
        raise BenchInputError(f"no instances in {path}")
    missing = sorted({str(p) for i in instances for p in (i.onnx_path, i.vnnlib_path)
                      if not p.is_file()})
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise BenchInputError(f"missing instance files: {', '.join(missing[:3])}{more}")
    return instances


def parse_expected(text: str, source: str = "<expected>") -> dict[tuple[str, str, str], str]:
    """Parse ``benchmark,onnx,vnnlib,timeout,expected[,note]`` (header row required)."""
    rows = list(_csv_rows(text))
    if not rows:
        return {}
    header = [h.lower() for h in rows[0][1]]
    needed = ("benchmark", "onnx", "vnnlib", "expected")
    if any(h not in header for h in needed):
        raise BenchInputError(f"{source}: header must name {', '.join(needed)}")
    col = {name: header.index(name) for name in needed}
    table: dict[tuple[str, str, str], str] = {}
    for number, row in rows[1:]:
        if len(row) < len(header) - 1 or len(row) <= max(col.values()):
            raise BenchInputError(f"{source}:{number}: too few columns")
        answer = row[col["expected"]].lower()
        if answer not in ("sat", "unsat", "unknown"):
            raise BenchInputError(f"{source}:{number}: bad expected answer {answer!r}")
        key = expected_key(row[col["benchmark"]], row[col["onnx"]], row[col["vnnlib"]])
        table[key] = answer
    return table


def read_expected(path: str | Path) -> dict[tuple[str, str, str], str]:
    """Read an expected-answers CSV (see :func:`parse_expected`)."""
    path = Path(path)
    if not path.is_file():
        raise BenchInputError(f"expected-answers file not found: {path}")
    return parse_expected(_read_text(path), str(path))


# ----------------------------------------------------------------------- judging and scoring


def normalise_result(first_line: str) -> str:
    """Map a result file's first line to a result word (2021 words and prefixes accepted).

    Anything unrecognised (e.g. the harness's ``no_result_in_file``) becomes ``error``.
    """
    word = "".join(first_line.split()).lower()
    if word.startswith("unsat") or word.startswith("holds"):
        return "unsat"
    if word.startswith("sat") or word.startswith("violated"):
        return "sat"
    for name in ("unknown", "timeout"):
        if word.startswith(name):
            return name
    return "error"


def judge(result: str, expected: str, witness_ok: bool | None) -> str:
    """``yes`` / ``no`` / ``""`` for one answer (rules in the module docstring)."""
    if result == "sat" and witness_ok is False:
        return "no"
    if result not in ("sat", "unsat"):
        return ""
    if expected in ("sat", "unsat"):
        return "yes" if result == expected else "no"
    if result == "sat" and witness_ok:
        return "yes"
    return ""


def summarise(rows: Sequence[BenchRow]) -> BenchSummary:
    """Counts and score over ``rows``."""
    counts = {word: sum(r.result == word for r in rows) for word in RESULT_WORDS}
    return BenchSummary(
        solved=sum(r.solved for r in rows), **counts, wrong=sum(r.correct == "no" for r in rows),
        total=len(rows), score=sum(r.points for r in rows))


def network_stats(rows: Sequence[BenchRow]) -> list[NetworkStats]:
    """Per-network (onnx as written, normalised) counts, in first-seen order."""
    groups: dict[str, list[BenchRow]] = {}
    for row in rows:
        groups.setdefault(normalise_path(row.onnx), []).append(row)
    stats = []
    for onnx, group in groups.items():
        solved = [r.time_s for r in group if r.solved]
        stats.append(NetworkStats(
            onnx, len(group), len(solved), sum(r.result == "sat" for r in group),
            sum(r.result == "unsat" for r in group), sum(r.correct == "no" for r in group),
            statistics.median(r.time_s for r in group),
            statistics.median(solved) if solved else None))
    return stats


def row_to_csv(row: BenchRow) -> list[str]:
    """The CSV cells of one row, in ``CSV_COLUMNS`` order."""
    witness = {None: "", True: "yes", False: "no"}[row.witness_ok]
    return [
        row.benchmark, row.onnx, row.vnnlib, row.result, f"{row.time_s:.3f}",
        row.expected, row.correct, witness, "true" if row.sat_invalid else "false",
        f"{row.timeout_s:g}", " ".join(row.detail.split()),
    ]


def write_results_csv(rows: Iterable[BenchRow], path: str | Path) -> None:
    """Write the results CSV (header plus one row per instance), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(row_to_csv(r) for r in rows)
    os.replace(tmp, path)


def read_results_csv(path: str | Path) -> list[BenchRow]:
    """Rows of a results CSV written by :func:`write_results_csv` (``expected`` as written;
    lines cut short or malformed are skipped). A missing file has no rows."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            try:
                witness = {"": None, "yes": True, "no": False}[rec["witness_ok"]]
                rows.append(BenchRow(rec["benchmark"], rec["onnx"], rec["vnnlib"], rec["result"],
                                     float(rec["time_s"]), rec["expected"], witness,
                                     float(rec["timeout_s"]), rec["detail"] or ""))
            except (KeyError, ValueError, TypeError):
                continue
    return [r for r in rows if r.result in RESULT_WORDS]


def finished_rows(instances: Sequence[Instance], rows: Iterable[BenchRow],
                  expected: dict[tuple[str, str, str], str]) -> dict[int, BenchRow]:
    """Index -> earlier row of every instance that ``rows`` already hold (matched by key, in
    order for repeated keys); ``expected`` is refreshed from the current table."""
    by_key: dict[tuple[str, str, str], list[BenchRow]] = {}
    for row in rows:
        by_key.setdefault(expected_key(row.benchmark, row.onnx, row.vnnlib), []).append(row)
    done: dict[int, BenchRow] = {}
    for index, inst in enumerate(instances):
        queue = by_key.get(inst.key)
        if queue:
            row = queue.pop(0)
            row.expected = expected.get(inst.key, "")
            done[index] = row
    return done


# ------------------------------------------------------------------------------ processes


def run_instance(
    inst: Instance,
    command_factory: CommandFactory,
    *,
    timeout_cap: float | None = None,
    expected: str = "",
    grace_s: float = GRACE_S,
    registry: ProcessRegistry | None = None,
) -> BenchRow:
    """Run one instance in its own process and read (and check) its result file."""
    t = inst.timeout if timeout_cap is None else min(inst.timeout, timeout_cap)
    row = BenchRow(inst.benchmark, inst.onnx, inst.vnnlib, "error", 0.0,
                   expected=expected, timeout_s=t)
    with tempfile.TemporaryDirectory(prefix="bab-bench-") as tmp:
        results_file = Path(tmp) / "result.txt"
        cmd = command_factory(inst.onnx_path, inst.vnnlib_path, t, results_file)
        try:
            code, row.time_s = run_process(cmd, t + grace_s, Path(tmp) / "log.txt", registry)
        except OSError as exc:
            row.detail = f"cannot start verifier: {exc}"
            return row
        if code is None:
            row.result, row.detail = "timeout", f"killed after {t + grace_s:g} s"
            return row
        if code != 0:
            row.detail = f"exit code {code}: {log_tail(Path(tmp) / 'log.txt')}"
            return row
        try:
            text = results_file.read_text(errors="replace")
        except OSError:
            text = ""
        first = text.splitlines()[0] if text.strip() else ""
        if not first.strip():
            row.detail = "empty or missing results file"
            return row
        row.result, row.output = normalise_result(first), text
        if row.result == "error":
            row.detail = f"result line {first.strip()[:80]!r}"
    if row.result == "sat":
        from bab.witness import check_result_text

        row.witness_ok, row.detail = check_result_text(text, inst.onnx_path, inst.vnnlib_path)
    return row


@dataclass
class BenchOptions:
    """Settings of a bench run besides the instances."""

    command_factory: CommandFactory = field(default_factory=verify_command)
    expected: dict[tuple[str, str, str], str] = field(default_factory=dict)
    timeout_cap: float | None = None
    jobs: int = 1
    grace_s: float = GRACE_S
    executor: Any = None  # a bab.executors.Executor; None: jobs threads here


@dataclass
class InstanceTask:
    """``run_instance`` for one ``(instance, expected answer)`` item (picklable for Ray when
    ``registry`` is ``None``: a remote task then tracks its own process)."""

    command_factory: CommandFactory
    timeout_cap: float | None
    grace_s: float
    registry: ProcessRegistry | None = None

    def __call__(self, item: tuple[Instance, str]) -> BenchRow:
        inst, expected = item
        return run_instance(inst, self.command_factory, timeout_cap=self.timeout_cap,
                            expected=expected, grace_s=self.grace_s, registry=self.registry)


def run_bench(
    instances: Sequence[Instance],
    options: BenchOptions | None = None,
    *,
    on_start: Callable[[int, Instance], None] | None = None,
    on_done: Callable[[int, BenchRow], None] | None = None,
    finished: dict[int, BenchRow] | None = None,
) -> list[BenchRow]:
    """Run every instance not in ``finished`` (index -> earlier row, kept as is) with the
    options' executor (default: ``options.jobs`` threads); rows come back in list order.

    Callbacks get the instance's index and are called under a lock (one at a time). On an
    exception or ``KeyboardInterrupt`` every running verifier process group is killed.
    """
    from bab.executors import ThreadExecutor

    opts = options or BenchOptions()
    done = dict(finished or {})
    todo = [i for i in range(len(instances)) if i not in done]
    executor = opts.executor
    registry = None
    if executor is None:
        registry = ProcessRegistry()
        executor = ThreadExecutor(opts.jobs, cancel=registry.kill_all)
    task = InstanceTask(opts.command_factory, opts.timeout_cap, opts.grace_s, registry)
    items = [(instances[i], opts.expected.get(instances[i].key, "")) for i in todo]

    def started(k: int) -> None:
        if on_start is not None:
            on_start(todo[k], instances[todo[k]])

    def finished_one(k: int, row: BenchRow) -> None:
        done[todo[k]] = row
        if on_done is not None:
            on_done(todo[k], row)

    executor.run(task, items, on_start=started, on_done=finished_one)
    return [done[i] for i in range(len(instances)) if i in done]
