"""The HTTP load generator: ``wrk`` (compiled, event-driven) with a Lua POST script.

A Python thread pool would compete with the servers for this machine's two
cores and measure its own GIL; wrk keeps ``connections`` requests in flight
from one thread and reports latency percentiles itself. ``run`` also records
wrk's own CPU time (from the kernel's rusage), so the report can say how much
of the machine the load generator took. wrk comes from Debian (``apt-get
install wrk``); ``.ci/run`` and ``make bench`` install it where missing.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost")
LUA_SCRIPT = Path(__file__).with_name("wrk_post.lua")
RESULT_PREFIX = "WRK_RESULT "


class LoadGenError(RuntimeError):
    """wrk is missing or gave no result; the message says what to do."""


def wrk_path() -> str:
    path = shutil.which("wrk")
    if not path:
        raise LoadGenError("wrk not found on PATH: install it with `apt-get install wrk` "
                           "(make bench and .ci/run do this where they can)")
    return path


def post_json(host: str, port: int, path: str, body: bytes, timeout: float = 30.0):
    """One request (probes and checks); returns (status, body bytes)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def parse_result(stdout: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise LoadGenError(f"wrk printed no {RESULT_PREFIX.strip()} line: {stdout[-500:]!r}")


def summarize(raw: dict, cpu_seconds: float, cores: int) -> dict:
    """wrk's counts as the report's fields: non-2xx, failed, rps of answered requests."""
    elapsed = raw["duration_us"] / 1e6
    socket_errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
    non_2xx = raw["status_errors"]  # wrk counts status > 399; our servers send no 3xx
    ok = raw["requests"] - non_2xx
    return {
        "requests": raw["requests"],
        "ok": ok,
        "non_2xx": non_2xx,
        "socket_errors": socket_errors,
        "errors": non_2xx + socket_errors,
        "elapsed": elapsed,
        "rps": ok / elapsed if elapsed > 0 else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "loadgen_cpu_seconds": cpu_seconds,
        # share of one core, and of the whole machine
        "loadgen_cpu_core_share": cpu_seconds / elapsed if elapsed > 0 else 0.0,
        "loadgen_cpu_machine_share": cpu_seconds / elapsed / cores if elapsed > 0 else 0.0,
    }


def run(host: str, port: int, path: str, body: bytes, *, connections: int, duration: float,
        timeout: float = 30.0, cores: int | None = None) -> dict:
    """Keep `connections` POSTs of `body` in flight for `duration` seconds; a summary dict."""
    if host not in LOOPBACK:
        raise ValueError(f"load generator only targets this machine (127.0.0.1), not {host!r}")
    if connections < 1 or duration < 1:
        raise ValueError("connections must be >= 1 and duration >= 1 s (wrk's resolution)")
    wrk = wrk_path()
    with tempfile.NamedTemporaryFile(prefix="rgb-body-", suffix=".json") as f:
        f.write(body)
        f.flush()
        cmd = [wrk, "-t1", f"-c{connections}", f"-d{round(duration)}s",
               f"--timeout={int(timeout)}s", "-s", str(LUA_SCRIPT),
               f"http://{host}:{port}{path}", "--", f.name]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = b""
        try:
            # wait4 gives the child's own CPU time; read the pipe first so wrk never blocks on it
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise LoadGenError(f"wrk exited {proc.returncode} after "
                               f"{time.monotonic() - t0:.1f} s: {text[-500:]!r}")
    return summarize(parse_result(text), usage.ru_utime + usage.ru_stime,
                     cores or len(os.sched_getaffinity(0)))
