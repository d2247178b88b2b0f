"""``bab compare --sok``: train the default model zoo on digits and run both SoK tables.

The zoo (:func:`zoo_models`): FCNN-A/B/C and CNN-A/B each trained with PGD and with
CROWN-IBP at ``eps`` (l-inf, digits' [0, 1] scale), plus one architecture trained with
Gaussian, Laplace and uniform noise of the same standard deviation. The deterministic table
(:func:`bab.compare.api.compare`) runs every taxonomy method on the ten eps-trained models
at the same eps; the smoothing table (:func:`bab.compare.smoothing.compare_smoothing`) runs
every smoothing approach on each noise model with its own noise (Gaussian: l2; Laplace,
uniform: l1). :mod:`bab.compare.sok_report` writes ``report/``. Nothing here prints; progress
goes to the ``log`` and ``on_row`` callbacks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOK_EPS = 0.05  # training and comparison radius (l-inf, pixels in [0, 1])
NOISE_STD = 0.25  # standard deviation of every training/smoothing noise
ARCHS = ("fcnn-a", "fcnn-b", "fcnn-c", "cnn-a", "cnn-b")
TRAININGS = ("pgd", "crown-ibp")
NOISE_ARCH = "fcnn-b"
NOISE_NORM = {"gaussian": "2", "laplace": "1", "uniform": "1"}
RADII_L2 = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
RADII_L1 = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
SMOOTHING_FACTOR = 5  # the smoothing table uses 5 x --limit points (it is cheap)
QUICK_METHODS = ("milp", "bab", "lp", "lp-full", "ibp", "crown", "crown-ibp", "alpha-crown", "sdp")

Log = Callable[[str], None]


def noise_scale(noise: str, std: float) -> float:
    """The noise's scale parameter for a standard deviation ``std`` (Gaussian sigma = std;
    Laplace lambda = std / sqrt 2; uniform on [-lambda, lambda]: lambda = std * sqrt 3)."""
    return {"gaussian": std, "laplace": std / math.sqrt(2.0), "uniform": std * math.sqrt(3.0)}[noise]


@dataclass(frozen=True)
class Skip:
    """Methods not run on models of some architectures, with the reason shown in the table."""

    methods: tuple[str, ...]
    archs: tuple[str, ...]
    reason: str  # short, shown in the table cell
    detail: str = ""  # the measurement behind it (README)


DEFAULT_SKIPS = (
    Skip(("sdp", "lmi"), ("fcnn-a",), "no SCS solve within 90 s/point (probe)",
         "on fcnn-a (64 inputs, 40 ReLUs) an SCS solve of the SDP/LMI did not finish within 90 s "
         "per point in a probe, so at 5 s every point would time out (about 200 s of the budget "
         "for nothing); on every other model of the zoo these methods refuse at once (> 200 "
         "hidden units, or Conv layers) and are run"),
    Skip(("smt",), ("fcnn-c", "cnn-a", "cnn-b"), "Z3 times out on >= 484 ReLUs (probe)",
         "Z3 hit the timeout on robust points of cnn-b already (10 s, probe); these models have "
         "484 to 1,792 ReLUs, so every uncertified point would cost the full timeout"),
)


@dataclass(frozen=True)
class ZooModel:
    """One model of the zoo: ``name`` = ``arch-robust`` (noise models: ``arch-noise``)."""

    name: str
    arch: str
    robust: str
    eps: float | None = None
    sigma: float | None = None

    @property
    def noise(self) -> str | None:
        """``gaussian`` / ``laplace`` / ``uniform`` for a noise model, else None."""
        return self.robust.removeprefix("noise-") if self.robust.startswith("noise-") else None


@dataclass(frozen=True)
class SokSettings:
    """Everything that determines a ``--sok`` run (``settings.json`` holds it)."""

    output: Path
    quick: bool = False
    jobs: int = 2
    limit: int = 20
    timeout: float = 5.0
    eps: float = SOK_EPS
    epochs: int = 20
    seed: int = 0
    archs: tuple[str, ...] = ARCHS
    trainings: tuple[str, ...] = TRAININGS
    methods: tuple[str, ...] = ()  # () = every taxonomy method
    skips: tuple[Skip, ...] = DEFAULT_SKIPS
    noise_arch: str = NOISE_ARCH
    noise_std: float = NOISE_STD
    smoothing_limit: int = 100  # 5 x limit
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    radii_l2: tuple[float, ...] = RADII_L2
    radii_l1: tuple[float, ...] = RADII_L1

    def method_names(self) -> list[str]:
        """The methods of the deterministic table (taxonomy order)."""
        from bab.compare.api import method_list

        return method_list(list(self.methods) if self.methods else "all")

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict of the settings."""
        out = dataclasses.asdict(self)
        out["output"] = str(self.output)
        out["methods"] = self.method_names()
        return out


def settings_for(output: str | Path, quick: bool = False, jobs: int | None = None,
                 limit: int | None = None, timeout: float | None = None, seed: int = 0) -> SokSettings:
    """The default (or ``quick``) settings with the given overrides."""
    s = SokSettings(Path(output), seed=seed)
    if quick:
        s = dataclasses.replace(s, quick=True, jobs=1, limit=3, timeout=5.0, epochs=5,
                                archs=("fcnn-a",), methods=QUICK_METHODS, skips=DEFAULT_SKIPS[:1],
                                noise_arch="fcnn-a", n0=20, n=300, alpha=0.01)
    over = {k: v for k, v in (("jobs", jobs), ("limit", limit), ("timeout", timeout)) if v is not None}
    s = dataclasses.replace(s, **over)
    if s.jobs < 1 or s.limit < 1 or not s.timeout > 0:
        from bab.compare.data import CompareInputError

        raise CompareInputError("--jobs and --limit must be >= 1 and --timeout > 0")
    return dataclasses.replace(s, smoothing_limit=SMOOTHING_FACTOR * s.limit)


def zoo_models(s: SokSettings) -> list[ZooModel]:
    """The eps-trained models (arch x training), then the noise models."""
    out = [ZooModel(f"{a}-{r}", a, r, eps=s.eps) for r in s.trainings for a in s.archs]
    out += [ZooModel(f"{s.noise_arch}-{n}", s.noise_arch, f"noise-{n}",
                     sigma=noise_scale(n, s.noise_std)) for n in NOISE_NORM]
    return out


def skipped(s: SokSettings, model: ZooModel) -> dict[str, str]:
    """method -> reason for the methods not run on ``model``."""
    return {m: k.reason for k in s.skips if model.arch in k.archs for m in k.methods}


# ---------------------------------------------------------------- training


def _train_one(model: ZooModel, epochs: int, seed: int, folder: str) -> tuple[str, float]:
    """Train and save one model (runs in a worker process; one torch thread)."""
    import torch

    from bab.training import save_model, train_model

    torch.set_num_threads(1)
    trained = train_model(model.arch, model.robust, eps=model.eps, sigma=model.sigma,
                          epochs=epochs, seed=seed)
    save_model(trained, folder)
    return model.name, trained.time_s


def _reusable(folder: Path, model: ZooModel, epochs: int, seed: int) -> bool:
    """``folder`` already holds this model trained with these settings."""
    try:
        meta = json.loads((folder / "train.json").read_text())
    except (OSError, ValueError):
        return False
    want = {"arch": model.arch, "robust": model.robust, "epochs": epochs, "seed": seed}
    same = all(meta.get(k) == v for k, v in want.items())
    close = all(_same(meta.get(k), v) for k, v in (("eps", model.eps), ("sigma", model.sigma)))
    return same and close and (folder / "model.onnx").is_file() and (folder / "test.npz").is_file()


def _same(a: Any, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(float(a) - b) < 1e-12)


def train_zoo(s: SokSettings, zoo: list[ZooModel], log: Log) -> dict[str, Path]:
    """Train (in ``jobs`` processes) every model not already in ``output/models``; name -> folder."""
    import concurrent.futures as cf
    import multiprocessing as mp

    root = s.output / "models"
    folders = {m.name: root / m.name for m in zoo}
    todo = [m for m in zoo if not _reusable(folders[m.name], m, s.epochs, s.seed)]
    for m in zoo:
        if m not in todo:
            log(f"reusing {folders[m.name]}")
    if not todo:
        return folders
    if s.jobs == 1 or len(todo) == 1:  # no worker start-up cost
        import torch

        threads = torch.get_num_threads()
        try:
            for m in todo:
                name, secs = _train_one(m, s.epochs, s.seed, str(folders[m.name]))
                log(f"trained {name} in {secs:.1f} s")
        finally:
            torch.set_num_threads(threads)
        return folders
    with cf.ProcessPoolExecutor(max_workers=min(s.jobs, len(todo)), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_train_one, m, s.epochs, s.seed, str(folders[m.name])) for m in todo]
        for fut in cf.as_completed(futures):
            name, secs = fut.result()
            log(f"trained {name} in {secs:.1f} s")
    return folders


# ---------------------------------------------------------------- the two tables


@dataclass
class SokResult:
    """A finished ``--sok`` run: the deterministic cells and points, the smoothing rows and
    points, the phases' wall times and the files written."""

    settings: SokSettings
    zoo: list[ZooModel]
    rows: list[Any]  # bab.compare.report.SummaryRow (SkippedRow for skipped cells)
    points: list[Any]  # bab.compare.points.PointRow
    smoothing_rows: list[Any] = field(default_factory=list)  # SmoothingRow
    smoothing_points: list[Any] = field(default_factory=list)  # SmoothingPoint
    times: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def _groups(s: SokSettings, models: list[ZooModel], methods: list[str]) -> list[tuple[list[ZooModel], list[str]]]:
    """Models grouped by the methods they run (one comparison call per group)."""
    groups: dict[tuple[str, ...], list[ZooModel]] = {}
    for m in models:
        skip = skipped(s, m)
        groups.setdefault(tuple(x for x in methods if x not in skip), []).append(m)
    return [(ms, list(names)) for names, ms in groups.items()]


def deterministic(s: SokSettings, zoo: list[ZooModel], folders: dict[str, Path], data: Path,
                  on_row: Callable[[Any], None] | None,
                  executor: Any = None) -> tuple[list[Any], list[Any]]:
    """Table III over the eps-trained models; skipped cells become :class:`SkippedRow`.
    ``executor``: runs the points (see :func:`bab.compare.api.compare`; a Ray cluster is
    connected once for all the groups)."""
    from contextlib import nullcontext

    from bab.compare.api import compare
    from bab.compare.report import summary_rows
    from bab.compare.runner import read_points
    from bab.compare.sok_report import SkippedRow
    from bab.executors import RayExecutor

    models = [m for m in zoo if m.noise is None]
    methods = s.method_names()
    with executor.session() if isinstance(executor, RayExecutor) else nullcontext():
        for group, names in _groups(s, models, methods):
            compare({m.name: folders[m.name] / "model.onnx" for m in group}, data, eps=s.eps,
                    methods=names, limit=s.limit, timeout=s.timeout, jobs=s.jobs, output=s.output,
                    seed=s.seed, processes=True, on_row=on_row, executor=executor)
    points = read_points(s.output / "points.csv")
    names = [m.name for m in models]
    rows = summary_rows(names, methods, list(range(s.limit)), points)
    skips = {(m.name, meth): why for m in models for meth, why in skipped(s, m).items()}
    rows = [SkippedRow(r.model, r.method, r.category, None, r.total, None, skips[(r.model, r.method)])
            if (r.model, r.method) in skips else r for r in rows]
    keep = sorted((p for p in points.values() if p.model in names and p.point < s.limit),
                  key=lambda p: (names.index(p.model), p.method, p.point))
    return rows, keep


def smoothing(s: SokSettings, zoo: list[ZooModel], folders: dict[str, Path], data: Path,
              log: Log) -> tuple[list[Any], list[Any]]:
    """Table IV: every approach on each noise model with its own noise and norm."""
    from bab.compare.smoothing import compare_smoothing
    from bab.smoothing.approaches import APPROACHES

    rows: list[Any] = []
    pts: list[Any] = []
    for m in [m for m in zoo if m.noise is not None]:
        norm = NOISE_NORM[m.noise]
        res = compare_smoothing(
            [folders[m.name] / "model.onnx"], data, norm=norm, noises=(m.noise,), sigma=float(m.sigma),
            approaches=tuple(APPROACHES), radii=s.radii_l2 if norm == "2" else s.radii_l1,
            n0=s.n0, n=s.n, alpha=s.alpha, limit=s.smoothing_limit, seed=s.seed,
            output=s.output / "smoothing" / m.name)
        rows += [dataclasses.replace(r, model=m.name) for r in res.rows]
        pts += [dataclasses.replace(p, model=m.name) for p in res.points]
        log(f"smoothing table done for {m.name}")
    return rows, pts


def run_sok(s: SokSettings, log: Log | None = None, on_row: Callable[[Any], None] | None = None,
            executor: Any = None) -> SokResult:
    """Train (or reuse) the zoo, run both tables and write ``s.output`` (see the module doc).
    ``executor``: where the deterministic table's points run (``None``: ``s.jobs`` worker
    processes here; a ``RayExecutor``: Ray tasks)."""
    from bab.compare.sok_report import write_report

    log = log or (lambda _msg: None)
    s.output.mkdir(parents=True, exist_ok=True)
    zoo = zoo_models(s)
    times: dict[str, float] = {}
    start = time.perf_counter()
    folders = train_zoo(s, zoo, log)
    times["train_s"] = time.perf_counter() - start
    data = folders[zoo[0].name] / "test.npz"
    t = time.perf_counter()
    rows, points = deterministic(s, zoo, folders, data, on_row, executor)
    times["deterministic_s"] = time.perf_counter() - t
    log(f"deterministic table done in {times['deterministic_s']:.0f} s")
    t = time.perf_counter()
    srows, spoints = smoothing(s, zoo, folders, data, log)
    times["smoothing_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - start
    result = SokResult(s, zoo, rows, points, srows, spoints, times)
    result.files = write_report(result)
    return result
