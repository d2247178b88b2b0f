"""``bab check``: compare the converted network with onnxruntime and check properties fit.

``bab check MODEL.onnx [MODEL2.onnx ...] [PROP.vnnlib ...]`` or ``bab check --instances LIST.csv``. For each
model, 100 random inputs (inside the properties' boxes when given, else in [-1, 1]) go through
both the converted network and onnxruntime; a difference above ``1e-4 * (1 + |reference|)``
(plus four times the network's own float32 rounding error, its float32 output against its
float64 output, for models whose outputs cancel badly) is a mismatch (exit 1). A model that
does not convert is reported and the others are still checked (exit 2), and a property that
does not fit its model is bad input (exit 2).
``bab check --ops`` prints the supported ONNX operators and the IR layers each becomes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SAMPLES = 100
REL_TOL = 1e-4
#: Multiple of the float32 rounding error (float32 vs float64 evaluation) added to REL_TOL.
NOISE_FACTOR = 4.0


def register(sub: Any) -> None:
    """Add the ``check`` sub-command."""
    p = sub.add_parser("check", help="compare the converted network with onnxruntime",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("paths", nargs="*", metavar="FILE",
                   help="networks (.onnx, .onnx.gz) and properties (.vnnlib); every property is "
                        "checked against every network given")
    p.add_argument("--instances", metavar="LIST.csv", help="check every pair of a VNN-COMP instances CSV")
    p.add_argument("--samples", type=int, default=SAMPLES, help="random inputs per model")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--ops", action="store_true",
                   help="print the supported ONNX operators (and the IR layers each becomes) and exit")
    p.set_defaults(func=run)


@dataclass
class CheckReport:
    """Outcome for one model."""

    model: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    ok: bool = True
    properties: list[str] = field(default_factory=list)
    noise: float = 0.0  # max relative float32-vs-float64 difference of the converted network
    error: str = ""  # why the model did not convert (then ok is False)


def sample_inputs(boxes: list[tuple[np.ndarray, np.ndarray]], n_in: int, n: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``n`` inputs spread over the boxes (or uniform in [-1, 1] without any), corners included."""
    if not boxes:
        boxes = [(-np.ones(n_in), np.ones(n_in))]
    xs = []
    for i in range(n):
        lo, hi = boxes[i % len(boxes)]
        u = rng.random(n_in)
        if i < 2 * len(boxes):  # the box's lower and upper corners first
            u = np.full(n_in, float(i // len(boxes)))
        xs.append(lo + u * (hi - lo))
    return np.stack(xs)


def check_model(model: str, props: list[str], samples: int, seed: int) -> CheckReport:
    """Load, parse the properties against the model, and compare with onnxruntime."""
    import vnnlib
    from onnx_models import OnnxReference, load

    network = load(model)
    boxes = []
    for prop in props:
        spec = vnnlib.parse_cached(prop, n_inputs=network.n_inputs, n_outputs=network.n_outputs)
        boxes += [(r.lower, r.upper) for r in spec.regions]
    x = sample_inputs(boxes, network.n_inputs, samples, np.random.default_rng(seed))
    x = x.astype(network.io.input_dtype).astype(np.float64)
    ours = network.evaluate(x)
    ref = OnnxReference(model).run(x)
    diff = np.abs(ours - ref)
    rel = diff / (1.0 + np.abs(ref))
    noise = rounding_noise(network, x, ours)
    return CheckReport(model=model, max_abs=float(diff.max()), max_rel=float(rel.max()),
                       ok=bool(np.all(rel <= REL_TOL + NOISE_FACTOR * noise)), properties=props,
                       noise=noise)


def rounding_noise(network: Any, x: np.ndarray, ours: np.ndarray) -> float:
    """Max relative difference between the network's float32 and float64 evaluations (0 for
    float64 networks): how far rounding alone moves its outputs on these inputs."""
    import copy

    import torch

    if network.dtype != torch.float32:
        return 0.0
    exact = copy.deepcopy(network).to(torch.float64).evaluate(x)
    return float((np.abs(ours - exact) / (1.0 + np.abs(exact))).max(initial=0.0))


def _check_or_error(model: str, props: list[str], samples: int, seed: int) -> CheckReport:
    """:func:`check_model`, with a model that does not convert reported as a failure."""
    from onnx_models import OnnxModelError

    try:
        return check_model(model, props, samples, seed)
    except OnnxModelError as exc:
        return CheckReport(model=model, ok=False, properties=props, error=str(exc))


def ops_table() -> str:
    """The supported ONNX operators as plain text (from onnx_models.validate.OPS)."""
    from onnx_models.validate import OPS

    width = max(len(o.op) for o in OPS)
    return "\n".join(f"{o.op:<{width}}  {o.layers or '(constants only)'}"
                     + (f"  [{o.note}]" if o.note else "") for o in OPS)


def instance_pairs(csv_path: str) -> dict[str, list[str]]:
    """Model -> properties from a VNN-COMP instances CSV (paths relative to the CSV)."""
    from bab.bench import read_instances

    pairs: dict[str, list[str]] = {}
    for inst in read_instances(csv_path):
        pairs.setdefault(str(inst.onnx_path), []).append(str(inst.vnnlib_path))
    return pairs


def run(args: argparse.Namespace) -> int:
    """Check each model; exit 1 on any mismatch."""
    from bab.cli import BadInput

    if args.ops:
        print(ops_table())
        return 0
    if args.instances:
        if not Path(args.instances).is_file():
            raise FileNotFoundError(2, "No such file", args.instances)
        pairs = instance_pairs(args.instances)
    elif args.paths:
        models = [p for p in args.paths if p.endswith((".onnx", ".onnx.gz"))]
        props = [p for p in args.paths if p not in models]
        if not models:
            raise BadInput("no network given (expected a .onnx or .onnx.gz file)")
        pairs = {m: props for m in models}
    else:
        raise BadInput("give a MODEL.onnx or --instances LIST.csv")
    failures = errors = 0
    for model, props in pairs.items():
        rep = _check_or_error(model, props, args.samples, args.seed)
        failures += not rep.ok
        if rep.error:
            errors += 1
            print(f"{'ERROR':8s} {Path(model).name}: {rep.error}", flush=True)
            continue
        verdict = "ok" if rep.ok else "MISMATCH"
        print(f"{verdict:8s} {Path(model).name}: max_abs={rep.max_abs:.3g} max_rel={rep.max_rel:.3g} "
              f"float32_noise={rep.noise:.3g} properties={len(props)}", flush=True)
    print(f"checked {len(pairs)} model(s), {sum(len(p) for p in pairs.values())} propert(ies): "
          f"{failures - errors} mismatch(es), {errors} conversion error(s)")
    return 2 if errors else 1 if failures else 0
