"""``bab convert-vnnlib IN.vnnlib OUT.vnnlib --onnx MODEL.onnx``: a 1.0 property as a 2.0 query.

The network gives the shapes (the ONNX input and output shapes without a batch dimension);
the query declares one network (``--name``, default ``N``) with ``real`` variables, the type
of VNN-LIB 1.0's ``Real`` constants, and is run with
``bab verify OUT.vnnlib --network N=MODEL.onnx``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the ``convert-vnnlib`` sub-command."""
    p = sub.add_parser("convert-vnnlib", help="write a VNN-LIB 1.0 property as a VNN-LIB 2.0 query",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("input", metavar="IN.vnnlib", help="VNN-LIB 1.0 property (.vnnlib or .vnnlib.gz)")
    p.add_argument("output", metavar="OUT.vnnlib", help="VNN-LIB 2.0 query to write")
    p.add_argument("--onnx", required=True, metavar="MODEL.onnx", help="the network (for the shapes)")
    p.add_argument("--name", default="N", help="the declared network's name (default N)")
    p.set_defaults(func=run)


def convert(prop: str | Path, model: str | Path, name: str = "N") -> str:
    """The 2.0 query text for ``prop`` on ``model`` (part A's writer, vnnlib/v2/writer.py)."""
    import onnx_models
    import vnnlib
    from bab.cli import BadInput

    try:
        from vnnlib.v2.writer import to_vnnlib2
    except ImportError as exc:
        raise BadInput(f"the VNN-LIB 2.0 writer is not available ({exc})") from exc
    network = onnx_models.load(model)
    spec = vnnlib.parse_cached(prop, n_inputs=network.n_inputs, n_outputs=network.n_outputs)
    return to_vnnlib2(spec, network_name=name, input_shape=tuple(network.input_shape),
                      output_shape=tuple(network.output_shape))


def run(args: argparse.Namespace) -> int:
    """Convert and write; one line on stdout names the output."""
    text = convert(args.input, args.onnx, args.name)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0
