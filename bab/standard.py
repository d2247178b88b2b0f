"""The VNN-LIB 2.0 standard command line (chapter 5 of the standard): the pieces without torch.

* :func:`result_word`: the first stdout line of ``verify`` (§5.3.1: ``sat``, ``unsat``,
  ``unknown``, ``timed-out``);
* :class:`Assignment`, :func:`format_assignments`: the command-line assignment format
  (§5.3.1, "Command-line assignment format"): ``NAME TYPE [d1,d2]`` then one value a line,
  row-major, variables in declaration order;
* :func:`serialise_assignments`: one ``NAME.pb`` (an ONNX ``TensorProto``) per variable
  (§5.3.1, "Serialised assignment format");
* :func:`parse_networks`: the repeated ``--network NAME=FILE`` option (§5.3);
* :func:`solver_name` / :func:`solver_version`: ``--name`` / ``--version`` (§5.2), from the
  installed package's metadata.

See docs/cli_standard.md for the section-by-section conformance notes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from bab.result import Status

PACKAGE = "bab-verifier"
TIMED_OUT = "timed-out"
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.]*\Z")
#: VNN-LIB element type -> numpy dtype of the values (``real`` is kept as float64).
ELEMENT_DTYPES = {
    "real": np.float64, "float64": np.float64, "float32": np.float32, "float16": np.float16,
    "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8,
    "uint64": np.uint64, "uint32": np.uint32, "uint16": np.uint16, "uint8": np.uint8,
    "bool": np.bool_,
}


class StandardInputError(ValueError):
    """A command-line value of the standard front end that cannot be used (exit code 2)."""


@dataclass(frozen=True)
class Assignment:
    """One declared variable's value: ``values`` holds its elements in row-major order."""

    name: str
    elem_type: str  # as declared in the query, e.g. "float32" or "real"
    shape: tuple[int, ...]
    values: np.ndarray

    def __post_init__(self) -> None:
        size = np.asarray(self.values).size
        if size != math.prod(self.shape):
            raise ValueError(f"{self.name}: {size} values for shape {list(self.shape)}")


def result_word(status: "Status") -> str:
    """The standard's spelling of a verdict (§5.3.1); ``Status.TIMEOUT`` is ``timed-out``."""
    from bab.result import Status

    return TIMED_OUT if status is Status.TIMEOUT else status.value


def format_value(value: float | int, elem_type: str) -> str:
    """One element as text that reads back as the same value of ``elem_type``.

    Floating types print the shortest decimal that round-trips in that type (``real`` as
    float64, which is exact for the float32/float64 values the verifier replays); integer
    types print as integers and ``bool`` as ``true``/``false``.
    """
    kind = elem_type.lower()
    if kind == "bool":
        return "true" if bool(value) else "false"
    dtype = ELEMENT_DTYPES.get(kind, np.float64)
    if np.issubdtype(dtype, np.integer):
        return str(int(value))
    v = float(value)
    if not math.isfinite(v):
        return repr(v)
    if dtype is np.float64:
        return repr(v)
    if v != 0.0 and (abs(v) >= 1e16 or abs(v) < 1e-4):  # as repr does
        return np.format_float_scientific(dtype(v), unique=True, trim="0")
    return np.format_float_positional(dtype(v), unique=True, trim="0")


def format_assignments(assignments: Iterable[Assignment]) -> str:
    """The command-line assignment format of §5.3.1 (ends with a newline unless empty)."""
    lines: list[str] = []
    for a in assignments:
        lines.append(f"{a.name} {a.elem_type} [{','.join(str(d) for d in a.shape)}]")
        lines.extend(format_value(v, a.elem_type) for v in np.asarray(a.values).reshape(-1))
    return "".join(line + "\n" for line in lines)


def serialise_assignments(assignments: Sequence[Assignment], folder: str | Path) -> list[Path]:
    """Write ``folder/NAME.pb`` (a serialised ONNX TensorProto of the declared type and
    shape) for every variable; ``real`` values are written as ``double``. Returns the paths."""
    from onnx import numpy_helper

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for a in assignments:
        dtype = ELEMENT_DTYPES.get(a.elem_type.lower(), np.float64)
        arr = np.asarray(a.values).astype(dtype).reshape(a.shape)
        path = out / f"{a.name}.pb"
        path.write_bytes(numpy_helper.from_array(arr, a.name).SerializeToString())
        paths.append(path)
    return paths


def read_assignment(path: str | Path) -> np.ndarray:
    """The array stored in one serialised ``NAME.pb`` (for checks and tests)."""
    import onnx
    from onnx import numpy_helper

    tensor = onnx.TensorProto()
    tensor.ParseFromString(Path(path).read_bytes())
    return numpy_helper.to_array(tensor)


def parse_networks(options: Sequence[str]) -> dict[str, Path]:
    """``["N=f.onnx", ...]`` -> ``{"N": Path("f.onnx")}``; a malformed or repeated name is an error."""
    found: dict[str, Path] = {}
    for opt in options:
        name, sep, file = opt.partition("=")
        name = name.strip()
        if not sep or not file:
            raise StandardInputError(f"--network expects NAME=FILE.onnx, got {opt!r}")
        if not _NAME_RE.match(name):
            raise StandardInputError(f"--network {opt!r}: {name!r} is not a network name")
        if name in found:
            raise StandardInputError(f"--network {name} is given more than once")
        found[name] = Path(file)
    return found


def _metadata(field: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.metadata(PACKAGE)[field]
    except metadata.PackageNotFoundError:
        return None


def solver_name() -> str:
    """``--name`` (§5.2): the installed distribution's name (``bab-verifier``)."""
    return _metadata("Name") or PACKAGE


def solver_version() -> str:
    """``--version`` (§5.2): the installed distribution's version (semantic versioning)."""
    from bab import __version__

    return _metadata("Version") or __version__
