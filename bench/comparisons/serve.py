"""serve: the model's own limit, and three servers of it under the same load (wrk, 127.0.0.1).

0. the limit: IsolationForest scoring in-process, no HTTP, on 1 and 2 cores,
   over a grid of batch sizes (bench/model_limit.py);
1. naive Flask: one process, the model in-process, one request at a time
   (bench/serve_local.py);
2. serve.py: asyncio HTTP front, dynamic batching, Ray actors (its defaults);
3. the Ray Serve app (workloads/serve_app.py, @serve.batch), tuned for throughput
   the way Ray's documentation says (see workloads/README.md).
(4. optionally, serve.py with batching off: ``"servers"`` in bench/config.py.)

Every request size (1 to 8192 rows) on every server. Same model
(anomaly_model.fit_model, same seed), same validation and response format;
the probe predictions of all servers must be identical. For serve.py each
run also records where the time goes: the batches it formed, the stages of a
request (from its /healthz counters), the CPU seconds of every process
involved (bench/serve_accounting.py), and a py-spy profile at one size.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np

from bench import loadgen, machine, model_limit, serve_accounting
from bench.clusters import REPO, BenchError, driver_env

NAME = "serve"
TITLE = "Serving near the model's own limit: naive Flask vs serve.py vs Ray Serve"
COMMAND = "python -m bench --only serve"
HOST = "127.0.0.1"

SERVERS = {
    "sequential": "naive Flask (model in-process, one request at a time)",
    "batching": "serve.py (asyncio front, dynamic batching, Ray actors)",
    "ray_serve": "Ray Serve app (serve_app.py, @serve.batch, tuned)",
    "actor_pool": "serve.py, batching off (one request per actor call)",
}
DEFAULT_SERVERS = ["sequential", "batching", "ray_serve"]


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
                if self.health()["status"] == "ok":
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        self.stop()
        raise BenchError(f"server not healthy within {ready_timeout:.0f} s: "
                         + "\n".join(self.output[-15:]))

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://{HOST}:{self.port}/healthz", timeout=10) as r:
            return json.loads(r.read())

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


def _digest(predictions: list) -> str:
    import hashlib

    # Scores rounded to 12 significant digits: the servers compute the same
    # float64 values; the rounding only absorbs JSON float formatting.
    canon = [[f"{p['score']:.12g}", p["anomaly"]] for p in predictions]
    return hashlib.sha256(json.dumps(canon).encode()).hexdigest()


class _Accounting:
    """Counters and CPU seconds of a serve.py run (see bench/serve_accounting.py)."""

    def __init__(self, server: Server, lc):
        self.server, self.lc = server, lc

    def snapshot(self) -> dict:
        health = self.server.health()
        actor_pids = {a["pid"] for a in health["actors"] if a.get("alive")}
        front = serve_accounting.children(self.server.proc.pid)
        cluster = set(self.lc.owned_pids()) - actor_pids - front if self.lc else set()
        return {"t": time.monotonic(), "health": health,
                "cpu": {"front": serve_accounting.cpu_seconds(front),
                        "actors": serve_accounting.cpu_seconds(actor_pids),
                        "cluster": serve_accounting.cpu_seconds(cluster),
                        "machine": serve_accounting.machine_busy(),
                        "model": sum(a.get("model_cpu_seconds", 0.0) for a in health["actors"]),
                        "model_wall": sum(a.get("model_seconds", 0.0) for a in health["actors"]),
                        "wrk": 0.0}}

    @staticmethod
    def report(before: dict, after: dict, res: dict, cores: int) -> dict:
        b0, b1 = before["health"]["batching"], after["health"]["batching"]
        h0, h1 = before["health"]["http"], after["health"]["http"]
        batches = b1["batches"] - b0["batches"]
        answered = h1["answered"] - h0["answered"]
        model = after["cpu"]["model_wall"] - before["cpu"]["model_wall"]
        call = b1["seconds"].get("call", 0.0) - b0["seconds"].get("call", 0.0)
        stages = {k: (h1["seconds"][k] - h0["seconds"][k]) for k in h1["seconds"]}
        queue = b1["seconds"].get("queue", 0.0) - b0["seconds"].get("queue", 0.0)
        in_batch = b1["seconds"].get("in_batch", 0.0) - b0["seconds"].get("in_batch", 0.0)
        per_req = lambda s: round(s / answered * 1000, 4) if answered else None
        after_cpu = {**after["cpu"], "wrk": res.get("loadgen_cpu_seconds", 0.0)}
        return {
            "batches": batches,
            "mean_batch_rows": round((b1["rows"] - b0["rows"]) / batches, 1) if batches else None,
            "ms_per_request": {"read body": per_req(stages["read"]),
                               "parse and validate": per_req(stages["parse"]),
                               "queue (waiting for a batch to leave)": per_req(queue),
                               "in the batch (actor call)": per_req(in_batch),
                               "build response": per_req(stages["respond"]),
                               "send response": per_req(stages["send"])},
            "ms_per_batch": {"actor call, round trip": round(call / batches * 1000, 4)
                             if batches else None,
                             "model inside the actor": round(model / batches * 1000, 4)
                             if batches else None},
            "cpu": serve_accounting.split_cpu(before["cpu"], after_cpu,
                                              elapsed=after["t"] - before["t"], cores=cores,
                                              requests=res["ok"]),
        }


def _measure_one(ctx, p, server: Server, label: str, rows: int, lc=None,
                 account: bool = False) -> dict:
    body = request_body(rows, p["features"])
    probe = loadgen.post_json(HOST, server.port, "/predict", body)
    if probe[0] != 200:
        raise BenchError(f"{label}: probe request got HTTP {probe[0]}: {probe[1][:300]!r}")
    predictions = json.loads(probe[1])["predictions"]
    loadgen.run(HOST, server.port, "/predict", body, connections=p["concurrency"],
                duration=p["warmup_seconds"], cores=ctx.cores)
    acc = _Accounting(server, lc) if account else None
    load = machine.load_average()
    before = acc.snapshot() if acc else None
    res = loadgen.run(HOST, server.port, "/predict", body, connections=p["concurrency"],
                      duration=p["duration"], cores=ctx.cores)
    out = {**res, "load": load, "predictions_digest": _digest(predictions),
           "predictions_head": predictions[:4]}
    if acc:
        out["breakdown"] = acc.report(before, acc.snapshot(), res, ctx.cores)
    batch = (out.get("breakdown") or {}).get("mean_batch_rows")
    ctx.log(f"{label}, {rows} rows/request: {res['rps']:.1f} req/s ({res['rps'] * rows:,.0f} "
            f"rows/s), p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, {res['non_2xx']} "
            f"non-2xx, {res['socket_errors']} socket errors, wrk CPU "
            f"{res['loadgen_cpu_core_share']:.0%} of a core, load {load[0]}"
            + (f", mean batch {batch:.0f} rows" if batch else ""))
    return out


def _profile(ctx, p, server: Server) -> dict:
    rows = p["profile_rows"]
    body = request_body(rows, p["features"])
    handle = serve_accounting.start_profile(server.proc.pid, p["profile_seconds"])
    try:
        res = loadgen.run(HOST, server.port, "/predict", body, connections=p["concurrency"],
                          duration=p["profile_seconds"], cores=ctx.cores)
    finally:
        prof = serve_accounting.finish_profile(handle)
    prof.update(rows=rows, seconds=p["profile_seconds"], rps_while_sampled=round(res["rps"], 1))
    ctx.log(f"serve.py profile at {rows} rows/request: "
            + (prof["error"] if "error" in prof else
               ", ".join(f"{k} {v:.0%}" for k, v in prof["stages"].items())))
    return prof


def _measure(ctx, p, server: Server, label: str, **kw) -> dict:
    """One load run per request size; keyed by rows per request."""
    return {str(rows): _measure_one(ctx, p, server, label, rows, **kw) for rows in p["rows"]}


def _servers(p) -> list[str]:
    return list(p.get("servers") or DEFAULT_SERVERS)


def local(ctx, p) -> dict:
    cores = sorted(os.sched_getaffinity(0))[:2]
    limit = model_limit.measure(p["limit_batches"], p["limit_seconds"], p["features"], 0, cores,
                                log=ctx.log)
    port = _free_port()
    server = Server([sys.executable, "-m", "bench.serve_local", "--port", str(port),
                     "--features", str(p["features"])], None, 120, ctx.log)
    try:
        res = _measure(ctx, p, server, "naive Flask")
    finally:
        server.stop()
    return {"limit": limit, "sequential": res, "rows_per_request": list(p["rows"]),
            "concurrency": p["concurrency"], "duration": p["duration"],
            "servers": _servers(p), "loadgen": "wrk -t1 (bench/wrk_post.lua)"}


def _serve_py(p, port: int, actors: int, batching: bool) -> list[str]:
    cmd = [sys.executable, "-m", "workloads.serve", "--port", str(port), "--actors", str(actors),
           "--features", str(p["features"])]
    return cmd + ([] if batching else ["--max-batch-rows", "0"])


def _ray_serve(p, port: int, replicas: int) -> list[str]:
    return [sys.executable, "-m", "workloads.serve_app", "--port", str(port), "--replicas",
            str(replicas), "--features", str(p["features"]), *p.get("ray_serve_args", [])]


def on_cluster(ctx, p, lc, data) -> dict:
    actors = p.get("actors") or ctx.cores
    env = driver_env(lc)
    commands = {
        "batching": lambda port: _serve_py(p, port, actors, batching=True),
        "ray_serve": lambda port: _ray_serve(p, port, actors),
        "actor_pool": lambda port: _serve_py(p, port, actors, batching=False),
    }
    for key in _servers(p):
        if key == "sequential":
            continue
        server = Server(commands[key](_free_port()), env, p["timeout"], ctx.log)
        try:
            data[key] = _measure(ctx, p, server, SERVERS[key], lc=lc,
                                 account=key in ("batching", "actor_pool"))
            if key == "batching" and p.get("profile_seconds"):
                data["batching_profile"] = _profile(ctx, p, server)
        finally:
            server.stop()
    data["actors"] = actors
    data["cores"] = ctx.cores
    data["limit_at"] = limits_at(data)
    return data


def limits_at(data) -> dict:
    """The model's limit on 1 and 2 cores at the batch serve.py formed, per request size."""
    out = {}
    grid = data.get("limit") or {}
    for size in data["rows_per_request"]:
        run = (data.get("batching") or {}).get(str(size)) or {}
        batch = (run.get("breakdown") or {}).get("mean_batch_rows") or size
        out[str(size)] = {"batch": batch, **{n: round(model_limit.interpolate(g, batch), 1)
                                             for n, g in grid.items()}}
    return out


def checks(data) -> dict:
    wanted = data.get("servers") or DEFAULT_SERVERS
    present = [k for k in wanted if k in data]
    base = data["sequential"]
    same = all(set(data[k]) == set(base) and all(
        data[k][s]["predictions_digest"] == base[s]["predictions_digest"] for s in base)
        for k in present)
    errors = sum(r["errors"] for k in present for r in data[k].values())
    limit_ok = all(len(g) for g in (data.get("limit") or {"": {}}).values())
    ok = same and errors == 0 and len(present) == len(wanted) and limit_ok
    detail = (f"identical predictions from all {len(wanted)} servers for the probe request of "
              "every size; no non-2xx or failed requests; the model's limit measured"
              if ok else f"servers measured: {', '.join(present)}; predictions identical: {same}; "
                         f"non-2xx or failed requests: {errors}; limit measured: {limit_ok}")
    return {"outputs_agree": ok, "detail": detail}
