"""Leak checks for local clusters, by a rule of the tests' own.

``LocalCluster.down()`` finds what to stop by the head's process group and
its marker variable; a test that asked ``owned_pids()`` afterwards would check
that rule with itself. Here the tests read /proc: before ``down()`` they
record every process of the head's process group or session and every
descendant of those (the autoscaler's fake nodes are its children), each as
(pid, start time) so a recycled pid is not mistaken for a survivor; after
``down()`` none of them may be alive.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


def head_pgid(state_dir: Path) -> int:
    """The head's process group as the cluster recorded it at ``up()``."""
    return int(json.loads((Path(state_dir) / "state.json").read_text())["pgid"])


def process_tree(pgid: int) -> dict[int, tuple[int, str]]:
    """pid -> (start time, command line) of every live process in the process
    group or session ``pgid``, and of every descendant of those."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and fields[0] != "Z":
            table[int(entry)] = fields
    tree = {pid for pid, f in table.items() if int(f[2]) == pgid or int(f[3]) == pgid}
    grew = True
    while grew:
        grew = False
        for pid, f in table.items():
            if pid not in tree and int(f[1]) in tree:
                tree.add(pid)
                grew = True
    # field 22 of stat (starttime) is index 19 after the command name
    return {pid: (int(table[pid][19]), _cmdline(pid)) for pid in tree}


def survivors(tree: dict[int, tuple[int, str]], wait: float = 0.0) -> dict[int, str]:
    """The processes of ``tree`` still alive (same pid and start time, not a zombie),
    after waiting up to ``wait`` seconds for them to go."""
    deadline = time.monotonic() + wait
    while True:
        alive = {}
        for pid, (start, cmd) in tree.items():
            fields = _stat(pid)
            if fields and fields[0] != "Z" and int(fields[19]) == start:
                alive[pid] = cmd
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def down_and_check(cluster) -> dict[int, tuple[int, str]]:
    """Record the cluster's process tree, ``down()`` it, fail if any of it survives.

    Returns the recorded tree (for assertions on what it covered)."""
    tree = process_tree(head_pgid(cluster.state_dir))
    assert tree, "no process of the cluster was found before down()"
    cluster.down()
    left = survivors(tree)
    if left:
        for pid in left:  # do not leak them into the rest of the session
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    assert not left, f"processes of the local cluster survived down(): {left}"
    return tree
