"""What a run leaves behind, read from the host itself, not from the harness's bookkeeping.

``HostSnapshot.capture()`` before the run; ``leftovers(before, run_id, run_dir,
namespaces)`` after it lists every trace of the run still on the host:

- processes: any live process in one of the run's network or PID namespaces
  (inode numbers recorded when each machine started; read from
  ``/proc/<pid>/ns/{net,pid}`` of every process) that started before that
  machine was stopped, or whose command line names the run's directory. The
  kernel reuses a dead namespace's inode number: on a shared machine another
  run's new machine may get one of ours, and its processes, all started after
  ours was gone, are not this run's;
- network namespaces: ``ip netns list`` entries carrying the run id;
- mounts: ``/proc/mounts`` lines naming the run's directory or its
  ``/run/netns`` entries (the machines' own mounts live in their mount
  namespaces, which die with their processes);
- users and groups: no entry of ``/etc/passwd``, ``/etc/group`` or
  ``/etc/shadow`` that was not there before may carry one of the run's user
  or group names or ids (the machines' users only ever exist in their private
  copies; entries other programs add meanwhile on a shared machine are not
  the run's).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow")


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def ns_inode(link: str) -> int | None:
    """The inode of a namespace reference (``/proc/PID/ns/net``, ``/run/netns/NAME``)."""
    try:
        return os.stat(link).st_ino
    except OSError:
        return None


def clock_ticks_now() -> int:
    """Now, in the unit of a process's start time in ``/proc/PID/stat`` (ticks since boot)."""
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


def _started(fields: list[str]) -> int:
    return int(fields[19])  # field 22 of /proc/PID/stat; fields[0] is field 3


def _bounds(namespaces: Iterable[int] | Mapping[int, int | None]) -> dict[int, int | None]:
    """inode -> the tick its machine was stopped at (None: no bound)."""
    if isinstance(namespaces, Mapping):
        return dict(namespaces)
    return dict.fromkeys(namespaces)


def account_entries() -> set[tuple[str, str, str]]:
    """(file, name, id) of every account entry (shadow: no id; no password hashes kept)."""
    out = set()
    for path in ACCOUNT_FILES:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split(":")
            if len(fields) >= 3:
                out.add((path, fields[0], fields[2] if path != "/etc/shadow" else ""))
    return out


@dataclass(frozen=True)
class HostSnapshot:
    netns: frozenset[str]
    accounts: frozenset[tuple[str, str, str]]

    @classmethod
    def capture(cls) -> HostSnapshot:
        return cls(frozenset(netns_names()), frozenset(account_entries()))


def _processes(net: Iterable[int] | Mapping[int, int | None],
               pid: Iterable[int] | Mapping[int, int | None], run_dir: str) -> dict[int, str]:
    """Live processes of the run: in one of its namespaces (given as inodes, or as inode ->
    the tick its machine was stopped at: a process started later is another run's, in a
    namespace that reuses the inode), or naming the run's directory."""
    net, pid = _bounds(net), _bounds(pid)
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fields[0] == "Z":
            continue
        mine = False
        for bounds, kind in ((net, "net"), (pid, "pid")):
            inode = ns_inode(f"/proc/{entry}/ns/{kind}")
            if inode in bounds:
                stopped = bounds[inode]
                mine = mine or stopped is None or _started(fields) <= stopped
        if mine or run_dir in cmd:
            found[int(entry)] = cmd.strip()
    return found


def leftovers(before: HostSnapshot, run_id: str, run_dir: Path,
              net_inodes: Iterable[int] | Mapping[int, int | None],
              pid_inodes: Iterable[int] | Mapping[int, int | None],
              accounts: set[str] = frozenset(), wait: float = 30) -> list[str]:
    """Traces of the run still on the host (empty: nothing left). Namespaces as in
    ``_processes``: inodes, or inode -> the tick their machine was stopped at."""
    deadline = time.monotonic() + wait
    while True:
        problems = []
        procs = _processes(net_inodes, pid_inodes, str(run_dir))
        problems += [f"process {pid} survives: {cmd}" for pid, cmd in sorted(procs.items())]
        problems += [f"network namespace {n} survives"
                     for n in sorted(netns_names() - before.netns) if n.startswith(run_id)]
        mounts = Path("/proc/mounts").read_text().splitlines()
        problems += [f"mount survives: {m}" for m in mounts
                     if str(run_dir) in m or f"/run/netns/{run_id}" in m]
        problems += [f"{path} has a new entry {name!r} (id {ident or '-'}) of the run"
                     for path, name, ident in sorted(account_entries() - before.accounts)
                     if name in accounts or ident in accounts]
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(0.5)
