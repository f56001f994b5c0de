"""The model's own limit: IsolationForest scoring in-process, on 1 and on 2 cores.

No HTTP, no JSON, no Ray: one process per core fits the model
(anomaly_model.fit_model, the servers' seed) and calls anomaly_model.scores
on a batch of B rows for a fixed time, for every B of a grid. On 2 cores two
such processes run the grid at the same moments (each pinned to its own
core), and their rows/s add up. A call costs a fixed ~6 ms plus ~4 us per
row, so the seconds per call are affine in B: the limit at any batch size
between two grid points is interpolated on that line.

``python -m bench.model_limit`` is one such process (parameters as JSON on
stdin, "READY" once fitted, then "GO" on stdin starts the grid, one
LIMIT_RESULT JSON line at the end).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.clusters import REPO, BenchError

RESULT_PREFIX = "LIMIT_RESULT "


def interpolate(grid: dict, batch: float) -> float:
    """rows/s at ``batch`` rows per call from {batch: rows/s}, linear in seconds per call."""
    points = sorted((int(b), r) for b, r in grid.items())
    if not points:
        raise ValueError("empty grid")
    per_call = [(b, b / r) for b, r in points]
    if batch <= per_call[0][0]:
        lo, hi = per_call[0], per_call[1] if len(per_call) > 1 else per_call[0]
    elif batch >= per_call[-1][0]:
        lo, hi = per_call[-2] if len(per_call) > 1 else per_call[-1], per_call[-1]
    else:
        i = next(k for k, (b, _) in enumerate(per_call) if b >= batch)
        lo, hi = per_call[i - 1], per_call[i]
    if hi[0] == lo[0]:
        seconds = lo[1]
    else:
        seconds = lo[1] + (hi[1] - lo[1]) * (batch - lo[0]) / (hi[0] - lo[0])
    return batch / seconds


class _Scorer:
    def __init__(self, core: int | None, env: dict | None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.model_limit"], cwd=REPO, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.core = core

    def send(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        self.proc.kill()
        raise BenchError(f"model_limit scorer gave no {prefix.strip()!r} line "
                         f"(exit {self.proc.poll()})")


def measure(batches: list[int], seconds: float, features: int, seed: int, cores: list[int],
            log=print, timeout: float = 300) -> dict:
    """{"1": {batch: rows/s}, "2": {batch: rows/s}} (2 only with two usable cores)."""
    out = {}
    for n in (1, 2):
        if n > len(cores):
            log(f"model limit on {n} cores skipped: only {len(cores)} usable core(s)")
            continue
        scorers = [_Scorer(cores[i], None) for i in range(n)]
        params = {"batches": batches, "seconds": seconds, "features": features, "seed": seed}
        try:
            for s in scorers:
                s.send(json.dumps({**params, "core": s.core}))
            for s in scorers:
                s.expect("READY", timeout)
            start = time.time() + 0.5  # the same grid slots in every process
            for s in scorers:
                s.send(f"GO {start!r}")
            results = [json.loads(s.expect(RESULT_PREFIX, timeout + len(batches) * seconds * 2))
                       for s in scorers]
        finally:
            for s in scorers:
                if s.proc.poll() is None:
                    s.proc.kill()
                s.proc.wait(10)
        out[str(n)] = {str(b): sum(r[str(b)] for r in results) for b in batches}
        log(f"model in-process on {n} core(s): " + ", ".join(
            f"{b} rows/call {out[str(n)][str(b)]:,.0f} rows/s" for b in batches))
    return out


def _run() -> int:
    """One scorer process (see the module doc)."""
    params = json.loads(sys.stdin.readline())
    if params.get("core") is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {params["core"]})
    import numpy as np

    from workloads import anomaly_model

    model = anomaly_model.fit_model(params["seed"], params["features"])
    rng = np.random.default_rng(7)  # the same distribution as the bench's request bodies
    data = {b: rng.normal(0, 1.5, size=(b, params["features"])).round(6)
            for b in params["batches"]}
    for x in data.values():
        anomaly_model.scores(model, x[:1])
    print("READY", flush=True)
    cmd = sys.stdin.readline().split()
    start = float(cmd[1])
    slot = params["seconds"] + 0.25  # 0.25 s between points: the other process catches up
    rates = {}
    for i, b in enumerate(params["batches"]):
        t_begin = start + i * slot
        t_end = t_begin + params["seconds"]
        time.sleep(max(0.0, t_begin - time.time()))
        anomaly_model.scores(model, data[b])  # warm
        rows, t0 = 0, time.perf_counter()
        while time.time() < t_end:
            anomaly_model.scores(model, data[b])
            rows += b
        rates[str(b)] = rows / (time.perf_counter() - t0)
    print(RESULT_PREFIX + json.dumps(rates), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_run())
