"""The Cloud Storage emulator the tests run: PyPI ``gcp-storage-emulator``, a
subprocess on 127.0.0.1 with a free port and in-memory storage. Google's
clients (and cluster.gcs_http) find it through ``STORAGE_EMULATOR_HOST``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

EMULATOR_BUCKET = "ray-gcp-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(bucket: str = EMULATOR_BUCKET) -> tuple[subprocess.Popen, str]:
    """(process, ``http://127.0.0.1:<port>``) of a running emulator with ``bucket``."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
         "--port", str(port), "--in-memory", "--default-bucket", bucket, "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}", timeout=2).read()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_process_group(proc, timeout=5)
                raise RuntimeError(f"GCS emulator did not start: {proc.stderr.read()!r}") from None
            time.sleep(0.2)


def stop_process_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the group a test started (start_new_session=True), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
