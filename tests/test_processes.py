"""tests/processes.py: a leak fails the test, and nothing of it reaches the next one.

A stand-in for a cluster that leaks: a supervisor in its own session restarts
its child whenever the child dies (as Ray's dashboard restarts its modules),
and its ``down()`` kills only the child it knew about. The supervisor survives
and has started a child that no record holds; killing the recorded survivors
alone would orphan that child.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.local import MARKER_ENV
from tests.processes import down_and_check

SUPERVISOR = """
import subprocess, sys, time
def start():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
child = start()
open(sys.argv[1], "w").write(str(child.pid))
while True:  # restart the child whenever it dies
    if child.poll() is not None:
        child = start()
    time.sleep(0.05)
"""


class LeakyCluster:
    """The two things down_and_check uses: state_dir (state.json's pgid) and down()."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        state_dir.mkdir()
        first = state_dir / "first-child"
        self.supervisor = subprocess.Popen(
            [sys.executable, "-c", SUPERVISOR, str(first)], start_new_session=True,
            env={**os.environ, MARKER_ENV: str(state_dir)},
        )
        (state_dir / "state.json").write_text(json.dumps({"pgid": self.supervisor.pid}))
        deadline = time.monotonic() + 60
        while not (first.exists() and first.read_text()):
            assert time.monotonic() < deadline, "the supervisor did not start its child"
            time.sleep(0.05)
        self.first_child = int(first.read_text())

    def down(self):
        os.kill(self.first_child, signal.SIGKILL)  # the leak: the supervisor lives on
        time.sleep(1.0)  # and restarts its child meanwhile

    def session(self) -> list[int]:
        """Live (not zombie) processes of the supervisor's session."""
        out = []
        for entry in os.listdir("/proc"):
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[3]) == self.supervisor.pid:
                out.append(int(entry))
        return out


def test_a_leak_fails_and_is_cleaned_up_with_its_late_children(tmp_path):
    cluster = LeakyCluster(tmp_path / "state")
    try:
        before = set(cluster.session())
        assert len(before) == 2, before  # the supervisor and its first child
        with pytest.raises(AssertionError, match="survived down"):
            down_and_check(cluster)
        # The supervisor and the child it restarted after the record are gone too.
        assert cluster.session() == []
    finally:
        # Our own session: its id cannot pass to anyone before we reap the supervisor.
        try:
            os.killpg(cluster.supervisor.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        cluster.supervisor.wait(timeout=30)


def test_a_clean_stop_passes(tmp_path):
    cluster = LeakyCluster(tmp_path / "state")

    def clean_down():
        os.killpg(cluster.supervisor.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while cluster.session() and time.monotonic() < deadline:
            time.sleep(0.05)

    cluster.down = clean_down
    try:
        tree = down_and_check(cluster)
        assert cluster.supervisor.pid in tree and cluster.first_child in tree
    finally:
        cluster.supervisor.wait(timeout=30)
