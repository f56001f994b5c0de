"""serve: sequential Flask (model in-process, one request at a time) vs serve.py's actor pool.

Same app (workloads.serve.create_app), same model (fit_model, same seed), same
bounded concurrent load on 127.0.0.1; only what answers /predict differs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np

from bench import loadgen
from bench.clusters import REPO, BenchError, driver_env

NAME = "serve"
TITLE = "Serving: sequential Flask vs Ray actor pool (workloads/serve.py)"
COMMAND = "python -m bench --only serve"
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def request_body(rows: int, features: int, seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1.5, size=(rows, features)).round(6).tolist()
    return json.dumps({"instances": x}).encode()


class Server:
    def __init__(self, cmd: list[str], env: dict | None, ready_timeout: float, log):
        self.log = log
        self.port = int(cmd[cmd.index("--port") + 1])
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"server exited ({self.proc.returncode}): "
                                 + "\n".join(self.output[-15:]))
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/healthz", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise BenchError(f"server not healthy within {ready_timeout:.0f} s: "
                         + "\n".join(self.output[-15:]))

    def _pump(self):
        for line in self.proc.stdout:
            self.output.append(line.rstrip())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _measure_one(ctx, p, server: Server, label: str, rows: int) -> dict:
    body = request_body(rows, p["features"])
    probe = loadgen.post_json(HOST, server.port, "/predict", body)
    if probe[0] != 200:
        raise BenchError(f"{label}: probe request got HTTP {probe[0]}: {probe[1][:300]!r}")
    predictions = json.loads(probe[1])["predictions"]
    loadgen.run(HOST, server.port, "/predict", body, concurrency=p["concurrency"],
                duration=p["warmup_seconds"], max_requests=p["max_requests"])
    res = loadgen.run(HOST, server.port, "/predict", body, concurrency=p["concurrency"],
                      duration=p["duration"], max_requests=p["max_requests"]).summary()
    ctx.log(f"{label}, {rows} rows/request: {res['rps']:.1f} req/s, p50 {res['p50_ms']:.1f} ms, "
            f"p99 {res['p99_ms']:.1f} ms, {res['errors']} errors ({res['ok']} ok)")
    return {**res, "predictions_digest": _digest(predictions), "predictions_head": predictions[:4]}


def _digest(predictions: list) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(predictions, sort_keys=True).encode()).hexdigest()


def _measure(ctx, p, server: Server, label: str) -> dict:
    """One load run per request size; keyed by rows per request."""
    return {str(rows): _measure_one(ctx, p, server, label, rows) for rows in p["rows"]}


def local(ctx, p) -> dict:
    port = _free_port()
    server = Server([sys.executable, "-m", "bench.serve_local", "--port", str(port),
                     "--features", str(p["features"])], None, 120, ctx.log)
    try:
        res = _measure(ctx, p, server, "sequential Flask")
    finally:
        server.stop()
    return {"sequential": res, "rows_per_request": list(p["rows"]), "concurrency": p["concurrency"],
            "duration": p["duration"], "max_requests": p["max_requests"]}


def on_cluster(ctx, p, lc, data) -> dict:
    port = _free_port()
    actors = p.get("actors") or ctx.cores
    server = Server([sys.executable, "-m", "workloads.serve", "--port", str(port),
                     "--actors", str(actors), "--features", str(p["features"])],
                    driver_env(lc), p["timeout"], ctx.log)
    try:
        data["actor_pool"] = _measure(ctx, p, server, f"actor pool ({actors} actors)")
    finally:
        server.stop()
    data["actors"] = actors
    return data


def checks(data) -> dict:
    seq, pool = data["sequential"], data["actor_pool"]
    same = set(seq) == set(pool) and all(
        seq[k]["predictions_digest"] == pool[k]["predictions_digest"] for k in seq)
    errors = sum(r["errors"] for r in (*seq.values(), *pool.values()))
    ok = same and errors == 0
    detail = ("identical predictions for the probe request of every size; no failed requests"
              if ok else f"predictions identical: {same}; failed requests: {errors}")
    return {"outputs_agree": ok, "detail": detail}
