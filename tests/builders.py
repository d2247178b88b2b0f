"""Tiny ONNX networks and VNN-LIB properties built in code for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp_onnx(path: Path, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray],
             act: str = "Relu", opset: int = 13, extra_op: str | None = None) -> Path:
    """An MLP ``[1, n_in] -> [1, n_out]`` (Gemm layers, ``act`` between them) saved to ``path``.

    ``extra_op`` (e.g. ``"Erf"``) is inserted after the first activation to make a model with
    an unsupported op.
    """
    nodes, inits = [], []
    cur = "x"
    for i, (w, b) in enumerate(zip(weights, biases)):
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), f"W{i}"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [f"g{i}"], transB=1))
        cur = f"g{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node(act, [cur], [f"a{i}"]))
            cur = f"a{i}"
            if extra_op and i == 0:
                nodes.append(helper.make_node(extra_op, [cur], ["extra"]))
                cur = "extra"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    n_in, n_out = np.shape(weights[0])[1], np.shape(weights[-1])[0]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def random_mlp(path: Path, sizes: Sequence[int], seed: int = 0, act: str = "Relu") -> Path:
    """A random MLP with layer widths ``sizes`` (first: inputs, last: outputs)."""
    rng = np.random.default_rng(seed)
    ws = [rng.normal(0, 1 / np.sqrt(a), (b, a)) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [rng.normal(0, 0.1, b) for b in sizes[1:]]
    return mlp_onnx(path, ws, bs, act=act)


def vnnlib_text(lower: Sequence[float], upper: Sequence[float], n_out: int, output: str) -> str:
    """A property with a box over ``X`` and the given output assertion text."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines += [f"(assert (>= X_{i} {lo!r}))", f"(assert (<= X_{i} {hi!r}))"]
    lines.append(output)
    return "\n".join(lines) + "\n"


def write_property(path: Path, lower: Sequence[float], upper: Sequence[float], n_out: int,
                   output: str) -> Path:
    """Write :func:`vnnlib_text` to ``path``."""
    path.write_text(vnnlib_text(lower, upper, n_out, output))
    return path


def robustness_output(label: int, n_out: int) -> str:
    """``(or (and (>= Y_j Y_label)) ...)``: some other class scores at least as high."""
    parts = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_out) if j != label)
    return f"(assert (or {parts}))"


ROOT = Path(__file__).resolve().parents[1]


def run_bab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m bab ARGS`` from the repository root, as a user would."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "bab", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)
