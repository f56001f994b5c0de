"""Fixtures for the workload tests: a local GCS emulator and synthetic samples.

The emulator is the PyPI ``gcp-storage-emulator`` package, run as a
subprocess on 127.0.0.1 with a free port and in-memory storage; the
google-cloud-storage client finds it through ``STORAGE_EMULATOR_HOST``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKLOADS = os.path.join(REPO, "workloads")
EMULATOR_BUCKET = "ray-gcp-test"


def readme_local_block() -> str:
    """The bash block of workloads/README.md's "### Local" section (its commands as written)."""
    with open(os.path.join(WORKLOADS, "README.md")) as f:
        text = f.read()
    section = text.split("### Local\n", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """``http://127.0.0.1:<port>`` of a running emulator with bucket EMULATOR_BUCKET."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
         "--port", str(port), "--in-memory", "--default-bucket", EMULATOR_BUCKET, "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b/{EMULATOR_BUCKET}", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"GCS emulator did not start: {proc.stderr.read()!r}")
                time.sleep(0.2)
        yield url
    finally:
        stop_process_group(proc, timeout=10)


@pytest.fixture
def emulated_gcs(gcs_emulator, monkeypatch):
    """STORAGE_EMULATOR_HOST set for this test; yields the bucket name."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    return EMULATOR_BUCKET


def stop_process_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the group a test started (start_new_session=True), SIGKILL if it lingers."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
