"""Leak checks for local clusters, by a rule of the tests' own.

``LocalCluster.down()`` finds what to stop by the head's process group and
its marker variable; a test that asked ``owned_pids()`` afterwards would check
that rule with itself. Here the tests read /proc: before ``down()`` they
record every process of the head's process group or session and every
descendant of those (the autoscaler's fake nodes are its children), each as
(pid, start time) so a recycled pid is not mistaken for a survivor; after
``down()`` none of them may be alive.

When some did survive, the test fails, and ``kill_leftovers`` first removes
everything of that cluster so that the next test starts on a clean machine:
not only the recorded survivors but what they started meanwhile (a surviving
dashboard restarts its children, which the kill of their parent orphans). It
re-scans until nothing of the cluster is left, and never touches a process
that is not provably the cluster's (see ``kill_leftovers``).
"""

from __future__ import annotations

import json
import os
import signal
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


def _live_table() -> dict[int, list[str]]:
    """pid -> stat fields of every live (not zombie) process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and fields[0] != "Z":
            table[int(entry)] = fields
    return table


def _with_descendants(roots: set[int], table: dict[int, list[str]]) -> set[int]:
    tree = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, f in table.items():
            if pid not in tree and int(f[1]) in tree:
                tree.add(pid)
                grew = True
    return tree


def _in_group(fields: list[str], groups: set[int]) -> bool:
    """In one of ``groups`` as its process group or its session."""
    return int(fields[2]) in groups or int(fields[3]) in groups


def process_tree(pgid: int) -> dict[int, tuple[int, str]]:
    """pid -> (start time, command line) of every live process in the process
    group or session ``pgid``, and of every descendant of those."""
    table = _live_table()
    tree = _with_descendants({pid for pid, f in table.items() if _in_group(f, {pgid})}, table)
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


def _environ_has(pid: int, marker: tuple[str, str]) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{marker[0]}={marker[1]}".encode() in env


def kill_leftovers(
    tree: dict[int, tuple[int, str]],
    groups: set[int],
    marker: tuple[str, str] | None = None,
    timeout: float = 30.0,
) -> dict[int, str]:
    """SIGKILL what is left of a cluster, re-scanning until nothing is; returns what it killed.

    A process is the cluster's, and killed, if it is a recorded process of
    ``tree`` (same pid and start time), in one of ``groups`` (process group or
    session ids of the cluster) while that group still holds a recorded
    process (the id cannot have passed to someone else then), carries the
    environment variable ``marker`` (name, value: the cluster's own state
    directory), or descends from any of those. Nothing else is touched: other
    clusters on the machine are other people's. Orphans keep their group and
    their environment, so a late child of a killed survivor is found by the
    next scan."""
    killed: dict[int, str] = {}
    ours_groups: set[int] = set()
    deadline = time.monotonic() + timeout
    me = os.getpid()
    while True:
        table = _live_table()
        recorded = {pid for pid, (start, _) in tree.items()
                    if pid in table and int(table[pid][19]) == start}
        # Proven ours while a recorded process is in it; stays proven for this cleanup.
        ours_groups |= {g for g in groups
                        if any(_in_group(table[pid], {g}) for pid in recorded)}
        roots = recorded | {pid for pid, f in table.items() if _in_group(f, ours_groups)}
        if marker:
            roots |= {pid for pid in table if _environ_has(pid, marker)}
        victims = _with_descendants(roots, table) - {me}
        if not victims:
            return killed
        if time.monotonic() > deadline:
            raise AssertionError(f"could not clean up processes of the cluster: {sorted(victims)}")
        for pid in victims:
            killed.setdefault(pid, _cmdline(pid))
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


def down_and_check(cluster) -> dict[int, tuple[int, str]]:
    """Record the cluster's process tree, ``down()`` it, fail if any of it survives.

    What ``kill_leftovers`` finds after ``down()`` is a leak too; on a leak,
    everything of the cluster is killed before the test fails, so one leak does
    not spill into the next test. Returns the recorded tree
    (for assertions on what it covered)."""
    from cluster.local import MARKER_ENV

    pgid = head_pgid(cluster.state_dir)
    marker = (MARKER_ENV, str(Path(cluster.state_dir).resolve()))
    tree = process_tree(pgid)
    assert tree, "no process of the cluster was found before down()"
    cluster.down()
    left = survivors(tree)
    # Always: also finds a late child that down() missed and the record did not hold.
    # On a leak it kills everything of the cluster, so no leak reaches the next test.
    cleaned = kill_leftovers(tree, {pgid}, marker)
    assert not left and not cleaned, (
        f"processes of the local cluster survived down(): recorded {left}, "
        f"all killed now with what else was left of the cluster: {cleaned}")
    return tree
