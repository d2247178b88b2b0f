"""One sampling pass per point, shared by every approach: the ``n0`` selection samples (the
guess), the ``n`` estimation samples (class counts) and, for Gaussian noise, the sum and the
largest norm of the normalised noise ``w = z / sigma`` over the samples of the guessed class
(the first-order approach's gradient estimate ``E[h(z) w]``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bab.smoothing.approaches.base import Evidence
from bab.smoothing.certify import Classifier, sample_counts
from bab.smoothing.errors import check_count
from bab.smoothing.noise import Noise


def sample_evidence(model: Classifier, x: torch.Tensor, noise: Noise, n0: int, n: int,
                    batch: int, generator: torch.Generator | None = None) -> Evidence:
    """The evidence of one point ``x [n_in]`` (``n0`` then ``n`` fresh noisy samples)."""
    n0, n, batch = check_count("n0", n0), check_count("n", n), check_count("batch", batch)
    pt = x.reshape(1, -1)
    guess = int(np.argmax(sample_counts(model, pt, noise, n0, batch, generator)[0]))
    gaussian = noise.name == "gaussian"
    counts: np.ndarray | None = None
    grad = torch.zeros(pt.shape[1], dtype=torch.float64)
    max_norm = 0.0
    with torch.inference_mode():
        for start in range(0, n, batch):
            rows = min(batch, n - start)
            z = noise.sample((rows, pt.shape[1]), generator, pt.dtype)
            cls = model(pt + z).reshape(rows, -1).argmax(dim=1)
            if counts is None:
                counts = np.zeros(int(getattr(model, "n_outputs", 0) or
                                      model(pt).reshape(1, -1).shape[1]), dtype=np.int64)
            counts += np.bincount(cls.numpy(), minlength=len(counts))
            if gaussian:
                w = z.double() / noise.scale
                grad += w[cls == guess].sum(dim=0)
                max_norm = max(max_norm, float(w.norm(dim=1).max()))
    assert counts is not None
    return Evidence(guess, counts, n0, grad.numpy() if gaussian else None,
                    max_norm if gaussian else float("inf"))


def to_record(evidence: Evidence) -> dict[str, Any]:
    """A JSON-friendly dict (:func:`from_record` reads it back)."""
    grad = None if evidence.grad_sum is None else [float(v) for v in evidence.grad_sum]
    return {"guess": evidence.guess, "counts": [int(c) for c in evidence.counts],
            "n0": evidence.n0, "grad_sum": grad,
            "max_norm": None if not np.isfinite(evidence.max_norm) else evidence.max_norm}


def from_record(record: dict[str, Any]) -> Evidence:
    """The inverse of :func:`to_record`."""
    grad = record.get("grad_sum")
    max_norm = record.get("max_norm")
    return Evidence(int(record["guess"]), np.asarray(record["counts"], dtype=np.int64),
                    int(record["n0"]), None if grad is None else np.asarray(grad, np.float64),
                    float("inf") if max_norm is None else float(max_norm))


class EvidenceStore:
    """``smoothing_samples.jsonl``: one line per sampled point, keyed by its settings
    (model, data, noise, scale, n0, n, seed, point); appended and flushed as points finish,
    so a rerun skips them. ``path`` None keeps everything in memory."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.known: dict[str, Evidence] = {}
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.known[self.key(rec["key"])] = from_record(rec["evidence"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by an interrupted run

    @staticmethod
    def key(settings: dict[str, Any]) -> str:
        """A canonical string for a settings dict."""
        return json.dumps(settings, sort_keys=True)

    def get(self, settings: dict[str, Any]) -> Evidence | None:
        """The stored evidence for these settings, if any."""
        return self.known.get(self.key(settings))

    def put(self, settings: dict[str, Any], evidence: Evidence) -> None:
        """Remember (and append to the file) one point's evidence."""
        self.known[self.key(settings)] = evidence
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"key": settings, "evidence": to_record(evidence)}) + "\n")
