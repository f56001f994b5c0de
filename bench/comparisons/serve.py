"""serve: four servers of the same model under the same load (wrk, 127.0.0.1).

1. sequential Flask: one process, the model in-process, one request at a time
   (bench/serve_local.py; the naive baseline);
2. serve.py with batching off: Flask threaded + the Ray actor pool, one actor
   call per request (the server before dynamic batching);
3. serve.py with dynamic batching (its defaults);
4. the Ray Serve app (workloads/serve_app.py, @serve.batch).

Same model (anomaly_model.fit_model, same seed), same request validation and
response format; the probe predictions of all four must be identical.
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
TITLE = "Serving: sequential Flask vs actor pool vs dynamic batching vs Ray Serve"
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
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


SERVERS = {
    # key: (label, needs the Ray cluster)
    "sequential": "sequential Flask (model in-process, one request at a time)",
    "actor_pool": "serve.py, batching off, Flask's threaded server (the server before batching)",
    "batching": "serve.py, dynamic batching (default)",
    "ray_serve": "Ray Serve app (workloads/serve_app.py, @serve.batch)",
}


def _measure_one(ctx, p, server: Server, label: str, rows: int) -> dict:
    body = request_body(rows, p["features"])
    probe = loadgen.post_json(HOST, server.port, "/predict", body)
    if probe[0] != 200:
        raise BenchError(f"{label}: probe request got HTTP {probe[0]}: {probe[1][:300]!r}")
    predictions = json.loads(probe[1])["predictions"]
    loadgen.run(HOST, server.port, "/predict", body, connections=p["concurrency"],
                duration=p["warmup_seconds"], cores=ctx.cores)
    res = loadgen.run(HOST, server.port, "/predict", body, connections=p["concurrency"],
                      duration=p["duration"], cores=ctx.cores)
    ctx.log(f"{label}, {rows} rows/request: {res['rps']:.1f} req/s, p50 {res['p50_ms']:.1f} ms, "
            f"p99 {res['p99_ms']:.1f} ms, {res['non_2xx']} non-2xx, {res['socket_errors']} socket "
            f"errors, wrk CPU {res['loadgen_cpu_core_share']:.0%} of a core")
    return {**res, "predictions_digest": _digest(predictions), "predictions_head": predictions[:4]}


def _digest(predictions: list) -> str:
    import hashlib

    # Scores rounded to 12 significant digits: the servers compute the same
    # float64 values; the rounding only absorbs JSON float formatting.
    canon = [[f"{p['score']:.12g}", p["anomaly"]] for p in predictions]
    return hashlib.sha256(json.dumps(canon).encode()).hexdigest()


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
            "duration": p["duration"], "loadgen": "wrk -t1 (bench/wrk_post.lua)"}


def _serve_py(p, port: int, actors: int, batching: bool) -> list[str]:
    cmd = [sys.executable, "-m", "workloads.serve", "--port", str(port), "--actors", str(actors),
           "--features", str(p["features"])]
    # Batching off is the server as it was before batching: Flask's own threaded server too.
    return cmd + ([] if batching else ["--max-batch-rows", "0", "--http-server", "flask"])


def on_cluster(ctx, p, lc, data) -> dict:
    actors = p.get("actors") or ctx.cores
    env = driver_env(lc)
    commands = {
        "actor_pool": lambda port: _serve_py(p, port, actors, batching=False),
        "batching": lambda port: _serve_py(p, port, actors, batching=True),
        "ray_serve": lambda port: [sys.executable, "-m", "workloads.serve_app", "--port", str(port),
                                   "--replicas", str(actors), "--features", str(p["features"])],
    }
    for key, command in commands.items():
        server = Server(command(_free_port()), env, p["timeout"], ctx.log)
        try:
            data[key] = _measure(ctx, p, server, SERVERS[key])
        finally:
            server.stop()
    data["actors"] = actors
    return data


def checks(data) -> dict:
    present = [k for k in SERVERS if k in data]
    base = data["sequential"]
    same = all(set(data[k]) == set(base) and all(
        data[k][s]["predictions_digest"] == base[s]["predictions_digest"] for s in base)
        for k in present)
    errors = sum(r["errors"] for k in present for r in data[k].values())
    ok = same and errors == 0 and len(present) == len(SERVERS)
    detail = (f"identical predictions from all {len(SERVERS)} servers for the probe request of "
              "every size; no non-2xx or failed requests"
              if ok else f"servers measured: {', '.join(present)}; predictions identical: {same}; "
                         f"non-2xx or failed requests: {errors}")
    return {"outputs_agree": ok, "detail": detail}
