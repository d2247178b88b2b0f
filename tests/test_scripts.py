"""Tests for the VNN-COMP tool scripts in scripts/vnncomp (argument checks, fake verifier)."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "vnncomp"
NAMES = ("install_tool.sh", "prepare_instance.sh", "run_instance.sh")


def run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run one script with a timeout, capturing output."""
    return subprocess.run([str(SCRIPTS / script), *args], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("name", NAMES)
def test_scripts_are_executable(name: str) -> None:
    mode = (SCRIPTS / name).stat().st_mode
    assert mode & stat.S_IXUSR
    assert (SCRIPTS / name).read_text().startswith("#!/usr/bin/env bash")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("first", ["v2", "", "V1"])
def test_scripts_reject_other_versions(name: str, first: str) -> None:
    # the arguments after the bad version are valid-looking; nothing may run
    result = run(name, first, "test", "a.onnx", "b.vnnlib", "r.txt", "10")
    assert result.returncode != 0
    assert "v1" in result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_scripts_reject_missing_arguments(name: str) -> None:
    assert run(name).returncode != 0


@pytest.mark.parametrize("name", ["prepare_instance.sh", "run_instance.sh"])
def test_scripts_reject_wrong_argument_count(name: str) -> None:
    assert run(name, "v1", "test").returncode != 0


def fake_python(tmp_path: Path, exit_code: int = 0) -> Path:
    """A stand-in for ``python3`` that records its arguments and writes a verdict."""
    script = tmp_path / "fake-python"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$@" > "{tmp_path}/args.txt"\n'
        'while [ "$#" -gt 0 ]; do\n'
        '  if [ "$1" = "--results-file" ]; then printf "unsat\\n" > "$2"; fi\n'
        "  shift\n"
        "done\n"
        f"exit {exit_code}\n")
    script.chmod(0o755)
    return script


def test_run_instance_calls_verify(tmp_path: Path) -> None:
    onnx, prop, results = tmp_path / "n.onnx", tmp_path / "p.vnnlib.gz", tmp_path / "out.txt"
    onnx.write_text("model")
    prop.write_bytes(gzip.compress(b"(declare-const X_0 Real)"))
    env = dict(os.environ, PYTHON=str(fake_python(tmp_path)))
    result = run("run_instance.sh", "v1", "acasxu", str(onnx), str(prop), str(results), "116",
                 env=env)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "args.txt").read_text().split("\n")[:-1]
    # bab reads .vnnlib.gz itself, so the path is passed on unchanged
    assert args == ["-m", "bab", "verify", str(onnx), str(prop),
                    "--timeout", "116", "--results-file", str(results)]
    assert results.read_text() == "unsat\n"


def test_run_instance_passes_verify_failure_on(tmp_path: Path) -> None:
    onnx, prop = tmp_path / "n.onnx", tmp_path / "p.vnnlib"
    onnx.write_text("model")
    prop.write_text("prop")
    env = dict(os.environ, PYTHON=str(fake_python(tmp_path, exit_code=2)))
    result = run("run_instance.sh", "v1", "b", str(onnx), str(prop), str(tmp_path / "r"), "5",
                 env=env)
    assert result.returncode == 2
