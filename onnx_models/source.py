"""Reading ONNX files (plain or gzipped) and parsing them into a ``ModelProto``."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from onnx_models.errors import OnnxModelError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

PathLike = str | os.PathLike


def read_model_bytes(path: PathLike) -> bytes:
    """The model's bytes; ``*.gz`` files are gunzipped in memory.

    Raises FileNotFoundError for a missing file and OnnxModelError for a broken archive.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ONNX model not found: {p}")
    data = p.read_bytes()
    if p.suffix == ".gz" or data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise OnnxModelError(f"{p.name} is not a valid ONNX model: bad gzip archive ({exc})") from exc
    return _embed_external_data(data, p)


def _embed_external_data(data: bytes, p: Path) -> bytes:
    """Tensors stored next to the model (``torch.onnx.export``'s default ``x.onnx.data``)
    read in and embedded, so the bytes describe the whole model; other models unchanged."""
    if b"location" not in data:  # the key of every external-data entry
        return data
    import onnx
    from onnx import external_data_helper as ext

    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # not a model: parse_model reports it
        return data
    if not any(ext.uses_external_data(t) for t in ext._get_all_tensors(model)):
        return data
    try:
        ext.load_external_data_for_model(model, str(p.parent))
        return model.SerializeToString()
    except Exception as exc:  # missing/short data file, unsafe location, > 2 GiB
        raise OnnxModelError(f"{p.name}: cannot read its external tensor data: {exc}") from exc


def parse_model(data: bytes, name: str) -> "onnx.ModelProto":
    """Parse ONNX protobuf bytes; anything that is not a model with a graph is rejected."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError, TypeError) as exc:
        raise OnnxModelError(f"{name} is not a valid ONNX model: {exc}") from exc
    except Exception as exc:  # protobuf backends raise assorted types
        raise OnnxModelError(f"{name} is not a valid ONNX model: {exc}") from exc
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise OnnxModelError(f"{name} is not a valid ONNX model: it has no graph")
    return model
