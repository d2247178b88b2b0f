"""On-disk cache of converted networks, keyed by the model bytes and converter version.

Entries live under ``platformdirs.user_cache_dir("bab-verifier")/onnx`` or, when the
``BAB_CACHE_DIR`` environment variable is set, under ``$BAB_CACHE_DIR/onnx``. Unreadable or
corrupt entries are ignored (and rewritten by the next store); writes are atomic.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch

from onnx_models.network import Network

#: Bump whenever the conversion output changes, so stale cache entries are not used.
CONVERTER_VERSION = "onnx_models-1"
CACHE_ENV = "BAB_CACHE_DIR"
_LOG = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The directory holding converted networks."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        import platformdirs
        root = platformdirs.user_cache_dir("bab-verifier")
    return Path(root) / "onnx"


def cache_key(data: bytes) -> str:
    """sha256 of the (decompressed) model bytes and the converter version."""
    h = hashlib.sha256()
    h.update(CONVERTER_VERSION.encode())
    h.update(b"\0")
    h.update(data)
    return h.hexdigest()


def entry_path(key: str) -> Path:
    """The cache file for ``key``."""
    return cache_dir() / f"{key}.pt"


def load_cached(key: str) -> Network | None:
    """The cached network for ``key``, or None if absent, unreadable or stale."""
    path = entry_path(key)
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # corrupt pickle, truncated file, missing class...
        _LOG.debug("ignoring unreadable cache entry %s: %s", path, exc)
        return None
    if not isinstance(obj, dict) or obj.get("version") != CONVERTER_VERSION \
            or not isinstance(obj.get("network"), Network):
        _LOG.debug("ignoring stale cache entry %s", path)
        return None
    return obj["network"]


def store(key: str, network: Network) -> bool:
    """Write ``network`` atomically (temp file + os.replace); False if that failed."""
    path = entry_path(key)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:16]}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save({"version": CONVERTER_VERSION, "network": network}, f)
        os.replace(tmp, path)
        return True
    except Exception as exc:  # read-only cache dir, full disk, unpicklable object...
        _LOG.debug("could not write cache entry %s: %s", path, exc)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        return False
