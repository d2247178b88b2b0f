"""``load_property``: one entry point for VNN-LIB 1.0 and 2.0 property files.

A file whose first form is ``(vnnlib-version ...)`` is VNN-LIB 2.0 (:mod:`vnnlib.v2`);
anything else goes to the 1.0 parser (:func:`vnnlib.parser.parse_cached`).
"""

from __future__ import annotations

from pathlib import Path

from vnnlib.parser import PathLike, VnnlibError, _check_counts, _decode, parse_cached
from vnnlib.spec import Spec


class NotPlainSpec(VnnlibError):
    """A 2.0 query that is not a plain Spec over one network.

    ``result`` is the :class:`~vnnlib.v2.Lowered` (needs a combined network: several
    networks, hidden nodes, or input terms in output constraints) or the
    :class:`~vnnlib.v2.Undecidable` (the verifier answers ``unknown`` with its reason).
    """

    def __init__(self, msg: str, path: str | None = None, result: object = None) -> None:
        super().__init__(msg, path)
        self.result = result

    def __reduce__(self):
        return (type(self), (self.msg, self.path, self.result))


def is_v2_text(text: str) -> bool:
    """True when the first form (after whitespace and ``;`` comments) is ``(vnnlib-version``."""
    i, n = 0, len(text)
    if text.startswith("\ufeff"):
        i = 1
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == ";":
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        else:
            return text.startswith("(vnnlib-version", i)
    return False


def is_v2_file(path: PathLike) -> bool:
    """True when the file is a VNN-LIB 2.0 query (by its first form; no 2.0 import for 1.0)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if head[:2] == b"\x1f\x8b":
        head = _decode(Path(path).read_bytes(), str(path)).encode()[: 1 << 16]
    return is_v2_text(head.decode("utf-8", errors="replace"))


def load_property(path: PathLike, n_inputs: int | None = None, n_outputs: int | None = None) -> Spec:
    """The Spec of a 1.0 or 2.0 property file (counts checked when given).

    A 2.0 query that needs a combined network or is undecidable raises :class:`NotPlainSpec`.
    """
    if not is_v2_file(path):
        return parse_cached(path, n_inputs, n_outputs)
    from vnnlib import v2

    result = v2.lower(v2.load_query(path))
    if isinstance(result, v2.Undecidable):
        raise NotPlainSpec(f"undecidable here: {result.reason}", str(path), result)
    if not result.layout.simple:
        raise NotPlainSpec("the query needs a combined network (several networks, hidden "
                           "nodes or input terms in output constraints): give the models "
                           "with --network NAME=FILE", str(path), result)
    _check_counts(result.spec.n_inputs, result.spec.n_outputs, n_inputs, n_outputs, str(path))
    return result.spec
