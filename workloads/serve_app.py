"""The anomaly model as a Ray Serve application (same API as serve.py).

A deployment whose replicas each fit the model once (anomaly_model.fit_model,
same seed = same model as serve.py's actors) and merge concurrent requests
with ``@serve.batch``, counting rows, not requests (``batch_size_fn``). A
request larger than ``max_batch_rows`` is split into several batch items, so
its parts can ride in different batches. Requests, responses and errors are
serve.py's: POST /predict, GET /healthz, the same 400 messages
(anomaly_model.parse_instances) and JSON 404/405 for anything else.

Import paths (``workloads/`` is the working directory / on PYTHONPATH):
  serve_app:app        the application with the defaults below (what a KubeRay
                       RayService ``serveConfigV2`` imports)
  serve_app:build_app  an application builder; Serve passes the config's
                       ``args`` (replicas, seed, features, max_batch_rows,
                       max_wait_ms, max_queued_requests) to it

Throughput (``--throughput-optimized``, what Ray's documentation recommends for
throughput since Ray 2.55): Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY``,
the haproxy binary comes with Ray) in front of replicas that serve HTTP
themselves, and ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` (user code and router on the
replica's main loop, buffered logs, gRPC between deployments). The flags are
environment variables of Serve's controller, proxy and replicas: the CLI passes
them as their runtime_env; with ``serve run``/``serve deploy`` or a RayService,
set them in the cluster's environment instead (workloads/README.md).

Examples (with RAY_ADDRESS and the token settings of the cluster set):
  serve run --working-dir workloads serve_app:app
  serve run --working-dir workloads serve_app:build_app replicas=4 max_wait_ms=5
  serve deploy workloads/serve_config.yaml --address http://127.0.0.1:8265
  python workloads/serve_app.py --port 8000 --replicas 2  (Ctrl-C shuts Serve down)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

try:
    from workloads import anomaly_model
except ImportError:  # workloads/ itself is the working dir (serve run, RayService)
    import anomaly_model

import numpy as np
from ray import serve

DEFAULT_REPLICAS = 2
DEFAULT_MAX_BATCH_ROWS = 8192  # as serve.py: a call costs ~6 ms however few its rows
DEFAULT_MAX_WAIT_MS = 10.0  # same as serve.py (and Serve's own default)
# Serve answers 503 once this many requests wait for a replica (its own
# overload ceiling, per deployment handle); -1 would be unbounded.
DEFAULT_MAX_QUEUED_REQUESTS = 256
DEFAULT_MAX_ONGOING_REQUESTS = 64  # per replica: enough concurrent callers to fill a batch


def _rows(items: list) -> int:
    return sum(len(x) for x in items)


@serve.deployment(name="AnomalyModel", ray_actor_options={"num_cpus": 1},
                  max_ongoing_requests=DEFAULT_MAX_ONGOING_REQUESTS)
class AnomalyService:
    """One replica: the fitted model, batched scoring and the HTTP contract."""

    def __init__(self, seed: int = anomaly_model.DEFAULT_SEED,
                 n_features: int = anomaly_model.DEFAULT_FEATURES,
                 max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
                 max_instances: int = anomaly_model.MAX_INSTANCES):
        self.model = anomaly_model.fit_model(seed, n_features)
        self.n_features = n_features
        self.max_instances = max_instances
        self.max_batch_rows = max_batch_rows
        self._score_batch.set_max_batch_size(max_batch_rows)
        self._score_batch.set_batch_wait_timeout_s(max_wait_ms / 1000.0)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_ROWS,
                 batch_wait_timeout_s=DEFAULT_MAX_WAIT_MS / 1000.0, batch_size_fn=_rows)
    async def _score_batch(self, items: list[np.ndarray]) -> list[np.ndarray]:
        x = items[0] if len(items) == 1 else np.concatenate(items)
        # In a thread, so the replica's event loop keeps reading the next requests.
        scores = await asyncio.to_thread(anomaly_model.scores, self.model, x)
        return np.split(scores, np.cumsum([len(i) for i in items])[:-1])

    async def scores(self, x: np.ndarray) -> np.ndarray:
        step = self.max_batch_rows
        parts = [x[i:i + step] for i in range(0, len(x), step)]
        return np.concatenate(await asyncio.gather(*(self._score_batch(p) for p in parts)))

    async def __call__(self, request):
        from starlette.responses import Response

        def reply(body: bytes, status: int = 200) -> Response:
            return Response(body, status_code=status, media_type="application/json")

        path = request.url.path or "/"
        refused = anomaly_model.route_error(request.method, path)
        if refused:
            return reply(anomaly_model.error_body(refused[1]), refused[0])
        if path == "/healthz":
            return reply(anomaly_model.json_dumps({"status": "ok", "actors": [
                {"index": 0, "alive": True, "pid": os.getpid(),
                 "node_id": _node_id()}]}))
        body = await request.body()
        if len(body) > anomaly_model.MAX_BODY_BYTES:
            return reply(anomaly_model.error_body(
                f"body larger than {anomaly_model.MAX_BODY_BYTES} bytes; split the batch"), 413)
        try:
            x = anomaly_model.parse_instances(body, self.n_features, self.max_instances)
        except anomaly_model.BadRequest as e:
            return reply(anomaly_model.error_body(str(e)), 400)
        return reply(anomaly_model.response_body(await self.scores(x)))


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def build_app(args: dict | None = None):
    """Application builder: Serve calls it with the config's ``args`` (all optional).

    replicas, seed, features, max_batch_rows, max_wait_ms, max_queued_requests.
    """
    return _application(args)


def throughput_env(files_dir: str, metrics_port: int) -> dict[str, str]:
    """The environment of ``--throughput-optimized`` (Serve's controller, proxy and replicas).

    The two flags Ray's documentation names, plus where this run's HAProxy
    keeps its files and metrics (Serve's defaults are fixed paths under /tmp
    and port 9101, shared by every Serve on the machine), and readiness checks
    that wait 60 s instead of 5: on a busy 2-core machine HAProxy's proxy
    needs longer, and Serve would kill and restart it (measured).
    """
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
        "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(files_dir, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(files_dir, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": files_dir,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(files_dir, "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
    }


def _application(args: dict | None, env_vars: dict[str, str] | None = None):
    args = dict(args or {})
    known = {"replicas", "seed", "features", "max_batch_rows", "max_wait_ms",
             "max_queued_requests"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"serve_app: unknown args {', '.join(unknown)}; allowed: "
                         f"{', '.join(sorted(known))}")
    replicas = _int_arg(args, "replicas", DEFAULT_REPLICAS, 1)
    max_batch_rows = _int_arg(args, "max_batch_rows", DEFAULT_MAX_BATCH_ROWS, 1)
    max_queued = _int_arg(args, "max_queued_requests", DEFAULT_MAX_QUEUED_REQUESTS, -1)
    try:
        max_wait_ms = float(args.get("max_wait_ms", DEFAULT_MAX_WAIT_MS))
    except ValueError:
        raise ValueError(f"serve_app: max_wait_ms must be a number of ms, got "
                         f"{args['max_wait_ms']!r}") from None
    if not 0 <= max_wait_ms <= 1000:
        raise ValueError(f"serve_app: max_wait_ms must be 0..1000, got {max_wait_ms:g}")
    actor_options = {"num_cpus": 1}
    if env_vars:
        actor_options["runtime_env"] = {"env_vars": dict(env_vars)}
    return AnomalyService.options(num_replicas=replicas, max_queued_requests=max_queued,
                                  ray_actor_options=actor_options).bind(
        seed=_int_arg(args, "seed", anomaly_model.DEFAULT_SEED, None),
        n_features=_int_arg(args, "features", anomaly_model.DEFAULT_FEATURES, 1),
        max_batch_rows=max_batch_rows, max_wait_ms=max_wait_ms)


def _int_arg(args: dict, name: str, default: int, minimum: int | None) -> int:
    value = args.get(name, default)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"serve_app: {name} must be an integer, got {value!r}") from None
    if minimum is not None and n < minimum:
        raise ValueError(f"serve_app: {name} must be >= {minimum}, got {n}")
    return n


app = build_app()


# ----------------------------------------------------------------- CLI -------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serve_app.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="Serve's HTTP host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="Serve's HTTP port (default 8000)")
    p.add_argument("--replicas", type=int, default=DEFAULT_REPLICAS,
                   help=f"model replicas, 1 CPU each (default {DEFAULT_REPLICAS})")
    p.add_argument("--features", type=int, default=anomaly_model.DEFAULT_FEATURES,
                   help=f"features per instance (default {anomaly_model.DEFAULT_FEATURES})")
    p.add_argument("--seed", type=int, default=anomaly_model.DEFAULT_SEED,
                   help="training-data seed (default 0)")
    p.add_argument("--max-batch-rows", type=int, default=DEFAULT_MAX_BATCH_ROWS,
                   help=f"rows per @serve.batch call (default {DEFAULT_MAX_BATCH_ROWS})")
    p.add_argument("--max-wait-ms", type=float, default=DEFAULT_MAX_WAIT_MS,
                   help=f"batch wait (default {DEFAULT_MAX_WAIT_MS:g} ms)")
    p.add_argument("--max-queued-requests", type=int, default=DEFAULT_MAX_QUEUED_REQUESTS,
                   help="requests waiting for a replica before Serve answers 503 "
                        f"(default {DEFAULT_MAX_QUEUED_REQUESTS}; -1 = unbounded)")
    p.add_argument("--throughput-optimized", action="store_true",
                   help="Serve's HAProxy ingress and RAY_SERVE_THROUGHPUT_OPTIMIZED (see above); "
                        "on a multi-node cluster also --host 0.0.0.0, so HAProxy on the head "
                        "reaches replicas on other nodes")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)")
    return p


def main(argv=None) -> int:
    """Start Serve on --host/--port, deploy the app, block; Ctrl-C/SIGTERM shut Serve down."""
    import shutil
    import signal
    import socket
    import tempfile
    import threading

    a = build_parser().parse_args(argv)
    files_dir, env_vars, start_options = None, None, {}
    if a.throughput_optimized:
        files_dir = tempfile.mkdtemp(prefix="serve-haproxy-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            env_vars = throughput_env(files_dir, s.getsockname()[1])
        start_options["controller_options"] = {"runtime_env": {"env_vars": env_vars}}
    try:
        application = _application(
            {"replicas": a.replicas, "features": a.features, "seed": a.seed,
             "max_batch_rows": a.max_batch_rows, "max_wait_ms": a.max_wait_ms,
             "max_queued_requests": a.max_queued_requests}, env_vars)
    except ValueError as e:
        print(f"serve_app.py: error: {e}", file=sys.stderr)
        return 2
    from workloads import common

    common.connect(a.address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        # One proxy, on the head: fake local nodes share one network namespace,
        # and this is the one address the caller asked for.
        serve.start(proxy_location="HeadOnly", http_options={"host": a.host, "port": a.port},
                    **start_options)
        serve.run(application, name="anomaly", route_prefix="/")
        mode = " (HAProxy ingress, throughput-optimized)" if a.throughput_optimized else ""
        print(f"serve_app: listening on http://{a.host}:{a.port}{mode}", flush=True)
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()  # Serve's controller and proxies are detached: remove them
        if files_dir:
            shutil.rmtree(files_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    # Run under the package name, so Serve pickles AnomalyService by reference.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from workloads import serve_app as _serve_app  # noqa: PLW0406 - see above

    sys.exit(_serve_app.main())
