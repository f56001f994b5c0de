"""The start commands raise the open-files limit as far as they may, and never fail on it.

The rendered head and worker start commands run for real under bash (Ray runs
them with ``bash -c``), with ``ray`` replaced by a script that prints the
limits it inherited. A lowered hard limit is a real kernel limit (lowering is
allowed to anyone); the cases a test process cannot create without privileges
(a hard limit above 65536, ``unlimited``) use a ``ulimit`` shell function in
place of the builtin, so every branch is checked on any machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cluster import layout
from cluster.render import OPEN_FILES_LIMIT, example_gcp_facts, render_gcp
from cluster.spec import ClusterSpec

CFG = render_gcp(ClusterSpec(), example_gcp_facts())
STARTS = {
    "head": CFG["head_start_ray_commands"][-1],
    "worker": CFG["worker_start_ray_commands"][-1],
}


@pytest.fixture
def home(tmp_path) -> Path:
    """A node's $HOME whose `ray` prints the open-files limits it was started with."""
    ray = tmp_path / layout.NODE_VENV.removeprefix("~/") / "bin" / "ray"
    ray.parent.mkdir(parents=True)
    ray.write_text('#!/bin/bash\necho "limits $(ulimit -Sn) $(ulimit -Hn) args $1"\n')
    ray.chmod(0o755)
    return tmp_path


def run(script: str, home: Path) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "RAY_HEAD_IP": "10.0.0.2"}
    return subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, check=False, timeout=60
    )


def limits(out: subprocess.CompletedProcess) -> tuple[int, int]:
    line = next(x for x in out.stdout.splitlines() if x.startswith("limits "))
    soft, hard = line.split()[1:3]
    return int(soft), int(hard)


@pytest.mark.parametrize("node", sorted(STARTS))
@pytest.mark.parametrize("hard", [20000, 4096])
def test_a_lower_hard_limit_is_the_limit_and_the_start_succeeds(home, node, hard):
    out = run(f"ulimit -Sn 1024 && ulimit -Hn {hard} && {STARTS[node]}", home)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # no "ulimit: open files: cannot modify limit"
    assert limits(out) == (hard, hard)
    assert "args start" in out.stdout  # Ray was started


@pytest.mark.parametrize("node", sorted(STARTS))
def test_a_higher_soft_limit_is_left_alone(home, node):
    out = run(f"ulimit -Sn 1024 && ulimit -Hn 8000 && ulimit -Sn 8000 && {STARTS[node]}", home)
    assert out.returncode == 0, out.stderr
    assert limits(out) == (8000, 8000)


# ulimit as a shell function: the limits a test process cannot give itself.
FAKE_ULIMIT = """
ulimit() {
  case "$1" in
    -Sn) if [ $# -eq 2 ]; then echo "set-soft $2"; SOFT=$2; else echo "$SOFT"; fi ;;
    -Hn) echo "$HARD" ;;
    *) echo "unexpected ulimit $*"; return 2 ;;
  esac
}
"""


@pytest.mark.parametrize(
    ("soft", "hard", "expected"),
    [
        ("1024", "1048576", f"set-soft {OPEN_FILES_LIMIT}"),  # raised to 65536, not to the hard limit
        ("1024", "unlimited", f"set-soft {OPEN_FILES_LIMIT}"),
        ("1024", "20000", "set-soft 20000"),
        ("100000", "1048576", None),  # already higher: never lowered
        ("unlimited", "unlimited", None),
    ],
)
@pytest.mark.parametrize("node", sorted(STARTS))
def test_every_branch(home, node, soft, hard, expected):
    out = run(f"{FAKE_ULIMIT}\nSOFT={soft}; HARD={hard}\n{STARTS[node]}", home)
    assert out.returncode == 0, out.stderr
    sets = [x for x in out.stdout.splitlines() if x.startswith(("set-soft", "unexpected"))]
    assert sets == ([expected] if expected else [])
    assert "args start" in out.stdout


def test_a_failing_limit_stops_the_start_visibly(home):
    """Joined with &&: if raising the limit ever fails, Ray is not started quietly without it."""
    broken = FAKE_ULIMIT.replace('echo "set-soft $2"; SOFT=$2', "return 1")
    out = run(f"{broken}\nSOFT=1024; HARD=20000\n{STARTS['worker']}", home)
    assert out.returncode != 0
    assert "args start" not in out.stdout
