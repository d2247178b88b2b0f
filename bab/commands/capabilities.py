"""``bab supports --CAPABILITY`` (VNN-LIB 2.0 §5.4) and ``bab capabilities [--CAPABILITY]``.

Every answer is computed from the code that does the work, never kept as text:

* ONNX operators: the loader's op table (``onnx_models.validate.SUPPORTED_OPS``, the list its
  error message names); element types: ``bab.standard_query.SOUND_ELEMENT_TYPES`` (the same
  constant ``verify`` enforces); opsets: the oldest and newest opset at which the real loader
  converts a probe network (Gemm-ReLU-Gemm);
* VNN-LIB versions and the theories of chapter 4: each theory has a probe query (the shape of
  the standard's own examples) over tiny ONNX networks written to a temporary folder, run
  through the same :func:`bab.standard_query.prepare` that ``bab verify`` uses; a theory is
  reported when its probe is accepted and lowers to a decidable problem;
* ``--serialise-assignments``: whether the ``verify`` parser accepts that option.

``capabilities`` without a flag prints every capability as ``--FLAG`` followed by its answer
lines and a blank line (a summary; the standard's per-query form is ``supports``).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

def _opset_probe(opset: int, path: Path) -> bool:
    """True when the loader converts a Gemm-ReLU-Gemm network saved at ``opset`` correctly."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import onnx_models

    w1, w2 = np.array([[1.0, 0.5], [-0.5, 1.0], [0.3, -0.2]]), np.array([[1.0, -1.0, 0.5]])
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
             (("W1", w1), ("B1", np.zeros(3)), ("W2", w2), ("B2", np.zeros(1)))]
    legacy = {"broadcast": 1} if opset < 7 else {}
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1, **legacy),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], transB=1, **legacy)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])]
    if opset < 8:  # the IR of that time lists initializers as graph inputs
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "opset", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3 if opset < 8 else 8
    onnx.save(model, str(path))
    try:
        got = onnx_models.load(path).evaluate(np.array([0.5, 0.5]))[0, 0]
    except Exception:  # noqa: BLE001 - a model the loader refuses
        return False
    return abs(got - float((w2 @ np.maximum(w1 @ [0.5, 0.5], 0))[0])) < 1e-5


def onnx_opset_versions() -> list[str]:
    """§5.4.1 ``--onnx-opset-versions``: the oldest and the newest default-domain opset at
    which the loader converts a probe network (the newest one ``onnx`` defines is tried first)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    with tempfile.TemporaryDirectory(prefix="bab-opset-") as tmp:
        ok = lambda o: _opset_probe(o, Path(tmp) / f"opset{o}.onnx")  # noqa: E731
        low = next((o for o in range(1, newest + 1) if ok(o)), None)
        high = next((o for o in range(newest, 0, -1) if ok(o)), None)
    return [] if low is None or high is None else [str(low), str(high)]


def onnx_element_types() -> list[str]:
    """§5.4.1 ``--onnx-element-types``: only the types analysed soundly (``real``)."""
    from bab.standard_query import SOUND_ELEMENT_TYPES

    return list(SOUND_ELEMENT_TYPES)


def onnx_operators() -> list[str]:
    """§5.4.1 ``--onnx-operators``: one op a line (no types: all reported element types)."""
    from onnx_models.validate import SUPPORTED_OPS

    return sorted(SUPPORTED_OPS)


@dataclass(frozen=True)
class Probe:
    """A query in one theory: ``networks`` maps declared names to probe network kinds."""

    theory: str
    networks: dict[str, str]
    body: str


_F = '(declare-network f (declare-input X real [2]) (declare-output Y real [2]))'
_FH = ('(declare-network f (declare-input X real [2]) (declare-hidden H real [3] "hidden") '
       '(declare-output Y real [2]))')
_G = '(declare-network g {eq} (declare-input U real [2]) (declare-output Z real [2]))'
_BOX = ''.join(f'(assert (>= {v}[{i}] -1.0)) (assert (<= {v}[{i}] 1.0)) '
               for v in "X" for i in range(2))
_BOX_U = _BOX.replace("X[", "U[")
PROBES = {
    "NH": Probe("NH", {"f": "mlp"}, f"{_F} {_BOX} (assert (>= Y[0] 0.5))"),
    "H": Probe("H", {"f": "mlp"}, f"{_FH} {_BOX} (assert (>= H[0] 0.5))"),
    "SIO": Probe("SIO", {"f": "mlp"}, f"{_F} {_BOX} (assert (>= Y[0] 0.5))"),
    "MIO": Probe("MIO", {"f": "two_inputs"},
                 '(declare-network f (declare-input X real [2]) (declare-input W real [2]) '
                 f'(declare-output Y real [2])) {_BOX} {_BOX.replace("X[", "W[")} '
                 '(assert (>= Y[0] 0.5))'),
    "SNET": Probe("SNET", {"f": "mlp"}, f"{_F} {_BOX} (assert (>= Y[0] 0.5))"),
    "MENET": Probe("MENET", {"f": "mlp"},
                   f"{_F} {_G.format(eq='(equal-to f)')} {_BOX} {_BOX_U} (assert (>= Y[0] Z[0]))"),
    "MINET": Probe("MINET", {"f": "mlp", "g": "mlp_other"},
                   f"{_F} {_G.format(eq='(isomorphic-to f)')} {_BOX} {_BOX_U} "
                   "(assert (>= Y[0] Z[0]))"),
    "MNET": Probe("MNET", {"f": "mlp", "g": "mlp_other"},
                  f"{_F} {_G.format(eq='')} {_BOX} {_BOX_U} (assert (>= Y[0] Z[0]))"),
    "SNC": Probe("SNC", {"f": "mlp"}, f"{_F} {_BOX} (assert (>= Y[0] 0.5))"),
    "MNC": Probe("MNC", {"f": "mlp"}, f"{_F} {_BOX} (assert (<= (+ X[0] Y[0]) 0.1))"),
    "BND": Probe("BND", {"f": "mlp"}, f"{_F} {_BOX} (assert (>= Y[0] 0.5))"),
    "OUTC": Probe("OUTC", {"f": "mlp"}, f"{_F} {_BOX} (assert (>= Y[0] Y[1]))"),
    "LIN": Probe("LIN", {"f": "mlp"},
                 f"{_F} {_BOX} (assert (<= (+ (* 0.5 X[0]) (* 0.75 X[1])) 1.0)) "
                 "(assert (>= (+ Y[0] Y[1]) 0.5))"),
    "POLY": Probe("POLY", {"f": "mlp"}, f"{_F} {_BOX} (assert (<= (* X[0] X[1]) 1.0))"),
}
#: §5.4.2: each theory-set query and its theories, smallest first (chapter 4).
THEORY_SETS = {
    "hidden-node-theories": ("NH", "H"),
    "multiple-input-output-theories": ("SIO", "MIO"),
    "multiple-network-theories": ("SNET", "MENET", "MINET", "MNET"),
    "multiple-node-comparison-theories": ("SNC", "MNC"),
    "arithmetic-complexity-theories": ("BND", "OUTC", "LIN", "POLY"),
}
VERSION_HEADER = "(vnnlib-version <2.0>)"


def _write_network(kind: str, path: Path) -> Path:
    """A tiny ONNX network: ``mlp`` (2-3-2 ReLU, the ReLU output named ``hidden``),
    ``mlp_other`` (same shape, other weights) or ``two_inputs`` (two [2] inputs added)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0 if kind != "mlp_other" else 1)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W1", (2, 3)), ("B1", (3,)), ("W2", (3, 2)), ("B2", (2,)))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"], name="m1"),
             helper.make_node("Add", ["m1", "B1"], ["a1"], name="a1"),
             helper.make_node("Relu", ["a1"], ["hidden"], name="hidden"),
             helper.make_node("MatMul", ["hidden", "W2"], ["m2"], name="m2"),
             helper.make_node("Add", ["m2", "B2"], ["y"], name="out")]
    inputs = [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [2])]
    if kind == "two_inputs":
        inputs.append(helper.make_tensor_value_info("x1", TensorProto.FLOAT, [2]))
        nodes.insert(0, helper.make_node("Add", ["x0", "x1"], ["x"], name="join"))
    else:
        nodes.insert(0, helper.make_node("Identity", ["x0"], ["x"], name="input"))
    graph = helper.make_graph(nodes, kind, inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def probe_accepted(probe: Probe, folder: Path) -> bool:
    """True when ``prepare`` accepts the probe and lowers it to a decidable problem."""
    from bab.standard_query import Prepared, prepare

    query = folder / f"{probe.theory}.vnnlib"
    query.write_text(f"{VERSION_HEADER}\n{probe.body}\n", encoding="utf-8")
    nets = {name: folder / f"{kind}.onnx" for name, kind in probe.networks.items()}
    for path in nets.values():
        if not path.exists():
            _write_network(path.stem, path)
    try:
        return isinstance(prepare(query, nets), Prepared)
    except Exception:  # noqa: BLE001 - a refusal of any kind means "not supported"
        return False


def theories(names: tuple[str, ...]) -> list[str]:
    """The theories among ``names`` whose probes are accepted."""
    with tempfile.TemporaryDirectory(prefix="bab-probe-") as tmp:
        return [t for t in names if probe_accepted(PROBES[t], Path(tmp))]


def vnnlib_versions() -> list[str]:
    """§5.4.2 ``--vnnlib-versions``: 1.0 always; 2.0 when a 2.0 probe query is accepted."""
    return ["1.0", "2.0" if theories(("SNET",)) else "1.0"]


def optimised_disjunctive_reasoning() -> list[str]:
    """§5.4.2: ``false``: queries are expanded into disjunctive normal form (vnnlib/parser.py,
    ``Spec.regions`` x ``Region.clauses``)."""
    return ["false"]


def serialise_assignments() -> list[str]:
    """§5.4.3: whether ``bab verify`` accepts ``--serialise-assignments``."""
    from bab.commands import verify

    sub = argparse.ArgumentParser(prog="probe").add_subparsers()
    verify.register(sub)
    try:
        ns = sub.choices["verify"].parse_args(["q.vnnlib", "--serialise-assignments", "d"])
    except SystemExit:
        return ["false"]
    return ["true" if getattr(ns, "serialise_assignments", None) == "d" else "false"]


def _theory_answer(key: str) -> Callable[[], list[str]]:
    return lambda: theories(THEORY_SETS[key])


#: Capability flag (without ``--``) -> the function computing its answer lines (§5.4).
CAPABILITIES: dict[str, Callable[[], list[str]]] = {
    "onnx-opset-versions": onnx_opset_versions,
    "onnx-element-types": onnx_element_types,
    "onnx-operators": onnx_operators,
    "vnnlib-versions": vnnlib_versions,
    **{key: _theory_answer(key) for key in THEORY_SETS},
    "optimised-disjunctive-reasoning": optimised_disjunctive_reasoning,
    "serialise-assignments": serialise_assignments,
}
#: Spellings the standard also uses (§5.4.2's example writes ``--multiple-inputs-output-theories``).
ALIASES = {"multiple-inputs-output-theories": "multiple-input-output-theories"}


def register(sub: Any) -> None:
    """Add ``supports`` (one capability, required) and ``capabilities`` (one or all)."""
    for name, required in (("supports", True), ("capabilities", False)):
        p = sub.add_parser(name, help="report a VNN-LIB 2.0 capability (standard §5.4)"
                           if required else "report every VNN-LIB 2.0 capability (or one)")
        group = p.add_mutually_exclusive_group(required=required)
        for flag in (*CAPABILITIES, *ALIASES):
            group.add_argument(f"--{flag}", dest="capability", action="store_const",
                               const=ALIASES.get(flag, flag),
                               help=argparse.SUPPRESS if flag in ALIASES else None)
        p.set_defaults(func=run, capability=None)


def run(args: argparse.Namespace) -> int:
    """Print the answer lines (all capabilities for a bare ``capabilities``)."""
    keys = [args.capability] if args.capability else list(CAPABILITIES)
    blocks = []
    for key in keys:
        lines = CAPABILITIES[key]()
        blocks.append(lines if args.capability else [f"--{key}", *lines, ""])
    print("\n".join(line for block in blocks for line in block))
    return 0
