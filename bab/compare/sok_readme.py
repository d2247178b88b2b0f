"""``report/README.md`` of ``bab compare --sok``: settings, wall times, every shrink of the
SoK's protocol, which findings hold (with the numbers) and the consistency checks."""

from __future__ import annotations

import json
from typing import Any

VERDICT = {True: "**holds**", False: "**does not hold**", None: "**not measurable**"}


def shrinks(result: Any) -> list[str]:
    """Every way this run is smaller than the SoK's protocol (one line each)."""
    s = result.settings
    lines = [
        "Data: scikit-learn's 8x8 digits (450 test points), not MNIST/CIFAR-10; the presets are "
        "scaled down for 8x8 inputs (docs/training.md); CNN-C/CNN-D are left out.",
        f"Deterministic table: the first {s.limit} test points (the SoK uses 100 or more), "
        f"{s.timeout:g} s per (model, method, point) (a worker is killed 5 s after that).",
        f"One radius, eps = {s.eps:g} (l-inf, the training eps), for every model.",
        "The default per-point timeout is 5 s because a first attempt at 10 s was on course for "
        "about 45 minutes (on fcnn-c-pgd milp timed out on 12 of 20 points, bab and default on 8; "
        "see docs/compare.md).",
        f"Training: {s.epochs} epochs per model (seed {s.seed}).",
        f"Smoothing table: the first {s.smoothing_limit} test points, n0 = {s.n0}, n = {s.n}, "
        f"alpha = {s.alpha:g}; one noise model per noise ({s.noise_arch}), one noise level "
        f"(standard deviation {s.noise_std:g}).",
    ]
    for k in s.skips:
        lines.append(f"Skipped {', '.join(k.methods)} on {', '.join(k.archs)} models "
                     f"(\"skipped: {k.reason}\" in the table): {getattr(k, 'detail', '') or k.reason}.")
    if s.quick:
        lines.append("--quick: 2 deterministic models, a few points, a subset of the methods "
                     f"({', '.join(s.method_names())}), tiny sample counts; numbers mean nothing.")
    return lines


def _rounded(value: Any) -> Any:
    """Floats to 4 significant digits, recursively (for display)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _numbers(numbers: dict[str, Any]) -> list[str]:
    return [f"  - {key}: `{json.dumps(_rounded(value), default=str)}`" for key, value in numbers.items()]


def _times(t: dict[str, float]) -> str:
    return (f"{t.get('total_s', 0):.0f} s (training {t.get('train_s', 0):.0f} s, deterministic table "
            f"{t.get('deterministic_s', 0):.0f} s, smoothing table {t.get('smoothing_s', 0):.0f} s)")


def _wall(runs: list[dict[str, Any]]) -> str:
    """The wall time of the first invocation into this folder (the one that computed the
    tables) and of the later, resumed ones."""
    text = f"Wall time: {_times(runs[0]['times_s'])}."
    if len(runs) > 1:
        text += (" Later invocations into this folder resumed it (nothing recomputed that was "
                 "there): " + "; ".join(_times(r["times_s"]) for r in runs[1:]) + ".")
    return text


def readme(result: Any, evaluation: Any, settings: dict[str, Any]) -> str:
    """The README text."""
    s, t, v = result.settings, result.times, settings["versions"]
    lines = [
        "# SoK comparison on digits (`bab compare --sok`)", "",
        f"Command: `{settings['command']}`. {_wall(settings.get('runs') or [{'times_s': t}])} "
        f"With --jobs {s.jobs} on "
        f"{v.get('cpus_usable')} usable CPUs (load average at the end: {v.get('load_average')}); "
        f"git {v.get('git_commit')}{' (with local changes)' if v.get('git_dirty') else ''}. "
        "All settings and software versions: `settings.json`.", "",
        "## Zoo", "",
        f"{', '.join(s.archs)} (digits presets) each trained with {' and with '.join(s.trainings)} at l-inf "
        f"eps = {s.eps:g} (pixels in [0, 1]); {s.noise_arch} trained with Gaussian, Laplace and "
        f"uniform noise of standard deviation {s.noise_std:g} (scales: "
        + ", ".join(f"{m.noise} {m.sigma:.4g}" for m in result.zoo if m.noise) + "). "
        "Models, test split and training curves: `models/<name>/`.", "",
        "## Files", "",
        "- `table.md`, `summary.csv`, `points.csv`, `heatmap.png`: the deterministic table "
        "(SoK Table III shape; every taxonomy method, PGD and clean rows).",
        "- `smoothing_table.md`, `smoothing_summary.csv`, `smoothing_points.csv`, "
        "`smoothing_curves.png` (certified accuracy vs radius): the smoothing table (SoK Table IV "
        "shape: Gaussian/l2, Laplace/l1, uniform/l1; every approach from the same samples).", "",
        "## Shrinks of the SoK's protocol", "",
        *[f"- {line}" for line in shrinks(result)], "",
        "## Findings of the SoK on this data", "",
    ]
    for f in evaluation.findings:
        lines.append(f"- {f.statement}: {VERDICT[f.holds]}.{' ' + f.note if f.note else ''}")
        lines += _numbers(f.numbers)
    lines += ["", "## Consistency checks (guaranteed by theory; a failure is a bug)", ""]
    for c in evaluation.checks:
        state = "passes" if c.holds else "FAILS"
        lines.append(f"- {c.statement}: {state} ({c.compared} comparisons)")
        lines += [f"  - {x}" for x in c.violations[:20]]
        if len(c.violations) > 20:
            lines.append(f"  - ... and {len(c.violations) - 20} more")
    return "\n".join(lines) + "\n"
