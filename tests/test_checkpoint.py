"""Resumable searches (``bab verify --checkpoint FILE [--resume]``, :mod:`bab.checkpoint`).

A search stopped partway (an exception right after a checkpoint, or SIGKILL at any moment)
and resumed reaches the same verdict, and the domains visited before and after the stop add
up to at most 1.2x those of an uninterrupted run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bab import config as C
from bab.checkpoint import (VERSION, Checkpointer, CheckpointError, capture_attributes, open_checkpoint,
                            restore_attributes, verify_resumable)
from bab.store import TensorBatch
from tests.builders import ROOT, random_mlp, robustness_output, write_property

# A random 4-32-32-32-3 network; its robustness at eps 0.19 needs a handful of ReLU-split domains
# with these cheap settings (a few seconds).
TINY_CFG = [{"verify": {"method": "bab", "threads": 1},
             "bab": {"input_split_threshold": 0, "relu_batch_size": 8, "relu_branching": "babsr"},
             "beta": {"milp_unstable": 0, "iterations": 2, "root_iterations": 5, "attack": False}}]
TINY_SETS = [f"{section}.{key}={value}" for part in TINY_CFG for section, opts in part.items()
             for key, value in opts.items()]


def tiny_instance(folder: Path, eps: float = 0.19) -> tuple[Path, Path]:
    """The tiny network and its robustness property around the origin."""
    import onnxruntime as ort

    net = random_mlp(folder / "net.onnx", [4, 32, 32, 32, 3], seed=5)
    y = ort.InferenceSession(str(net)).run(None, {"x": np.zeros((1, 4), np.float32)})[0][0]
    prop = write_property(folder / "prop.vnnlib", [-eps] * 4, [eps] * 4, 3,
                          robustness_output(int(y.argmax()), 3))
    return net, prop


def load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


class Stopped(Exception):
    """Stands for a kill right after a checkpoint."""


class StopAfter(Checkpointer):
    """Saves at every step, and stops the run after ``limit`` saves."""

    limit = 12

    def step(self) -> None:
        super().step()
        if self.saves >= self.limit:
            raise Stopped


# -------------------------------------------------------------------------- plain data


def test_capture_restore_attributes() -> None:
    class Thing:
        clock_attributes = ("begun",)

        def __init__(self) -> None:
            self.t = torch.arange(3.0)
            self.batch = TensorBatch({"lo": torch.zeros(2, 3)})
            self.nested = {1: [torch.ones(1), (2, "x")], "s": {3, 4}}
            self.gen = torch.Generator().manual_seed(7)
            self.fn = lambda: None
            self.mixed = [1, object()]
            self.none = None
            self._t0, self.begun = 10.0, 20.0

    a = Thing()
    a.gen.manual_seed(3)
    first = torch.rand(2, generator=a.gen)
    stored = capture_attributes(a)
    assert set(stored) == {"t", "batch", "nested", "gen", "_t0", "begun"}
    torch.rand(5, generator=a.gen)
    b = Thing()
    b.t = None
    restore_attributes(b, stored, shift=5.0)
    assert torch.equal(b.t, a.t) and torch.equal(b.batch["lo"], a.batch["lo"])
    assert b.nested[1][1] == (2, "x") and b.nested["s"] == {3, 4}
    assert (b._t0, b.begun) == (15.0, 25.0)  # clocks keep the elapsed time they measure
    g = torch.Generator().manual_seed(3)
    assert torch.equal(torch.rand(2, generator=g), first)
    assert torch.equal(torch.rand(4, generator=b.gen), torch.rand(4, generator=g))  # same stream


def test_fingerprint_mismatch_and_bad_files(tmp_path: Path) -> None:
    net, prop = tiny_instance(tmp_path)
    cfg = C.load(None, TINY_CFG)
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        open_checkpoint(ck, net, prop, cfg, resume=True)
    state = {"version": VERSION, "fingerprint": open_checkpoint(ck, net, prop, cfg).fingerprint, "elapsed": 1.0,
             "done": {}}
    torch.save(state, ck)
    other = C.load(None, [*TINY_CFG, {"verify": {"seed": 5}}])
    with pytest.raises(CheckpointError, match="the config hash differs"):
        open_checkpoint(ck, net, prop, other, resume=True)
    longer = C.load(None, [*TINY_CFG, {"verify": {"timeout": 999.0}}])
    assert open_checkpoint(ck, net, prop, longer, resume=True).state is not None  # timeout may change
    prop2 = tmp_path / "prop2.vnnlib"
    prop2.write_text(prop.read_text() + "\n")
    with pytest.raises(CheckpointError, match="the property hash differs"):
        open_checkpoint(ck, net, prop2, cfg, resume=True)
    assert open_checkpoint(tmp_path / "none.pt", net, prop, cfg, resume=True).state is None


# ------------------------------------------------------------------------- in-process


def test_stop_and_resume_tiny_network(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    net, prop = tiny_instance(tmp_path)
    cfg = C.load(None, TINY_CFG)
    ck = tmp_path / "full.pt"
    full = verify_resumable(net, prop, cfg, open_checkpoint(ck, net, prop, cfg, 60.0), 120)
    n_full = full.stats.extra["bab"].domains_visited
    assert full.status.value == "unsat" and 200 <= n_full
    assert load(ck)["done"]["bab"]["domains_visited"] == n_full

    ck = tmp_path / "part.pt"
    part = open_checkpoint(ck, net, prop, cfg, 0.0)
    part.__class__ = StopAfter
    with pytest.raises(Stopped):
        verify_resumable(net, prop, cfg, part, 120)
    state = load(ck)
    saved = state["engines"]["relu-split"]["stats"]["domains_visited"]
    assert 0 < saved < n_full and len(state["engines"]["relu-split"]["store"]["batch"]["root"]) > 0
    assert state["elapsed"] > 0 and "done" not in state and state["problem"]["branchable"]

    again = open_checkpoint(ck, net, prop, cfg, 60.0, resume=True)
    assert again.resumed and again.elapsed_before == state["elapsed"]
    res = verify_resumable(net, prop, cfg, again, 120)
    n_total = res.stats.extra["bab"].domains_visited
    assert res.status.value == "unsat" and res.time_s >= state["elapsed"]
    assert saved < n_total <= 1.2 * n_full  # the stop lost nothing: before + after = n_total
    done = open_checkpoint(ck, net, prop, cfg, resume=True)  # a finished run answers at once
    assert not done.resumed and verify_resumable(net, prop, cfg, done, 1).status.value == "unsat"


def test_stop_and_resume_input_split_portfolio(tmp_path: Path) -> None:
    """Input-split BaB (the auto portfolio of two branchers): each brancher's search resumes
    where it stopped, so the resumed run repeats the uninterrupted one's domain counts."""
    torch.set_num_threads(1)
    net, prop = tiny_instance(tmp_path)
    cfg = C.load(None, [{"verify": {"method": "bab", "threads": 1}, "bab": {"batch_size": 16, "portfolio_slice": 20}}])
    full = verify_resumable(net, prop, cfg, open_checkpoint(tmp_path / "full.pt", net, prop, cfg), 120)
    counts = full.stats.extra["bab"].extra["portfolio_domains"]
    assert full.status.value == "unsat" and counts["bound-improvement"] > 16

    ck = tmp_path / "part.pt"
    part = open_checkpoint(ck, net, prop, cfg, 0.0)
    part.__class__ = StopAfter
    part.limit = 3
    with pytest.raises(Stopped):
        verify_resumable(net, prop, cfg, part, 120)
    state = load(ck)
    saved = state["engines"]["bound-improvement"]
    assert 0 < saved["stats"]["domains_visited"] < counts["bound-improvement"]
    assert len(saved["store"]["batch"]["priority"]) > 0 and "_gen" in state["problem"]
    res = verify_resumable(net, prop, cfg, open_checkpoint(ck, net, prop, cfg, resume=True), 120)
    assert res.status.value == "unsat"
    assert res.stats.extra["bab"].extra["portfolio_domains"]["bound-improvement"] == counts["bound-improvement"]


# ------------------------------------------------------------------------ command line


def bab_verify(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "bab", "-v", "verify", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_when_saved(proc: subprocess.Popen, ck: Path, after_s: float = 0.0, limit_s: float = 300) -> None:
    """SIGKILL ``proc`` ``after_s`` seconds after its first checkpoint appeared."""
    deadline = time.monotonic() + limit_s
    while not ck.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(after_s)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def test_cli_sigkill_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # eps 0.25 needs about 4900 domains (seconds of search), so the kill lands mid-search even on
    # a fast machine; at 0.19 the search ended within half a second of the first checkpoint.
    net, prop = tiny_instance(tmp_path, eps=0.25)
    ck, res = tmp_path / "ck.pt", tmp_path / "res.txt"
    common = [str(net), str(prop), "--timeout", "120", "--checkpoint", str(ck), *sum((["--set", s] for s in TINY_SETS), [])]
    kill_when_saved(bab_verify(*common, "--checkpoint-interval", "0"), ck, 0.5)
    state = load(ck)
    assert "done" not in state and state["engines"]
    prop2 = tmp_path / "other.vnnlib"
    prop2.write_text(prop.read_text().replace("0.25", "0.26"))
    from bab.cli import main

    assert main(["verify", str(net), str(prop2), *common[2:], "--resume"]) == 2
    assert "belongs to another run: the property hash differs" in capsys.readouterr().err
    good = bab_verify(*common, "--resume", "--results-file", str(res))
    out, err = good.communicate(timeout=300)
    assert good.returncode == 0 and out.startswith("unsat") and res.read_text() == "unsat\n"
    assert "done" in load(ck)
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


# --------------------------------------------------------------------- mnistfc (slow)


MNIST = ("mnist-net_256x2.onnx", "prop_1_0.03.vnnlib")  # ~4800 ReLU-split domains, 20-60 s on one thread


def visited_logged(stderr: str) -> int:
    """The last domain count the relu-split progress log printed (0 if none)."""
    counts = re.findall(r"(\d+) visited", stderr)
    return int(counts[-1]) if counts else 0


@pytest.mark.slow
def test_sigkill_and_resume_mnistfc(tmp_path: Path, bench_dir: Path) -> None:
    net, prop = (bench_dir / "mnistfc" / name for name in MNIST)
    sets = ["--set", "verify.threads=1"]
    ck_full, ck = tmp_path / "full.pt", tmp_path / "ck.pt"
    t0 = time.monotonic()
    full = bab_verify(str(net), str(prop), "--timeout", "300", "--checkpoint", str(ck_full), *sets)
    out, _ = full.communicate(timeout=400)
    wall = time.monotonic() - t0
    verdict = out.split()[0]
    n_full = load(ck_full)["done"]["bab"]["domains_visited"]
    assert verdict == "unsat" and n_full > 100

    run = bab_verify(str(net), str(prop), "--timeout", "300", "--checkpoint", str(ck),
                     "--checkpoint-interval", "2", *sets)
    time.sleep(0.5 * wall)  # partway through the search
    assert run.poll() is None and ck.exists()
    run.send_signal(signal.SIGKILL)
    _, err = run.communicate()
    state = load(ck)
    saved = state["engines"]["relu-split"]["stats"]["domains_visited"]
    before = max(visited_logged(err), saved)  # work done after the last checkpoint is lost

    resumed = bab_verify(str(net), str(prop), "--timeout", "300", "--checkpoint", str(ck), "--resume", *sets)
    out, _ = resumed.communicate(timeout=400)
    total = load(ck)["done"]["bab"]["domains_visited"]
    after = total - saved
    print(f"\nmnistfc resume: uninterrupted {n_full} domains ({wall:.1f} s); killed after {before} "
          f"(checkpoint at {saved}), resumed +{after}: {(before + after) / n_full:.3f}x")
    assert out.split()[0] == verdict
    assert 0 < saved and after > 0
    assert before + after <= 1.2 * n_full, (before, after, n_full)
