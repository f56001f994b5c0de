"""serve.py and the Ray Serve app on the shared local autoscaling cluster (fixture ``local_cluster``).

Each server runs as a subprocess, exactly as a user starts it (``python
workloads/serve.py`` or ``workloads/serve_app.py`` with the cluster's
RAY_ADDRESS and token in the environment), and is talked to over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from workloads import serve, serve_http

from .asgi_server import AppServer
from .conftest import REPO, WORKLOADS, free_port, readme_local_block, stop_process_group

pytestmark = pytest.mark.cluster


class HttpServer:
    """A server script started as a user starts it; stopped with its process group."""

    def __init__(self, script, *args, env):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(WORKLOADS, script), "--port", str(self.port),
             *map(str, args)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
            start_new_session=True,
        )
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(iter(self.proc.stdout.readline, "")),
                         daemon=True).start()
        self.base = f"http://127.0.0.1:{self.port}"

    def call(self, path, body=None, timeout=120, method=None):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_healthy(self, timeout=240) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "".join(self.log)[-3000:]
            assert time.monotonic() < deadline, "".join(self.log)[-3000:]
            try:
                status, health = self.call("/healthz", timeout=10)
                if status == 200:
                    return health
            # Not up yet; or Serve's proxy is, before the app's routes (a text 404).
            except (OSError, ValueError):
                pass
            time.sleep(0.5)

    def stop(self):
        if self.proc.poll() is None:  # a test may have stopped it already
            stop_process_group(self.proc, timeout=60)


def expect_same_predictions(got, rows, model):
    expected = serve.predict_with(model, rows)
    assert [p["anomaly"] for p in got] == [p["anomaly"] for p in expected]
    assert np.allclose([p["score"] for p in got], [p["score"] for p in expected],
                       rtol=1e-12, atol=1e-12)


def test_serve_answers_every_request_while_an_actor_dies(driver_env):
    server = HttpServer("serve.py", "--actors", 2, env=driver_env)
    try:
        health = server.wait_healthy()
        assert health["status"] == "ok", health
        victim = health["actors"][0]["pid"]

        model = serve.fit_model(serve.DEFAULT_SEED, serve.DEFAULT_FEATURES)
        rng = np.random.default_rng(42)
        batches = [rng.normal(0, 2.5, size=(int(rng.integers(1, 30)), 8)).tolist()
                   for _ in range(64)]
        # (batch index, sent at, answered at, status, body); clients keep sending until stop
        done: list[tuple] = []
        lock, stop = threading.Lock(), threading.Event()

        def client(k):
            i = k
            while not stop.is_set():
                t0 = time.monotonic()
                status, body = server.call("/predict", {"instances": batches[i % 64]})
                with lock:
                    done.append((i % 64, t0, time.monotonic(), status, body))
                i += 8

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(done) < 40:  # the pool is busy: answers are streaming
            assert time.monotonic() < deadline, len(done)
            time.sleep(0.05)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while len([d for d in done if d[1] > killed_at]) < 80:  # keep going well past the kill
            assert time.monotonic() < deadline + 120, len(done)
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(timeout=120)

        # Requests in flight at the kill: sent before it, answered after it.
        in_flight = [d for d in done if d[1] < killed_at < d[2]]
        assert len(in_flight) >= 1, "the kill hit no request in flight"
        for i, _, _, status, body in done:
            assert status == 200, (i, body)
            expect_same_predictions(body["predictions"], batches[i], model)
        # ... and the server answered some through its resend path (the dead actor's batches).
        stats = server.call("/healthz", timeout=30)[1]["batching"]
        assert stats["resent_batches"] >= 1 and stats["resent_requests"] >= 1, stats
        assert stats["failed_batches"] == 0 and stats["requests"] >= len(done), stats
        print(f"in flight at the kill: {len(in_flight)}; answered through a resent batch: "
              f"{stats['resent_requests']} requests ({stats['resent_batches']} batches); "
              f"{len(done)} requests, all 200")

        # The actor came back (a new process) and serves again.
        deadline = time.monotonic() + 120
        while True:
            status, health = server.call("/healthz", timeout=30)
            pids = [a.get("pid") for a in health["actors"]]
            if status == 200 and health["status"] == "ok" and victim not in pids:
                break
            assert time.monotonic() < deadline, health
            time.sleep(0.5)
        assert server.call("/predict", {"instances": [[9] * 8]})[1]["predictions"][0]["anomaly"]
        status, body = server.call("/predict", {"instances": [[1, 2]]})
        assert status == 400 and "expects 8" in body["error"]
    finally:
        server.stop()


def alive_actor_classes(driver_env) -> list[str]:
    """Class names of the ALIVE actors on the shared cluster (Ray's state API)."""
    probe = subprocess.run([sys.executable, "-c", (
        "import ray, json; ray.init(log_to_driver=False)\n"
        "from ray.util.state import list_actors\n"
        "print(json.dumps([a.class_name for a in list_actors("
        "filters=[('state', '=', 'ALIVE')], limit=1000)]))")],
        env=driver_env, capture_output=True, text=True, timeout=120, check=False)
    assert probe.returncode == 0, probe.stderr[-2000:]
    return json.loads(probe.stdout.strip().splitlines()[-1])


def wait_for_line(server: HttpServer, prefix: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for line in list(server.log):
            if line.startswith(prefix):
                return line.rstrip("\n")
        assert server.proc.poll() is None, "".join(server.log)[-3000:]
        assert time.monotonic() < deadline, "".join(server.log)[-3000:]
        time.sleep(0.1)


def assert_one_clean_stop_line(log: str, signame: str) -> None:
    lines = log.splitlines()
    stops = [ln for ln in lines if ln.startswith("serve: stopped")]
    assert len(stops) == 1 and stops[0].startswith(f"serve: stopped by {signame} "), log[-3000:]
    assert lines[-1] == stops[0], log[-3000:]  # the last word
    for noise in ("received at time", "Traceback", "*** ", "PC: @", "Error"):
        assert noise not in log, (noise, log[-3000:])


def test_serve_prints_one_ready_line_once_it_answers_and_stops_cleanly_on_ctrl_c(driver_env):
    server = HttpServer("serve.py", "--actors", 2, env=driver_env)
    try:
        ready = wait_for_line(server, "serve: ready at ")
        assert ready.startswith(f"serve: ready at http://127.0.0.1:{server.port} "), ready
        # The line means it answers now: no retry loop.
        status, health = server.call("/healthz", timeout=30)
        assert status == 200 and health["status"] == "ok", health
        pids = [a["pid"] for a in health["actors"]]
        status, body = server.call("/predict", {"instances": [[9] * 8, [0] * 8]})
        assert status == 200 and [p["anomaly"] for p in body["predictions"]] == [True, False]
        os.killpg(server.proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the group
        assert server.proc.wait(timeout=120) == 0
    finally:
        server.stop()
    time.sleep(0.5)  # the reader thread drains the pipe
    log = "".join(server.log)
    assert sum(ln.startswith("serve: ready at ") for ln in log.splitlines()) == 1
    assert_one_clean_stop_line(log, "SIGINT")
    assert "after answering 1 prediction request(s)" in log
    deadline = time.monotonic() + 60  # the actors' processes went with it
    while any(_pid_alive(p) for p in pids):
        assert time.monotonic() < deadline, pids
        time.sleep(0.5)


def test_serve_stops_cleanly_on_sigterm_while_its_actors_start(driver_env):
    server = HttpServer("serve.py", "--actors", 2, env=driver_env)
    try:
        wait_for_line(server, "serve: starting ")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=120) == 0
    finally:
        server.stop()
    time.sleep(0.5)
    log = "".join(server.log)
    assert "serve: ready" not in log
    assert_one_clean_stop_line(log, "SIGTERM")
    deadline = time.monotonic() + 60  # no model actor is left on the shared cluster
    while "AnomalyModel" in alive_actor_classes(driver_env):
        assert time.monotonic() < deadline
        time.sleep(1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_readme_serve_example_waits_for_readiness_and_stops_cleanly(driver_env):
    """workloads/README.md's serve lines, run by bash as written (a free port for 8000)."""
    block = readme_local_block()
    lines = block.splitlines()
    first = next(i for i, ln in enumerate(lines) if "workloads/serve.py" in ln)
    last = next(i for i, ln in enumerate(lines) if ln.startswith("kill $SERVE_PID"))
    port = free_port()
    script = "\n".join(lines[first:last + 1]).replace("8000", str(port)).replace(
        ".venv/bin/", f"{os.path.dirname(sys.executable)}/")
    r = subprocess.run(["bash", "-c", script], env=driver_env, cwd=REPO, capture_output=True,
                       text=True, timeout=600, check=False)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert r.stdout.count(f"serve: ready at http://127.0.0.1:{port} ") == 1, log[-3000:]
    answer = next(ln for ln in r.stdout.splitlines() if ln.startswith('{"predictions"'))
    assert [p["anomaly"] for p in json.loads(answer)["predictions"]] == [False, True]
    assert_one_clean_stop_line(r.stdout, "SIGTERM")
    assert "received at time" not in log and "Traceback" not in log


SAME_ERRORS = [b"{not json", b'{"instances": [[1,2,3]]}', b'{"instances": [[1,2,3,4,5,6,7,true]]}',
               b"[1]", b'{"instances": []}', b'{"instances": [[1,2,3,4,5,6,7,NaN]]}']


@pytest.mark.parametrize("mode", [[], ["--throughput-optimized"]], ids=["default", "haproxy"])
def test_ray_serve_app_answers_like_serve_py(driver_env, mode):
    """serve_app.py on the local cluster: same predictions, same 400s and 404/405 as serve.py.

    Also with --throughput-optimized: Serve's HAProxy ingress in front of
    replicas that serve HTTP themselves (the bench's Ray Serve).
    """
    haproxy_dirs = set(Path(tempfile.gettempdir()).glob("serve-haproxy-*"))
    server = HttpServer("serve_app.py", "--replicas", 2, "--max-batch-rows", 256, *mode,
                        env=driver_env)
    try:
        server.wait_healthy()
        model = serve.fit_model(serve.DEFAULT_SEED, serve.DEFAULT_FEATURES)
        rng = np.random.default_rng(11)
        # concurrent callers (batched together), one larger than a batch (split into 3 items)
        batches = [rng.normal(0, 2.5, size=(n, 8)).tolist() for n in (1, 7, 30, 100, 255, 600)]
        answers: dict[int, tuple] = {}
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(
            i, server.call("/predict", {"instances": batches[i]}))) for i in range(len(batches))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for i, rows in enumerate(batches):
            status, body = answers[i]
            assert status == 200, body
            expect_same_predictions(body["predictions"], rows, model)

        front = AppServer(lambda: serve_http.App(serve.Batcher(InProcessModel(model), 8),
                                                 InProcessModel.health, 8))
        try:
            ref = front.client()
            for body in SAME_ERRORS:
                want = ref.post("/predict", data=body)
                assert want.status_code == 400
                assert server.call("/predict", body) == (400, want.get_json()), body
            for method, path in (("GET", "/"), ("GET", "/predict"), ("POST", "/healthz")):
                want = ref.open(path, method=method, data=b"{}" if method == "POST" else None)
                got = server.call(path, b"{}" if method == "POST" else None, method=method)
                assert got == (want.status_code, want.get_json()), (method, path)
        finally:
            front.stop()
    finally:
        server.stop()
    # serve_app.py shut Serve down on SIGTERM: no Serve actor is left on the shared cluster
    alive = alive_actor_classes(driver_env)
    assert not [c for c in alive if "Serve" in c or "Proxy" in c], alive
    if mode:  # nor its HAProxy process, nor the run's HAProxy files
        assert "HAProxy ingress" in "".join(server.log)
        deadline = time.monotonic() + 60
        while _haproxy_pids():
            assert time.monotonic() < deadline, _haproxy_pids()
            time.sleep(1)
        assert set(Path(tempfile.gettempdir()).glob("serve-haproxy-*")) <= haproxy_dirs


def _haproxy_pids() -> list[int]:
    """haproxy processes started with one of serve_app.py's HAProxy dirs (serve-haproxy-*)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"haproxy" in cmd and b"serve-haproxy-" in cmd:
                out.append(int(entry))
    return out


class InProcessModel:
    """serve.py's front over the model in this process (the reference for the Serve app)."""

    size = 1

    def __init__(self, model):
        self.model = model

    async def scores_on(self, i, x):
        from workloads import anomaly_model

        return anomaly_model.scores(self.model, x)

    @staticmethod
    async def health():
        return []
