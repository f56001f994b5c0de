"""The log shipper's command line: ``python -m cluster.logship run|start ...``.

``run`` ships in the foreground until SIGTERM or SIGINT (then one last pass);
``start`` stops the shipper its pidfile names (SIGTERM: that last pass) and
starts a detached ``run`` with the same options: what a node's start commands
call after ``ray stop`` (cluster/render.py). Bad options are refused, naming
the option, before anything starts (exit status 2).
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cluster import gcs_http
from cluster.logpaths import LOG_PREFIX
from cluster.logship import (
    DEFAULT_INTERVAL_S,
    DEFAULT_LOGS_DIR,
    DEFAULT_MAX_FILE_BYTES,
    ShipConfig,
    Shipper,
    run_argv,
)

# `start` hands the child a pipe and waits (at most this long) for its "ready" byte.
READY_FD_ENV = "RAY_GCP_LOGSHIP_READY_FD"
READY_TIMEOUT_S = 60.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cluster.logship",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "start"):
        s = sub.add_parser(name, help="ship in the foreground" if name == "run" else
                           "replace the shipper of --pidfile with a detached one")
        s.add_argument("--bucket", required=True)
        s.add_argument("--cluster", required=True)
        s.add_argument("--node", required=True, help="this node's name (VM hostname, pod name)")
        s.add_argument("--role", default="worker", choices=["head", "worker"])
        s.add_argument("--node-type", default="")
        s.add_argument("--logs-dir", default=DEFAULT_LOGS_DIR)
        s.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, dest="interval_s",
                       help="seconds between passes (default %(default)s)")
        s.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES,
                       help="kept per file name, node and run (default %(default)s)")
        if name == "start":
            s.add_argument("--pidfile", default="~/.ray-gcp-logship/logship.pid")
            s.add_argument("--log-file", default="~/.ray-gcp-logship/logship.log")
    return p


def _config(args: argparse.Namespace) -> ShipConfig:
    return ShipConfig(
        bucket=args.bucket, cluster=args.cluster, node=args.node, role=args.role,
        node_type=args.node_type, logs_dir=args.logs_dir, interval_s=args.interval_s,
        max_file_bytes=args.max_file_bytes,
    )


def _run(cfg: ShipConfig) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s logship: %(message)s",
    )
    stop = threading.Event()
    # The handler runs in the main thread, which may hold the Event's own lock at that
    # moment (inside stop.wait): setting it from a short thread cannot deadlock.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: threading.Thread(target=stop.set, daemon=True).start())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # outlives the ssh session that started it
    ready_fd = os.environ.pop(READY_FD_ENV, "")
    if ready_fd:  # `start` waits for this: a SIGTERM from now on gets its last pass
        os.write(int(ready_fd), b"1")
        os.close(int(ready_fd))
    Shipper(cfg, gcs_http.GcsHttp(cfg.bucket, timeout=20, attempts=3)).run(stop)
    return 0


def _is_shipper(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"cluster.logship" in cmdline and b"run" in cmdline


def _start(args: argparse.Namespace, cfg: ShipConfig) -> int:
    """Stop the shipper the pidfile names (SIGTERM: its last pass), start a detached one."""
    pidfile = Path(os.path.expanduser(args.pidfile))
    log_file = Path(os.path.expanduser(args.log_file))
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        old = 0
    if old and _is_shipper(old):
        os.kill(old, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _is_shipper(old) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _is_shipper(old):
            os.kill(old, signal.SIGKILL)
    # Its own log stays small: one line per start and stop, one per failed pass.
    if log_file.exists() and log_file.stat().st_size > 1024 * 1024:
        log_file.replace(log_file.with_suffix(log_file.suffix + ".1"))
    ready_r, ready_w = os.pipe()
    with open(log_file, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "cluster.logship", "run", *run_argv(cfg)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            pass_fds=(ready_w,),
            env={**os.environ, "PYTHONPATH": _own_path(), READY_FD_ENV: str(ready_w)},
        )
    os.close(ready_w)
    pidfile.write_text(f"{child.pid}\n")
    # Return once its signal handlers are in place, so that the next `start` (a second
    # `ray up` right after) stops it with its last pass, not before Python has started.
    with os.fdopen(ready_r, "rb") as ready:
        if select.select([ready], [], [], READY_TIMEOUT_S)[0]:
            ready.read(1)
    print(
        f"logship: shipping {cfg.logs_dir} to gs://{cfg.bucket}/{LOG_PREFIX}/{cfg.cluster}/ "
        f"as node {cfg.node} every {cfg.interval_s:g}s (pid {child.pid}, log {log_file})"
    )
    return 0


def _own_path() -> str:
    """PYTHONPATH for the child: where this ``cluster`` package is, then the caller's."""
    here = str(Path(__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (here, rest) if p)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = _config(args)
    except ValueError as e:
        print(f"invalid input (nothing started): {e}", file=sys.stderr)
        return 2
    if args.command == "start":
        return _start(args, cfg)
    return _run(cfg)
