"""``bab demo``: train a small digits classifier, write robustness properties, verify them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the ``demo`` sub-command."""
    p = sub.add_parser(
        "demo", help="train a small digits MLP and verify L-inf robustness properties",
        description="Train (or load from the cache) a 64-32-32-10 ReLU MLP on scikit-learn's "
                    "digits, export it to ONNX, write robustness properties for 5 test images "
                    "at two radii and verify each one.")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where to write the .onnx and .vnnlib files "
                        "(default: the demo folder in the cache; BAB_CACHE_DIR overrides)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="per-property time limit in seconds (default 30)")
    p.add_argument("--no-smoothing", action="store_true",
                   help="skip the randomized-smoothing section")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the demo, verify every property and print a table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from bab.demo import build_demo, demo_dir, verify_all

    console = Console()
    out = Path(args.out) if args.out else demo_dir()
    with console.status("training / loading the digits classifier ..."):
        setup = build_demo(out)
    source = "cached weights" if setup.from_cache else "trained now"
    console.print(f"network: {setup.onnx_path} ({source}); "
                  f"test accuracy {setup.accuracy:.1%}", highlight=False)
    with console.status("verifying ...") as status:
        results = verify_all(
            setup, timeout=args.timeout,
            on_result=lambda r: status.update(f"verified image {r.instance.image} "
                                              f"eps {r.instance.eps:g}: {r.result}"))
    table = Table(title="L-inf robustness (unsat: robust, sat: counterexample)")
    notes = any(r.result == "error" for r in results)
    for name in ("image", "label", "eps", "result", "time s") + (("note",) if notes else ()):
        table.add_column(name, justify="left" if name in ("result", "note") else "right")
    colour = {"unsat": "green", "sat": "red"}
    for r in results:
        style = colour.get(r.result, "yellow")
        cells = [str(r.instance.image), str(r.instance.label), f"{r.instance.eps:g}",
                 f"[{style}]{r.result}[/]", f"{r.time_s:.2f}"]
        if notes:
            cells.append(escape(r.detail[:120]) if r.result == "error" else "")
        table.add_row(*cells)
    console.print(table)
    if not args.no_smoothing:
        smoothing_section(console, out)
    console.print(f"files in {out}", highlight=False)
    return 0


def smoothing_section(console: Any, out: Path) -> None:
    """Randomized smoothing: certify a few test images of a noise-trained network."""
    from rich.table import Table

    from bab.smoothing.demo import smoothing_demo

    with console.status("randomized smoothing: training / loading a noise-trained network ..."):
        sm = smoothing_demo(out)
    first = sm.certificates[0] if sm.certificates else None
    n, alpha = (first.n, first.alpha) if first else (0, 0.0)
    table = Table(title=f"randomized smoothing, Gaussian sigma {sm.sigma:g}: probabilistic "
                        f"l2 certificates (confidence 1-alpha = {1 - alpha:g}, n = {n})")
    for name in ("image", "label", "smoothed prediction", "l2 radius", "pA lower", "time s"):
        table.add_column(name, justify="right")
    for image, label, cert in zip(sm.images, sm.labels, sm.certificates):
        pred = "abstain" if cert.label is None else str(cert.label)
        style = "green" if cert.label == label else "yellow"
        table.add_row(str(image), str(label), f"[{style}]{pred}[/]", f"{cert.radius:.3f}",
                      f"{cert.pA_lower:.4f}", f"{cert.time_s:.2f}")
    console.print(table)
    console.print(f"noise-trained network: {sm.onnx_path} (clean test accuracy "
                  f"{sm.accuracy:.1%}); more with `bab smooth`", highlight=False)
