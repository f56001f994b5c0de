"""PID 1 of a fake machine: its own mounts and hostname, sshd, and the orphans' reaper.

Started by ``tests.e2e.machines`` as
``ip netns exec NS unshare --pid --mount --uts --fork --mount-proc python vm_init.py SPEC``,
so everything here happens inside the machine's own network, PID, mount and
UTS namespaces. ``SPEC`` is a JSON file::

    {"hostname": "...",
     "steps": [["tmpfs", "/tmp", "mode=1777"], ["mkdir", "/run/sshd", "755"],
               ["bind", SRC, DST, read_only], ["overlay", LOWER, UPPER, WORK, DST], ...],
     "daemon": [argv of sshd -D ...] or null,
     "ready": "path written once the machine is up"}

Steps run in order (a mount point made by an earlier tmpfs step can hold a later
bind). Then the daemon starts, and this process reaps every child until it is
killed: killing PID 1 ends every process of the machine (the kernel kills the
rest of a PID namespace with it), and with them the mounts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def run_step(step: list) -> None:
    kind, *args = step
    if kind == "tmpfs":
        path, options = args
        _mount("-t", "tmpfs", "-o", options, "tmpfs", path)
    elif kind == "mkdir":
        path, mode = args
        os.makedirs(path, exist_ok=True)
        os.chmod(path, int(mode, 8))
    elif kind == "bind":
        src, dst, read_only = args
        _mount("--bind", src, dst)
        if read_only:
            _mount("-o", "remount,bind,ro", dst)
    elif kind == "overlay":
        lower, upper, work, dst = args
        _mount("-t", "overlay", "overlay", "-o",
               f"lowerdir={lower},upperdir={upper},workdir={work}", dst)
    else:
        raise ValueError(f"unknown step {step!r}")


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    socket.sethostname(spec["hostname"])
    for step in spec["steps"]:
        run_step(step)

    def stop(signum, frame):  # PID 1 gets only the signals it handles
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes signal.pause()
    daemon = None
    if spec.get("daemon"):
        log = open(spec["daemon_log"], "ab")  # noqa: SIM115 - the daemon's stderr for its life
        daemon = subprocess.Popen(spec["daemon"], stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=log)
    with open(spec["ready"] + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {time.time()}\n")
    os.replace(spec["ready"] + ".tmp", spec["ready"])
    while True:  # reap everything: ray start daemonises, its processes end up here
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            signal.pause()
            continue
        if daemon is not None and pid == daemon.pid:
            print(f"vm_init: the daemon exited with status {status}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
