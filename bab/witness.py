"""Counterexample (witness) text in VNN-COMP result files: format, parse and check.

The witness follows the ``sat`` line of a result file (vnncomp.md §4)::

    ((X_0 0.6799)
     (X_1 -0.4999)
     (Y_0 -0.0213))

``check_witness`` re-implements the official 2023+ check independently of the verifier:
run onnxruntime on ``X`` (reshaped in C order to the ONNX input shape, in the model's input
dtype), compare with the file's ``Y`` (relative L-inf error <= 1e-3), then check that ``X``
lies in some region's box and the file's ``Y`` satisfies one of that region's clauses, both
within 1e-4.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from vnnlib import Spec

BOX_TOL = 1e-4
"""Tolerance on the input box and on the output constraints (official checker)."""
REL_TOL = 1e-3
"""Relative L-inf tolerance between the file's Y and onnxruntime's Y (2023+ rule)."""
ABS_TOL = 1e-4
"""Absolute tolerance used instead of ``REL_TOL`` only when the file's Y is all zero."""

_PAIR = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")
_ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}


def _format_value(value: float, dtype: np.dtype) -> str:
    """Shortest decimal that reads back as the same ``dtype`` value (repr style)."""
    if dtype == np.float64:
        return repr(float(value))
    if dtype == np.float32:
        v32 = np.float32(value)  # shortest float32 round-trip: at most 9 significant digits
        if _needs_exponent(float(value)):
            return np.format_float_scientific(v32, unique=True, trim="-")
        return np.format_float_positional(v32, unique=True, trim="0")
    raise ValueError(f"unsupported witness dtype {dtype}")


def _needs_exponent(value: float) -> bool:
    """Match ``repr``: scientific notation for very large or very small magnitudes."""
    mag = abs(value)
    return mag != 0.0 and math.isfinite(mag) and (mag >= 1e16 or mag < 1e-4)


def format_witness(x: np.ndarray, y: np.ndarray, dtype: np.dtype | type | str) -> str:
    """The result-file text after the ``sat`` line (no trailing newline).

    Inputs are written exactly (``repr`` of the value as a float64, up to 17 digits): pass
    ``x`` already rounded inwards to ``dtype``, and the checker then reads back a point that
    lies inside the box without needing its tolerance. Outputs are written as the shortest
    decimal that reads back as the same ``dtype`` value (at most 9 significant digits for
    float32, 17 for float64).
    """
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"unsupported witness dtype {dt}")
    xs = np.asarray(x).reshape(-1)
    ys = np.asarray(y).reshape(-1)
    names = [f"X_{i}" for i in range(xs.size)] + [f"Y_{j}" for j in range(ys.size)]
    values = [repr(float(v)) for v in xs.astype(dt).astype(np.float64)]
    values += [_format_value(v, dt) for v in ys.astype(np.float64)]
    pairs = [f"({n} {v})" for n, v in zip(names, values)]
    if not pairs:
        return "()"
    return "(" + "\n ".join(pairs) + ")"


def parse_witness(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``((X_0 v) ... (Y_k v))`` into float64 ``(x, y)``.

    A leading ``sat`` word (the result line) is ignored. Raises ``ValueError`` unless the
    names are ``X_0..X_{n-1}`` then ``Y_0..Y_{m-1}``, in order, with float values.
    """
    body = text.strip()
    if body[:3].lower() == "sat":
        body = body[3:]
    xs: list[float] = []
    ys: list[float] = []
    for match in _PAIR.finditer(body):
        kind, index, raw = match.group(1), int(match.group(2)), match.group(3)
        target = xs if kind == "X" else ys
        if kind == "X" and ys:
            raise ValueError(f"X_{index} after Y values")
        if index != len(target):
            raise ValueError(f"expected {kind}_{len(target)}, found {kind}_{index}")
        try:
            target.append(float(raw))
        except ValueError:
            raise ValueError(f"bad value {raw!r} for {kind}_{index}") from None
    if not xs or not ys:
        raise ValueError("witness needs at least one X and one Y value")
    return np.array(xs, dtype=np.float64), np.array(ys, dtype=np.float64)


def _load_model_bytes(onnx_path: str | Path) -> bytes:
    """The model file's bytes, gunzipped for ``.gz`` paths, external tensor data embedded."""
    from onnx_models.source import read_model_bytes

    return read_model_bytes(onnx_path)


def run_onnx(onnx_path: str | Path, x: np.ndarray) -> np.ndarray:
    """Evaluate the model on flat ``x`` with onnxruntime; returns flat float64 output."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        _load_model_bytes(onnx_path), opts, providers=["CPUExecutionProvider"]
    )
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"model has {len(inputs)} inputs; expected 1")
    meta = inputs[0]
    dtype = _ONNX_DTYPES.get(meta.type)
    if dtype is None:
        raise ValueError(f"unsupported input type {meta.type}")
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in meta.shape]
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    if flat.size != math.prod(shape):
        raise ValueError(f"witness has {flat.size} inputs; model input shape {meta.shape}")
    out = sess.run(None, {meta.name: flat.astype(dtype).reshape(shape)})[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def check_witness(
    onnx_path: str | Path, spec: "Spec", x: np.ndarray, y: np.ndarray
) -> tuple[bool, str]:
    """Check a witness as the official checker does; returns ``(ok, message)``."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.size != spec.n_inputs or y.size != spec.n_outputs:
        return False, (
            f"witness has {x.size} X / {y.size} Y; "
            f"property declares {spec.n_inputs} / {spec.n_outputs}"
        )
    try:
        y_onnx = run_onnx(onnx_path, x)
    except Exception as exc:  # noqa: BLE001 - any failure means the witness is unusable
        return False, f"onnxruntime failed: {exc}"
    if y_onnx.size != y.size:
        return False, f"model gives {y_onnx.size} outputs; witness has {y.size}"
    if not np.all(np.isfinite(y)) or not np.all(np.isfinite(y_onnx)):
        return False, "non-finite output values"
    err = float(np.max(np.abs(y_onnx - y)))
    scale = float(np.max(np.abs(y)))
    if scale > 0.0 and err / scale > REL_TOL:
        return False, f"Y mismatch: relative L-inf error {err / scale:.3g} > {REL_TOL:g}"
    if scale == 0.0 and err > ABS_TOL:
        return False, f"Y mismatch: L-inf error {err:.3g} > {ABS_TOL:g}"
    if not any(r.contains(x, BOX_TOL) for r in spec.regions):
        return False, "X lies outside every input box"
    if not spec.is_violated_by(x, y, BOX_TOL):
        return False, "Y satisfies no output clause of a box containing X"
    if not spec.is_violated_by(x, y_onnx, 0.0):
        return True, "valid only within tolerance"
    return True, "valid"


def check_result_text(
    text: str, onnx_path: str | Path, vnnlib_path: str | Path
) -> tuple[bool, str]:
    """Check the witness in a ``sat`` result file's whole text against the original files."""
    try:
        x, y = parse_witness(text)
    except ValueError as exc:
        return False, f"witness: {exc}"
    from vnnlib import parse

    try:
        spec = parse(vnnlib_path)  # handles .vnnlib.gz too
    except Exception as exc:  # noqa: BLE001 - report, never crash a bench run
        return False, f"witness: cannot parse property: {exc}"
    ok, message = check_witness(onnx_path, spec, x, y)
    return ok, f"witness: {message}"
