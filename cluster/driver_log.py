"""Keep every Ray driver's output in the node's Ray log directory, so it is shipped.

``ray job submit`` drivers already write ``job-driver-<submission id>.log``
there (Ray's JobSupervisor). A driver started by ``ray submit``, ``ray exec``
or a plain ``python`` on a node writes only to its terminal, which goes away
with the SSH session. This module is Ray's runtime-env hook
(``RAY_RUNTIME_ENV_HOOK=cluster.driver_log.hook``, exported on every node by
``~/.ray-gcp-env`` and by ``cluster.ray_start.node_env``): every driver's
``ray.init()`` calls it, before it connects. It then

* for a driver that is not a Ray job: starts one small ``tee`` process and
  points the driver's stdout and stderr (file descriptors 1 and 2, so child
  processes and C extensions too) at it. The tee writes everything on to the
  terminal, unchanged, and appends it to
  ``<logs dir>/driver-<UTC time>-<pid>.log``, rotated at
  ``$RAY_GCP_DRIVER_LOG_MAX_BYTES`` (one older copy, ``.1``; the spec's
  ``logs.rotate_bytes``) so a runaway driver cannot fill the disk. It
  ignores SIGINT, SIGTERM and SIGHUP and ends when the driver's last
  descriptor closes, so the final lines reach the file even when the driver
  is killed;
* for every driver: once connected, records the Ray job id in
  ``<logs dir>/ray-gcp-driver-<job id>.json`` (submission id, pid, command
  line, driver log file), which ``cluster.logs job`` uses to find the job's
  worker files (``worker-*-<job id>-*``) on every node.

The hook returns the runtime env unchanged and never fails a driver: any
problem is one line on stderr. A driver outside a Ray node (no Ray log
directory here) is left alone. ``<logs dir>`` is ``$RAY_GCP_DRIVER_LOG_DIR``,
else ``/tmp/ray/session_latest/logs``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HOOK = "cluster.driver_log.hook"
LOG_DIR_ENV = "RAY_GCP_DRIVER_LOG_DIR"
MAX_BYTES_ENV = "RAY_GCP_DRIVER_LOG_MAX_BYTES"
DEFAULT_LOG_DIR = "/tmp/ray/session_latest/logs"
DEFAULT_MAX_BYTES = 128 * 1024 * 1024
# Ray's JobSupervisor sets this for the drivers it starts (ray/_private/worker.py).
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
MARKER_PREFIX = "ray-gcp-driver-"

_installed = False


def hook(runtime_env: dict[str, Any] | None) -> dict[str, Any] | None:
    """RAY_RUNTIME_ENV_HOOK: keep this driver's output (see the module doc); env unchanged."""
    global _installed
    if not _installed:
        _installed = True
        try:
            _install()
        except Exception as e:  # noqa: BLE001 (never break a driver over its log copy)
            print(f"ray-gcp: driver output is not copied to the Ray logs: {e}", file=sys.stderr)
    return runtime_env


def _install() -> None:
    logs_dir = Path(os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR)
    if not logs_dir.is_dir():
        return
    job = _job_config()
    if job is not None:
        submission = (job.get("metadata") or {}).get("job_submission_id")
        driver_log = f"job-driver-{submission}.log" if submission else None
    else:
        submission = None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        driver_log = f"driver-{stamp}-{os.getpid()}.log"
        _tee_std_streams(logs_dir / driver_log)
    threading.Thread(
        target=_record_job, args=(logs_dir, submission, driver_log), daemon=True,
        name="ray-gcp-driver-log",
    ).start()


def _job_config() -> dict[str, Any] | None:
    text = os.environ.get(JOB_CONFIG_ENV)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {}


def _tee_std_streams(path: Path) -> None:
    """fds 1 and 2 -> one tee process -> the original fds and ``path``."""
    max_bytes = int(os.environ.get(MAX_BYTES_ENV) or DEFAULT_MAX_BYTES)
    sys.stdout.flush()
    sys.stderr.flush()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    # The tee's own descriptors: its ends of the pipes and the original outputs.
    orig_out, orig_err = os.dup(1), os.dup(2)
    fds = (out_r, err_r, orig_out, orig_err)
    here = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (here, os.environ.get("PYTHONPATH", "")) if p)}
    subprocess.Popen(
        [sys.executable, "-m", "cluster.driver_log", "tee", str(path), str(max_bytes),
         *(str(fd) for fd in fds)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=orig_err,
        pass_fds=fds, env=env, close_fds=True,
    )
    for fd in (out_r, err_r, orig_out, orig_err):
        os.close(fd)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.close(out_w)
    os.close(err_w)


def _record_job(logs_dir: Path, submission: str | None, driver_log: str | None) -> None:
    """Once ray.init() has connected: which Ray job this driver is."""
    import ray

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if ray.is_initialized():
            try:
                job_id = ray.get_runtime_context().get_job_id()
            except Exception:  # noqa: BLE001 (a driver that disconnected meanwhile)
                return
            body = {
                "job_id": job_id,
                "submission_id": submission,
                "pid": os.getpid(),
                "argv": sys.argv,
                "driver_log": driver_log,
                "connected": int(time.time()),
            }
            path = logs_dir / f"{MARKER_PREFIX}{job_id}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(body, sort_keys=True) + "\n")
            tmp.replace(path)
            return
        time.sleep(0.2)


# ---- the tee process ----------------------------------------------------------------


def tee(path: str, max_bytes: int, out_r: int, err_r: int, out_fd: int, err_fd: int) -> int:
    """Copy each pipe to its original output and both to ``path`` until both close."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # outlive the driver's last words
    for fd in (out_fd, err_fd):
        with contextlib.suppress(OSError):
            os.set_blocking(fd, True)  # a full terminal pipe waits, it does not fail
    targets = {out_r: out_fd, err_r: err_fd}
    alive = {out_r: True, err_r: True}  # the original output still takes writes
    f = open(path, "ab")  # noqa: SIM115 (rotated below)
    while targets:
        ready, _, _ = select.select(list(targets), [], [])
        for fd in ready:
            data = os.read(fd, 65536)
            if not data:
                del targets[fd]
                continue
            if alive[fd]:
                try:
                    _write_all(targets[fd], data)
                except OSError as e:  # the terminal went away; keep the file
                    alive[fd] = False
                    f.write(f"[ray-gcp: the terminal stopped taking output: {e}]\n".encode())
            while data:  # never more than max_bytes in the file
                room = max_bytes - f.tell()
                if room <= 0:
                    f.close()
                    os.replace(path, path + ".1")
                    f = open(path, "ab")  # noqa: SIM115
                    room = max_bytes
                f.write(data[:room])
                data = data[room:]
            f.flush()
    f.close()
    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:  # made non-blocking by someone else: wait until it drains
            select.select([], [fd], [])


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "tee":
        sys.exit(tee(sys.argv[2], int(sys.argv[3]), *(int(a) for a in sys.argv[4:])))
    print("usage: python -m cluster.driver_log tee FILE MAX_BYTES OUT_R ERR_R OUT_FD ERR_FD",
          file=sys.stderr)
    sys.exit(2)
