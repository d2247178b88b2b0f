"""The SoK's Table IV: randomized-smoothing certification approaches side by side.

For each model and noise, one sampling pass per point (:mod:`bab.smoothing.approaches.evidence`)
feeds every approach (:mod:`bab.smoothing.approaches`); the table gives the certified accuracy
(correct, not abstained, radius ``>= r``) at each radius. Gaussian noise certifies l2 radii,
Laplace and uniform noise l1 radii; an approach that does not support a (noise, norm) pair is
``n/a`` with the reason. Every certificate is probabilistic (confidence ``1 - alpha``).

Outputs (``output`` given): ``smoothing_summary.csv``, ``smoothing_points.csv``,
``smoothing_table.md``, ``smoothing_curves.png`` and ``smoothing_samples.jsonl`` (the sampled
evidence; a rerun with the same output and settings skips those points).
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bab.smoothing.data import TABLE_RADII, SampleRow, parse_radii
from bab.smoothing.errors import SmoothingError, check_alpha, check_count
from bab.smoothing.noise import NOISES, Noise, make_noise

SUMMARY_COLUMNS = ("model", "noise", "approach", "norm", "radius", "certified_accuracy", "total")
POINT_COLUMNS = ("model", "noise", "approach", "point", "label", "prediction", "radius",
                 "pA_lower", "pB_upper")
NA = "n/a"
NORMS = {"2": 2, "1": 1, "inf": math.inf}


@dataclass(frozen=True)
class SmoothingRow:
    """Certified accuracy of one (model, noise, approach) at one radius; ``None`` for n/a."""

    model: str
    noise: str
    approach: str
    norm: str
    radius: float
    certified_accuracy: float | None
    total: int
    reason: str = ""

    def csv_cells(self) -> list[str]:
        """The cells in :data:`SUMMARY_COLUMNS` order."""
        acc = NA if self.certified_accuracy is None else f"{self.certified_accuracy:.6g}"
        return [self.model, self.noise, self.approach, self.norm, f"{self.radius:g}", acc,
                str(self.total)]


@dataclass(frozen=True)
class SmoothingPoint:
    """One approach's certificate of one point (``prediction`` -1: abstained)."""

    model: str
    noise: str
    approach: str
    point: int
    label: int
    prediction: int
    radius: float
    pA_lower: float
    pB_upper: float

    @property
    def correct(self) -> bool:
        """Certified and right."""
        return self.prediction == self.label

    def csv_cells(self) -> list[str]:
        """The cells in :data:`POINT_COLUMNS` order."""
        return [self.model, self.noise, self.approach, str(self.point), str(self.label),
                str(self.prediction), f"{self.radius:.6g}", f"{self.pA_lower:.6g}",
                f"{self.pB_upper:.6g}"]


@dataclass
class SmoothingCompareResult:
    """The table (``rows``), the per-point certificates and the files written."""

    rows: list[SmoothingRow]
    points: list[SmoothingPoint]
    settings: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    def accuracy(self, model: str, noise: str, approach: str, radius: float) -> float | None:
        """The certified accuracy of one cell (None: n/a); KeyError when absent."""
        for row in self.rows:
            if (row.model, row.noise, row.approach, row.radius) == (model, noise, approach,
                                                                    radius):
                return row.certified_accuracy
        raise KeyError((model, noise, approach, radius))

    def markdown(self) -> str:
        """Table IV: one line per (model, noise, approach), certified accuracy (%) per radius."""
        return markdown_table(self.rows, self.settings)


def check_norm(norm: str | int | float) -> str:
    """``'2'``, ``'1'`` or ``'inf'`` (also from 2, 1, inf)."""
    text = str(norm).strip().lower().lstrip("l")
    text = {"2.0": "2", "1.0": "1", "infinity": "inf"}.get(text, text)
    if text not in NORMS:
        raise SmoothingError(f"norm must be one of 2, 1, inf; got {norm!r}")
    return text


def _check(noises: Sequence[str], approaches: Sequence[str], radii: Sequence[float],
           n0: int, n: int, alpha: float, limit: int | None) -> None:
    """Validate the settings (:class:`SmoothingError`)."""
    from bab.smoothing.approaches import get_approach

    check_alpha(alpha)
    check_count("n0", n0), check_count("n", n)
    if limit is not None:
        check_count("limit", limit)
    for name in noises:
        if name not in NOISES:
            raise SmoothingError(f"unknown noise {name!r}; choose from {', '.join(NOISES)}")
    for name in approaches:
        get_approach(name)
    if not noises or not approaches or not radii:
        raise SmoothingError("need at least one noise, one approach and one radius")
    if any(not math.isfinite(r) or r < 0 for r in radii):
        raise SmoothingError(f"radii must be finite and >= 0, got {tuple(radii)}")


def norm_reason(noise: Noise, norm: str) -> str | None:
    """Why a noise cannot certify this norm (None when it does)."""
    if NORMS[norm] == noise.norm:
        return None
    return (f"{noise.name} noise certifies l{noise.norm} radii; this table is l{norm} "
            f"(gaussian: l2; laplace, uniform: l1)")


def compare_smoothing(models: list[Path], data: Path, *, norm: str, noises: tuple[str, ...],
                      sigma: float, approaches: tuple[str, ...], radii: tuple[float, ...],
                      n0: int, n: int, alpha: float, limit: int | None, seed: int,
                      output: Path | None, batch: int = 10_000) -> SmoothingCompareResult:
    """Certified accuracy at each radius per (model, noise, approach); see the module doc.

    ``sigma`` is every noise's scale (Gaussian standard deviation; Laplace and uniform
    lambda); ``limit`` the number of data points (None: all).
    """
    norm = check_norm(norm)
    noises, approaches = tuple(noises), tuple(approaches)
    radii = tuple(float(r) for r in radii)
    _check(noises, approaches, radii, n0, n, alpha, limit)
    noise_objs = [make_noise(name, sigma) for name in noises]
    settings = {"norm": norm, "sigma": float(sigma), "n0": n0, "n": n, "alpha": alpha,
                "seed": seed, "limit": limit, "radii": radii, "approaches": approaches,
                "noises": noises}
    out = Path(output) if output is not None else None
    run = _Run(Path(data), out, settings, batch)
    for model in models:
        run.model(Path(model), noise_objs, approaches, alpha)
    result = SmoothingCompareResult(run.rows, run.points, settings)
    if out is not None:
        result.files = write_outputs(result, out)
    return result


def model_name(path: Path) -> str:
    """``digits.onnx.gz`` -> ``digits``."""
    name = path.name
    for suffix in (".gz", ".onnx"):
        name = name[:-len(suffix)] if name.endswith(suffix) else name
    return name


class _Run:
    """The state of one comparison: the evidence store and the rows found so far."""

    def __init__(self, data: Path, out: Path | None, settings: dict[str, Any],
                 batch: int) -> None:
        from bab.smoothing.approaches.evidence import EvidenceStore

        self.data, self.settings, self.batch = data, settings, check_count("batch", batch)
        self.store = EvidenceStore(None if out is None else out / "smoothing_samples.jsonl")
        self.rows: list[SmoothingRow] = []
        self.points: list[SmoothingPoint] = []

    def model(self, path: Path, noises: list[Noise], approaches: tuple[str, ...],
              alpha: float) -> None:
        """Every noise and approach on one model."""
        import onnx_models
        from bab.smoothing.data import load_npz

        network = onnx_models.load(path)
        if network.n_outputs < 2:
            raise SmoothingError(f"{path}: a classifier needs at least 2 outputs")
        x, y = load_npz(self.data, network.n_inputs)
        limit = self.settings["limit"]
        x, y = (x, y) if limit is None else (x[:limit], y[:limit])
        name = model_name(path)
        for noise in noises:
            self._noise(network, name, noise, x, y, approaches, alpha)

    def _noise(self, network: Any, name: str, noise: Noise, x: np.ndarray, y: np.ndarray,
               approaches: tuple[str, ...], alpha: float) -> None:
        """One (model, noise): sample every point once (if any approach applies), then
        certify with each approach."""
        from bab.smoothing.approaches import get_approach

        norm = self.settings["norm"]
        reasons = {a: norm_reason(noise, norm) or get_approach(a).unsupported(noise.name,
                                                                             noise.norm)
                   for a in approaches}
        evidence = ([] if all(reasons.values()) else self._evidence(network, name, noise, x))
        for a in approaches:
            if reasons[a]:
                self.rows += [SmoothingRow(name, noise.name, a, norm, r, None, len(x),
                                           str(reasons[a])) for r in self.settings["radii"]]
                continue
            found = [self._point(name, noise, a, i, int(y[i]), ev, alpha)
                     for i, ev in enumerate(evidence)]
            self.points += found
            self.rows += [SmoothingRow(name, noise.name, a, norm, r, acc, len(x))
                          for r, acc in zip(self.settings["radii"],
                                            certified_accuracy(found, self.settings["radii"]))]

    def _evidence(self, network: Any, name: str, noise: Noise, x: np.ndarray) -> list[Any]:
        """The stored or freshly sampled evidence of each point (one torch thread)."""
        import torch

        from bab.smoothing.approaches.evidence import sample_evidence
        from bab.smoothing.certify import as_points
        from bab.smoothing.train import one_thread

        pts = as_points(network, x)
        out = []
        with one_thread():
            for i in range(len(pts)):
                key = {"model": name, "data": self.data.name, "noise": noise.name,
                       "scale": noise.scale, "n0": self.settings["n0"], "n": self.settings["n"],
                       "seed": self.settings["seed"], "point": i}
                ev = self.store.get(key)
                if ev is None:
                    gen = torch.Generator().manual_seed(point_seed(self.settings["seed"],
                                                                   noise.name, i))
                    ev = sample_evidence(network, pts[i], noise, self.settings["n0"],
                                         self.settings["n"], self.batch, gen)
                    self.store.put(key, ev)
                out.append(ev)
        return out

    @staticmethod
    def _point(name: str, noise: Noise, approach: str, index: int, label: int, evidence: Any,
               alpha: float) -> SmoothingPoint:
        """One approach's certificate of one point."""
        from bab.smoothing.approaches import get_approach

        res = get_approach(approach).certify(noise, evidence, alpha)
        pred = -1 if res.label is None else int(res.label)
        return SmoothingPoint(name, noise.name, approach, index, label, pred, float(res.radius),
                              float(res.pA_lower), float(res.pB_upper))


def point_seed(seed: int, noise: str, index: int) -> int:
    """A per-(noise, point) seed, so that a resumed run draws the same noise."""
    return int(np.random.SeedSequence([seed, NOISES.index(noise), index]).generate_state(1)[0])


def certified_accuracy(points: Sequence[SmoothingPoint], radii: Sequence[float]) -> list[float]:
    """For each radius: the fraction certified correct with a radius at least that large."""
    if not points:
        return [0.0 for _ in radii]
    ok = np.array([p.correct for p in points], dtype=bool)
    radius = np.array([p.radius for p in points], dtype=np.float64)
    return [float(np.mean(ok & (radius >= r))) for r in radii]


def markdown_table(rows: Sequence[SmoothingRow], settings: dict[str, Any]) -> str:
    """The Markdown table with a settings line and the n/a reasons below it."""
    radii = list(dict.fromkeys(r.radius for r in rows))
    cells: dict[tuple[str, str, str], dict[float, SmoothingRow]] = {}
    for row in rows:
        cells.setdefault((row.model, row.noise, row.approach), {})[row.radius] = row
    head = (f"Certified accuracy (%) under randomized smoothing, l{settings['norm']} radii "
            f"(scale {settings['sigma']:g}, n0={settings['n0']}, n={settings['n']}, "
            f"alpha={settings['alpha']:g}; probabilistic: each certificate holds with "
            f"probability >= 1-alpha)")
    lines = [head, "", "| model | noise | approach | " +
             " | ".join(f"r={r:g}" for r in radii) + " |",
             "|---|---|---|" + "---:|" * len(radii)]
    notes: dict[str, str] = {}
    for (model, noise, approach), by_r in cells.items():
        vals = []
        for r in radii:
            row = by_r.get(r)
            acc = None if row is None else row.certified_accuracy
            vals.append(NA if acc is None else f"{100.0 * acc:.1f}")
            if row is not None and row.reason:
                notes[f"{noise}/{approach}"] = row.reason
        lines.append(f"| {model} | {noise} | {approach} | " + " | ".join(vals) + " |")
    if notes:
        lines += ["", "n/a:"] + [f"- {k}: {v}" for k, v in notes.items()]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Any]) -> Path:
    """A CSV with ``header`` and each row's ``csv_cells()``."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(row.csv_cells() for row in rows)
    return path


def write_outputs(result: SmoothingCompareResult, out: Path) -> list[Path]:
    """The two CSVs, the Markdown table and the curves under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = [_write_csv(out / "smoothing_summary.csv", SUMMARY_COLUMNS, result.rows),
             _write_csv(out / "smoothing_points.csv", POINT_COLUMNS, result.points)]
    table = out / "smoothing_table.md"
    table.write_text(result.markdown(), encoding="utf-8")
    files += [table, plot_curves(result, out / "smoothing_curves.png")]
    return files


def plot_curves(result: SmoothingCompareResult, path: Path) -> Path:
    """Certified accuracy against radius, one panel per model, one curve per noise/approach."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bab.smoothing.plot import accuracy_curve

    groups: dict[str, dict[tuple[str, str], list[SampleRow]]] = {}
    for p in result.points:
        groups.setdefault(p.model, {}).setdefault((p.noise, p.approach), []).append(
            SampleRow(p.point, p.label, p.prediction, p.radius, p.correct, 0.0, p.pA_lower))
    fig = Figure(figsize=(6.0, 3.8 * max(len(groups), 1)), dpi=110)
    FigureCanvasAgg(fig)
    styles = {name: style for name, style in zip(NOISES, ("-", "--", ":"))}
    for k, (model, curves) in enumerate(groups.items() or [("(no points)", {})]):
        ax = fig.add_subplot(max(len(groups), 1), 1, k + 1)
        for (noise, approach), rows in curves.items():
            grid, acc = accuracy_curve(rows)
            ax.step(grid, acc, where="post", linestyle=styles[noise], label=f"{noise}/{approach}")
        ax.set_xlabel(f"radius (l{result.settings['norm']})")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0.0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{model} (scale {result.settings['sigma']:g})", fontsize=10)
        if curves:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path))
    return path


def _names(text: str) -> tuple[str, ...]:
    """Comma-separated names as a tuple (argparse type)."""
    names = tuple(part.strip() for part in str(text).split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _approach_names(text: str) -> tuple[str, ...]:
    """``all`` or comma-separated approach names (argparse type)."""
    from bab.smoothing.approaches import APPROACHES

    return tuple(APPROACHES) if text.strip() == "all" else _names(text)


def _radii(text: str) -> tuple[float, ...]:
    """Comma-separated radii (argparse type)."""
    try:
        return parse_radii(text)
    except SmoothingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_smoothing_arguments(parser: argparse.ArgumentParser) -> None:
    """The smoothing table's options, each only if the parser lacks it already."""
    from bab.smoothing.approaches import DEFAULT_APPROACHES

    radii = ",".join(f"{r:g}" for r in TABLE_RADII)
    options: list[tuple[str, dict[str, Any]]] = [
        ("--noises", dict(type=_names, default=NOISES, metavar="N,N",
                          help="noises (gaussian: l2; laplace, uniform: l1); default all")),
        ("--sigma", dict(type=float, default=0.25, metavar="S",
                         help="noise scale: gaussian sigma, laplace/uniform lambda (0.25)")),
        ("--approaches", dict(type=_approach_names, default=DEFAULT_APPROACHES, metavar="A,A",
                              help="np, dp, renyi, fdiv, fdiv-hellinger, first-order or all "
                                   f"(default {','.join(DEFAULT_APPROACHES)})")),
        ("--radii", dict(type=_radii, default=TABLE_RADII, metavar="R,R",
                         help=f"radii of the table (default {radii})")),
        ("--n0", dict(type=int, default=100, help="samples to guess the class (100)")),
        ("--n", dict(type=int, default=100_000, help="samples to bound it (100000)")),
        ("--alpha", dict(type=float, default=0.001, help="failure probability (0.001)")),
        ("--seed", dict(type=int, default=0, help="seed of the noise (0)")),
    ]
    for flag, kwargs in options:
        try:
            parser.add_argument(flag, **kwargs)
        except argparse.ArgumentError:
            continue  # the command defines it already
