"""Where serve.py's time goes: CPU seconds per process group, and a py-spy profile of the front.

``cpu_seconds(pids)`` reads utime + stime from /proc; ``machine_busy()`` the
busy CPU seconds of the whole machine (/proc/stat). The bench takes both
around a measured run and splits the machine's 2 cores x the run's seconds
into: the model (seconds the actors spent inside IsolationForest, from their
own counters), the rest of the actors' processes (Ray's per-call work,
(de)serialisation), the HTTP front (serve.py's process), the other Ray
processes of the cluster (GCS, raylets, dashboard, ...), wrk, anything else
on the machine, and idle.

``profile(pid, seconds)`` samples the front with py-spy (in ``.venv``: it
comes with ray[default]) and sorts the samples into the front's stages.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cluster import procs

TICKS = os.sysconf("SC_CLK_TCK")

# py-spy frame "function (file:line)" -> stage; first match wins, leaf to root.
PROFILE_STAGES = [
    ("parse and validate (JSON -> array)", ("parse_instances", "_numbers_only", "_as_array",
                                            "_json_loads", "orjson")),
    ("response (scores -> JSON)", ("response_body", "predictions (workloads")),
    ("Ray: submit calls, receive results", ("ray/", "ray\\", "_raylet")),
    ("batching (queue, dispatch)", ("serve_batcher.py",)),
    ("HTTP (uvicorn, httptools, asyncio)", ("uvicorn/", "httptools", "asyncio/", "serve_http.py",
                                            "uvloop")),
]
LOOP_STAGE = "event loop itself (uvloop, native: polling, socket reads and writes)"


def cpu_seconds(pids) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def machine_busy() -> float:
    """Busy CPU seconds of all CPUs since boot (everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / TICKS


def children(pid: int) -> set[int]:
    """pid and its descendants (from /proc)."""
    return procs.descendants({pid}, set(procs.all_pids()))


def split_cpu(before: dict, after: dict, *, elapsed: float, cores: int, requests: int) -> dict:
    """CPU ms per request by consumer, and the machine's seconds by consumer (see module doc)."""
    d = {k: after[k] - before[k] for k in before if k in after}
    model = d["model"]
    actors_rest = max(d["actors"] - model, 0.0)
    accounted = d["actors"] + d["front"] + d["cluster"] + d["wrk"]
    other = max(d["machine"] - accounted, 0.0)
    idle = max(cores * elapsed - d["machine"], 0.0)
    parts = {"model (IsolationForest in the actors)": model,
             "actors' other work (Ray calls, (de)serialisation)": actors_rest,
             "HTTP front (serve.py process)": d["front"],
             "other Ray processes (GCS, raylets, dashboard, ...)": d["cluster"],
             "wrk (load generator)": d["wrk"],
             "other processes on the machine": other,
             "idle": idle}
    return {"seconds": {k: round(v, 3) for k, v in parts.items()},
            "ms_per_request": {k: round(v / requests * 1000, 4) if requests else None
                               for k, v in parts.items()},
            "machine_seconds": round(cores * elapsed, 3)}


def py_spy() -> str | None:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def start_profile(pid: int, seconds: float, rate: int = 250) -> tuple[subprocess.Popen, str] | str:
    """Start sampling pid; (process, output path), or a string saying why it cannot."""
    exe = py_spy()
    if exe is None:
        return "py-spy not found (it comes with ray[default] in .venv)"
    fd, out = tempfile.mkstemp(prefix="rgb-pyspy-", suffix=".txt")
    os.close(fd)
    proc = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", str(rate), "--format", "raw", "--output", out, "--nonblocking"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, out


def finish_profile(handle, timeout: float = 120) -> dict:
    """The stages' shares of the samples, and the top functions (or why there is none)."""
    if isinstance(handle, str):
        return {"error": handle}
    proc, path = handle
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        text, _ = proc.communicate()
    try:
        raw = Path(path).read_text()
    except OSError:
        raw = ""
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    if proc.returncode != 0 or not raw.strip():
        why = (text or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"error": f"py-spy could not sample the server: {why[0]} (it needs ptrace: root, "
                         "or kernel.yama.ptrace_scope 0)"}
    return summarize_profile(raw)


def summarize_profile(raw: str, top: int = 12) -> dict:
    """py-spy --format raw ("frame;frame;... count" lines) -> stage shares and top functions."""
    stages, leaves, total = collections.Counter(), collections.Counter(), 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        total += n
        stages[_stage(frames)] += n
        if frames:
            leaves[frames[-1]] += n
    if not total:
        return {"error": "py-spy recorded no samples"}
    return {"samples": total,
            "stages": {k: round(v / total, 4) for k, v in stages.most_common()},
            "top_functions": [[f, round(v / total, 4)] for f, v in leaves.most_common(top)]}


def _stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, needles in PROFILE_STAGES:
            if any(n in frame for n in needles):
                return stage
    return LOOP_STAGE
