"""cluster.node_check refuses a node whose Ray or Python differs from the lock."""

from __future__ import annotations

import subprocess
import sys

from cluster import layout
from cluster.node_check import problems


def test_the_locked_interpreter_passes():
    assert problems(layout.RAY_VERSION, layout.PYTHON_MINOR, head=True) == []


def test_a_different_ray_is_named():
    (msg,) = problems("2.59.0", layout.PYTHON_MINOR)
    assert f"Ray {layout.RAY_VERSION} in {sys.prefix}" in msg
    assert "pinned to Ray 2.59.0" in msg


def test_a_different_python_is_named():
    (msg,) = problems(layout.RAY_VERSION, "3.12")
    assert f"Python {layout.PYTHON_MINOR} at {sys.executable}" in msg
    assert "pinned to Python 3.12" in msg


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.node_check", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_exit_codes_and_messages():
    ok = run("--ray", layout.RAY_VERSION, "--python", layout.PYTHON_MINOR, "--head")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"ray-gcp node check ok: ray {layout.RAY_VERSION}")
    bad = run("--ray", "9.9.9", "--python", "3.9")
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 3
    assert "pinned to Python 3.9" in lines[0] and "pinned to Ray 9.9.9" in lines[1]
    assert lines[2] == "ray-gcp node check: refusing to start Ray on this node"
