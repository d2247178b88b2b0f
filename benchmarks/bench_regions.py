"""Batched regions on vs off (``bab.batch_regions``): wall time and bound calls.

Run::

    python benchmarks/bench_regions.py [--rounds 3] [--acasxu BENCH_DIR/acasxu] [--timeout 116]

Instances: the nn4sys-like property of tests/test_batched_regions.py (a 1-128-128-1 network,
50 disjoint input boxes, each threshold 5e-4 under the box's minimum: unsat), plus, with
``--acasxu``, every ``prop_6`` row of that folder's instance list (two input boxes). Each run
is a fresh process (``verify.threads=1``, falsification on, the ``default`` method through
:func:`bab.verify`, so the NumPy fast path of ``bab verify`` is not involved); the modes
alternate, so a busy machine slows both alike. Prints one JSON line per run and a summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_boxes(folder: Path) -> tuple[Path, Path]:
    """The 50-box instance (network and VNN-LIB disjunction) written into ``folder``."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import onnx_models
    from tests.builders import random_mlp

    model = random_mlp(folder / "boxes50.onnx", [1, 128, 128, 1], seed=2)
    net = onnx_models.load(model)
    edges = np.linspace(-5.0, 5.0, 101)
    parts = []
    for i in range(50):
        lo, hi = float(edges[2 * i]), float(edges[2 * i + 1])
        t = float(net.evaluate(np.linspace(lo, hi, 2001)[:, None])[:, 0].min()) - 5e-4
        parts.append(f"(and (>= X_0 {lo!r}) (<= X_0 {hi!r}) (<= Y_0 {t!r}))")
    prop = folder / "boxes50.vnnlib"
    prop.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (or\n  "
                    + "\n  ".join(parts) + "))\n")
    return model, prop


def one(model: str, prop: str, mode: str, timeout: float, t_start: float) -> dict:
    """One verification in this process (``--one``)."""
    import torch

    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(1)
    import bab
    from bab import config as C

    cfg = C.load(None, [{"verify": {"threads": 1}, "bab": {"batch_regions": mode == "on"}}])
    t0 = time.monotonic()
    res = bab.verify(model, prop, cfg, timeout=timeout)
    t1 = time.monotonic()
    st = res.stats.extra.get("bab")
    return {"instance": Path(prop).stem, "mode": mode, "status": res.status.value,
            "verify_s": round(t1 - t0, 3), "process_s": round(t1 - t_start, 3),
            "bound_calls": st.extra.get("bound_calls") if st else 0,
            "domains": st.domains_visited if st else 0, "attack_s": round(st.time_attack, 3) if st else 0.0}


def acas_prop6(folder: Path) -> list[tuple[Path, Path, float]]:
    """``(model, property, timeout)`` of every prop_6 row of the ACAS Xu instance list."""
    out = []
    for path in folder.glob("*instances.csv"):
        with open(path) as fh:
            for row in csv.reader(fh):
                if len(row) >= 3 and row[1].startswith("prop_6"):
                    out.append((folder / row[0], folder / row[1], float(row[2])))
    return out


def main(argv: list[str] | None = None) -> None:
    t_start = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--acasxu", type=Path)
    ap.add_argument("--timeout", type=float, default=116.0)
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "PROP", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(*args.one, args.timeout, t_start)))
        return
    folder = Path(tempfile.mkdtemp(prefix="bench_regions_"))
    model, prop = make_boxes(folder)
    instances = [(model, prop, args.timeout)] + (acas_prop6(args.acasxu) if args.acasxu else [])
    rows = []
    for model, prop, timeout in instances:
        for _ in range(args.rounds):
            for mode in ("on", "off"):
                cmd = [sys.executable, __file__, "--one", str(model), str(prop), mode, "--timeout", str(timeout)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    for inst in dict.fromkeys(r["instance"] for r in rows):
        for mode in ("on", "off"):
            sel = [r for r in rows if r["instance"] == inst and r["mode"] == mode]
            print(f"{inst} batch_regions={mode}: {sel[0]['status']}, median verify "
                  f"{statistics.median(r['verify_s'] for r in sel):.2f} s, process "
                  f"{statistics.median(r['process_s'] for r in sel):.2f} s, bound calls {sel[0]['bound_calls']}, "
                  f"domains {sel[0]['domains']}")


if __name__ == "__main__":
    main()
