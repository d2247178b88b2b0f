"""``load``: ONNX file -> :class:`~onnx_models.network.Network`, through the cache."""

from __future__ import annotations

from pathlib import Path

from onnx_models import cache
from onnx_models.network import Network
from onnx_models.source import PathLike, read_model_bytes


def load(path: PathLike, use_cache: bool = True) -> Network:
    """Load and convert an ONNX model (``.onnx`` or ``.onnx.gz``).

    Raises FileNotFoundError for a missing file and OnnxModelError for a file that is not a
    supported ONNX model.
    """
    data = read_model_bytes(path)
    key = cache.cache_key(data) if use_cache else ""
    if use_cache:
        network = cache.load_cached(key)
        if network is not None:
            network.source = str(path)
            network.meta["cached"] = True
            return network
    from onnx_models import convert  # heavy: onnx, onnx2torch

    network = convert.convert_model(data, Path(path).name, str(path))
    if use_cache:
        cache.store(key, network)
    network.meta["cached"] = False
    return network
