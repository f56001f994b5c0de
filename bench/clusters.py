"""Local Ray clusters for the benchmarks and the driver subprocesses that use them.

Every cluster is a ``cluster.local.LocalCluster`` (fake_multinode autoscaler)
with its own state dir under a fresh ``/tmp/rgb-*`` temp dir, always
``down()``-ed in ``finally``: only what it started is stopped, never ``ray stop``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.drivers import RESULT_PREFIX
from cluster.local import LocalCluster
from cluster.spec import ClusterSpec, NodeTypeSpec, local_default_spec

REPO = Path(__file__).resolve().parent.parent
WORKER_TYPE = "cpu-worker"


class BenchError(RuntimeError):
    """A measurement could not be taken; the message says what and where to look."""


def work_spec(cores: int) -> ClusterSpec:
    """The spec's defaults with one always-on worker of exactly `cores` CPUs.

    Ray then gets the same CPUs as the multiprocessing.Pool it is compared
    with (the fake node's processes share this machine's cores).
    """
    base = local_default_spec()
    return ClusterSpec(
        **{
            **base.model_dump(),
            "cluster_name": "ray-bench",
            "node_types": {
                "head": base.head,
                WORKER_TYPE: NodeTypeSpec(
                    machine_type="n2-standard-2", resources={"CPU": cores},
                    min_workers=1, max_workers=1,
                ),
            },
            "max_workers": 1,
            "idle_timeout_minutes": 60,
        }
    )


def scaleup_spec(workers: int, upscaling_speed: float | None) -> ClusterSpec:
    """The local default spec with `workers` one-CPU workers (min 0).

    upscaling_speed None keeps the spec's own default (what render_local and
    the GCP config carry); 1.0 is Ray's default.
    """
    base = local_default_spec()
    fields = {
        **base.model_dump(),
        "cluster_name": "ray-bench-scale",
        "node_types": {
            "head": base.head,
            WORKER_TYPE: NodeTypeSpec(
                machine_type="n2-standard-2", resources={"CPU": 1},
                min_workers=0, max_workers=workers,
            ),
        },
        "max_workers": workers,
    }
    if upscaling_speed is not None:
        fields["upscaling_speed"] = upscaling_speed
    return ClusterSpec(**fields)


@contextlib.contextmanager
def local_cluster(spec: ClusterSpec, *, workers: int = 0, timeout: float = 240,
                  log: Callable[[str], None] = print,
                  autoscaler_v2: bool = False, log_bucket: str | None = None,
                  log_endpoint: str | None = None) -> Iterator[LocalCluster]:
    """A LocalCluster; with ``log_bucket`` (and the emulator's ``log_endpoint``) its
    nodes ship their logs, as on GCP (cluster/logship.py)."""
    root = tempfile.mkdtemp(prefix="rgb-", dir="/tmp")
    lc = LocalCluster(Path(root) / "state", spec, autoscaler_v2=autoscaler_v2,
                      log_bucket=log_bucket, log_endpoint=log_endpoint)
    try:
        t0 = time.monotonic()
        lc.up(timeout=timeout)
        log(f"local cluster up in {time.monotonic() - t0:.1f} s (GCS {lc.address})")
        if workers:
            lc.wait_for_workers(workers, timeout=timeout)
            log(f"{workers} worker(s) alive after {time.monotonic() - t0:.1f} s")
        yield lc
    finally:
        lc.down()
        left = lc.owned_pids()
        shutil.rmtree(root, ignore_errors=True)
        if left:
            log(f"WARNING: processes of the local cluster survived down(): {left}")


def driver_env(lc: LocalCluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(lc.driver_env())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def parse_result(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise BenchError("driver printed no result line")


def run_driver(name: str, params: dict, env: dict[str, str], timeout: float) -> dict:
    """Run bench.drivers NAME with params; its stderr streams through as progress."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.drivers", name], check=False, input=json.dumps(params),
            env=env, stdout=subprocess.PIPE, text=True, timeout=timeout, cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"driver {name!r} did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise BenchError(f"driver {name!r} failed (exit {proc.returncode}); see its stderr above")
    return parse_result(proc.stdout)


class DriverProcess:
    """A driver subprocess whose stdout lines are collected as they arrive."""

    def __init__(self, name: str, params: dict, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.drivers", name], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        self.proc.stdin.write(json.dumps(params))
        self.proc.stdin.close()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def first_line_starting(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise BenchError(f"driver gave no {prefix.strip()!r} line within {timeout:.0f} s")

    def result(self, timeout: float) -> dict:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"driver did not finish in {timeout:.0f} s") from None
        self._reader.join(5)
        if rc != 0:
            raise BenchError(f"driver failed (exit {rc}); see its stderr above")
        return parse_result("\n".join(self.lines))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
