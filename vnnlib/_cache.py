"""On-disk pickle cache of parsed properties, keyed on the sha256 of the file bytes."""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path

from vnnlib.spec import Spec

_TAG = b"bab-vnnlib-parser-v1\0"  # bump when the parser's output changes


def cache_dir() -> Path:
    """``$BAB_CACHE_DIR/vnnlib`` or ``<user cache dir of bab-verifier>/vnnlib``."""
    base = os.environ.get("BAB_CACHE_DIR")
    if not base:
        import platformdirs

        base = platformdirs.user_cache_dir("bab-verifier")
    return Path(base) / "vnnlib"


def entry_for(data: bytes) -> Path:
    """Cache file for a property with raw bytes ``data``."""
    return cache_dir() / f"{hashlib.sha256(_TAG + data).hexdigest()}.pkl"


def load(entry: Path) -> Spec | None:
    """The cached Spec, or None when absent or unreadable (a corrupt entry is ignored)."""
    try:
        with open(entry, "rb") as f:
            spec = pickle.load(f)
    except Exception:  # missing, truncated, or written by an incompatible version
        return None
    return spec if isinstance(spec, Spec) else None


def store(entry: Path, spec: Spec) -> None:
    """Write ``spec`` atomically; caching is best effort, so I/O errors are ignored."""
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(spec, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, entry)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
