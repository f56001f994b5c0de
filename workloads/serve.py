"""HTTP anomaly-detection service: Flask on the head, Ray actors doing the work.

Each actor in the pool fits the model once when it starts: a scikit-learn
IsolationForest trained on data generated from --seed, so every actor holds
the same model and answers are deterministic (workloads/anomaly_model.py,
shared with the Ray Serve app serve_app.py).

Dynamic batching (on by default): concurrent requests that arrive within
--max-wait-ms of each other are merged into one actor call of at most
--max-batch-rows rows, and each caller gets exactly its own rows back, in
order. A request larger than --max-batch-rows is split across actors. A
64-row call costs about as much as a 512-row one, so merging is what lets
the pool beat one Flask process. --max-batch-rows 0 turns batching off
(each request is split across the actors on its own, as before).

Overload is bounded: at most --max-queued-rows rows are admitted and not yet
answered; past that a request gets 503 with Retry-After at once instead of
waiting in a queue that grows without bound.

Endpoints:
  POST /predict  {"instances": [[x1, ..., xN], ...]}  (N = --features)
                 -> {"predictions": [{"score": s, "anomaly": bool}, ...]}
                 score = IsolationForest.decision_function (negative = anomalous)
  GET  /healthz  -> {"status": "ok", "actors": [{"pid", "node_id"}, ...],
                     "batching": {counters}}  (503 if no actor answers)

A bad body gets 400 and a message naming the problem (not JSON, no
"instances", wrong number of features, a non-numeric value, too many rows);
any other path or method gets a JSON 404/405. An actor that dies (its worker
or node lost) is restarted by Ray (max_restarts); a batch that was on it is
resent to the next actor at once (counted as resent_batches in /healthz), and
only if every attempt fails do the requests in that batch get 503.

Examples:
  python workloads/serve.py --port 8000 --actors 2
  curl -s localhost:8000/predict -H 'content-type: application/json' \\
       -d '{"instances": [[0,0,0,0,0,0,0,0], [9,9,9,9,9,9,9,9]]}'
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import sys
import threading
import time

try:
    from workloads import anomaly_model, common
except ImportError:  # run as a file from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from workloads import anomaly_model, common

import numpy as np

# The model and the request contract live in anomaly_model (shared with
# serve_app.py); these names stay importable from here for existing callers.
from workloads.anomaly_model import (  # noqa: F401 - re-exported
    DEFAULT_FEATURES,
    DEFAULT_SEED,
    MAX_BODY_BYTES,
    MAX_INSTANCES,
    BadRequest,
    fit_model,
    parse_instances,
    predict_with,
    training_data,
)

DEFAULT_MAX_BATCH_ROWS = 1024
# 10 ms = Ray Serve's default batch wait; measured best of 2/5/10/20 ms (workloads/README.md)
DEFAULT_MAX_WAIT_MS = 10.0
DEFAULT_MAX_QUEUED_ROWS = 65_536
RETRY_AFTER_SECONDS = 1
# Batches in flight per actor. 1 measured faster than 2 on 2 cores (880 vs 810 req/s at
# 64 rows): fewer, larger batches cost less CPU than keeping the next one queued at the actor.
PIPELINE_DEPTH = 1
HTTP_SERVERS = ("waitress", "flask")  # waitress measured 2.3x Flask's dev server (README)
DEFAULT_HTTP_SERVER = "waitress"


# --------------------------------------------------------------- actor -------


class AnomalyModel:
    """Ray actor: fits the model once in __init__, then serves predict calls."""

    def __init__(self, seed: int, n_features: int):
        self.model = fit_model(seed, n_features)
        self.n_features = n_features

    def predict(self, instances) -> list[dict]:
        return predict_with(self.model, instances)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """One batch: an array in, an array out (cheaper to ship than lists of dicts)."""
        return anomaly_model.scores(self.model, x)

    def info(self) -> dict:
        import ray

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}


# ---------------------------------------------------------------- pool -------


class PoolUnavailable(Exception):
    """No actor answered in time; the request gets 503."""


class Overloaded(Exception):
    """Too many rows queued; the request gets 503 with Retry-After."""


class ModelPool:
    """N actors holding the same model.

    ``scores_on(i, x)`` is one call on actor i (what the batcher uses);
    ``predict(rows)`` splits one request across all actors (batching off).
    """

    def __init__(self, n_actors: int, seed: int = DEFAULT_SEED, n_features: int = DEFAULT_FEATURES,
                 call_timeout: float = 60.0, attempts: int = 3):
        import ray

        self.n_features = n_features
        self.seed = seed
        self.call_timeout = call_timeout
        self.attempts = attempts
        actor_cls = ray.remote(AnomalyModel).options(
            num_cpus=1,
            max_restarts=-1,  # a lost actor always comes back (with the same model)
            # Calls that were on it fail at once and the pool resends them to
            # another actor, instead of Ray re-running them only after the restart.
            max_task_retries=0,
        )
        self.actors = [actor_cls.remote(seed, n_features) for _ in range(n_actors)]
        self._rr = itertools.count()
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self.actors)

    def wait_ready(self, timeout: float = 600.0) -> list[dict]:
        """Block until every actor has fitted its model (autoscaling may add nodes first)."""
        import ray

        return ray.get([a.info.remote() for a in self.actors], timeout=timeout)

    def scores_on(self, i: int, x: np.ndarray) -> np.ndarray:
        """Scores of x from actor i; raises ActorUnavailable if it cannot answer."""
        import ray

        try:
            return ray.get(self.actors[i].scores.remote(x), timeout=self.call_timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
            # ActorDiedError / ActorUnavailableError / timeout: the caller resends elsewhere
            raise ActorUnavailable(type(e).__name__) from e

    def predict(self, instances) -> list[dict]:
        """One request split across the actors, in order (the unbatched path)."""
        x = np.asarray(instances, dtype=np.float64)
        with self._lock:
            offset = next(self._rr)
        n = len(self.actors)
        parts = np.array_split(x, min(n, len(x)))
        results: list = [None] * len(parts)
        todo = list(range(len(parts)))
        errors = []
        import ray

        for attempt in range(self.attempts):
            refs = {self.actors[(offset + i + attempt) % n].scores.remote(parts[i]): i for i in todo}
            todo = []
            for ref, i in refs.items():
                try:
                    results[i] = ray.get(ref, timeout=self.call_timeout)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                    errors.append(type(e).__name__)
                    todo.append(i)
            if not todo:
                return anomaly_model.predictions(np.concatenate(results))
        raise PoolUnavailable(
            f"{len(todo)} of {len(parts)} chunks failed after {self.attempts} attempts "
            f"({', '.join(errors[-3:])})"
        )

    def health(self, timeout: float = 5.0) -> list[dict]:
        import ray

        refs = [a.info.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        ready = set(ready)
        out = []
        for i, ref in enumerate(refs):
            entry = {"index": i, "alive": False}
            if ref in ready:
                try:
                    entry.update(ray.get(ref), alive=True)
                except ray.exceptions.RayError as e:
                    entry["error"] = type(e).__name__
            out.append(entry)
        return out


class ActorUnavailable(Exception):
    """One call on one actor failed (died, restarting, timed out); try another."""


# ------------------------------------------------------------- batching ------


class _Request:
    """One caller's rows, filled in by the batches its segments land in."""

    __slots__ = ("_lock", "arrived", "done", "error", "left", "resent", "scores", "taken", "x")

    def __init__(self, x: np.ndarray):
        self.x = x
        self.arrived = time.monotonic()
        self.taken = 0  # rows already put into a batch (guarded by the batcher's lock)
        self.scores = np.empty(len(x), dtype=np.float64)
        self.left = len(x)
        self.done = threading.Event()
        self.error: str | None = None
        self.resent = False
        self._lock = threading.Lock()

    def fill(self, start: int, stop: int, scores: np.ndarray, resent: bool) -> None:
        with self._lock:
            self.scores[start:stop] = scores
            self.left -= stop - start
            self.resent |= resent
            if self.left == 0:
                self.done.set()

    def fail(self, message: str) -> None:
        with self._lock:
            self.error = self.error or message
            self.done.set()


class Batcher:
    """Merges concurrent requests into batches of at most max_batch_rows rows.

    ``backend`` needs ``size`` (number of workers) and ``scores_on(i, x)``
    (one call on worker i; raises ActorUnavailable to make the batch go to
    the next worker). PIPELINE_DEPTH threads per worker take a batch
    whenever they are free: a batch closes when it holds max_batch_rows rows
    or max_wait_ms after its oldest request arrived, whichever is first, so
    under load batches grow by themselves and an idle server adds at most
    max_wait_ms.

    Each batch is answered once: by the first attempt that succeeds. A batch
    whose every attempt fails fails only the requests with rows in it.
    """

    def __init__(self, backend, n_features: int, max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
                 max_queued_rows: int = DEFAULT_MAX_QUEUED_ROWS, attempts: int = 3,
                 pipeline_depth: int = PIPELINE_DEPTH, request_timeout: float = 300.0):
        if max_batch_rows < 1 or max_wait_ms < 0 or max_queued_rows < 1:
            raise ValueError("max_batch_rows and max_queued_rows must be >= 1, max_wait_ms >= 0")
        self.backend = backend
        self.n_features = n_features
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000.0
        self.max_queued_rows = max_queued_rows
        self.attempts = attempts
        self.request_timeout = request_timeout
        self._cond = threading.Condition()
        self._queue: collections.deque[_Request] = collections.deque()
        self._unassigned = 0  # rows queued but not yet in a batch
        self._admitted = 0  # rows admitted and not yet answered (the overload ceiling)
        self.counters = collections.Counter()
        self._threads = [
            threading.Thread(target=self._work, args=(i % backend.size,), daemon=True,
                             name=f"batcher-{i}")
            for i in range(backend.size * pipeline_depth)
        ]
        for t in self._threads:
            t.start()

    # the pool interface create_app uses
    def predict(self, x) -> list[dict]:
        return anomaly_model.predictions(self.scores(x))

    def health(self) -> list[dict]:
        return self.backend.health()

    def stats(self) -> dict:
        with self._cond:
            return {"max_batch_rows": self.max_batch_rows, "max_wait_ms": self.max_wait * 1000,
                    "max_queued_rows": self.max_queued_rows, "queued_rows": self._admitted,
                    **{k: self.counters[k] for k in (
                        "requests", "batches", "rows", "resent_batches", "resent_requests",
                        "failed_batches", "rejected_requests")}}

    def scores(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        req = _Request(x)
        with self._cond:
            # One request alone is always admitted (max_instances bounds it).
            if self._admitted and self._admitted + len(x) > self.max_queued_rows:
                self.counters["rejected_requests"] += 1
                raise Overloaded(f"{self._admitted} rows queued; limit {self.max_queued_rows}")
            self._admitted += len(x)
            self._unassigned += len(x)
            self.counters["requests"] += 1
            self._queue.append(req)
            self._cond.notify()
        if not req.done.wait(self.request_timeout):
            raise PoolUnavailable(f"no answer within {self.request_timeout:.0f} s")
        if req.error:
            raise PoolUnavailable(req.error)
        if req.resent:
            with self._cond:
                self.counters["resent_requests"] += 1
        return req.scores

    def _take(self) -> list[tuple[_Request, int, int]]:
        """Block for the next batch: segments (request, start, stop) of at most max_batch_rows rows."""
        with self._cond:
            while True:
                while not self._queue:
                    self._cond.wait()
                deadline = self._queue[0].arrived + self.max_wait
                while self._queue and self._unassigned < self.max_batch_rows:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._queue:  # else another worker took it all meanwhile
                    break
            segments, rows = [], 0
            while self._queue and rows < self.max_batch_rows:
                req = self._queue[0]
                n = min(len(req.x) - req.taken, self.max_batch_rows - rows)
                segments.append((req, req.taken, req.taken + n))
                req.taken += n
                rows += n
                if req.taken == len(req.x):
                    self._queue.popleft()
            self._unassigned -= rows
            if self._queue:
                self._cond.notify()  # the rest (e.g. of a split request) goes to the next worker
            return segments

    def _work(self, first: int) -> None:
        while True:
            segments = self._take()
            rows = sum(b - a for _, a, b in segments)
            x = (segments[0][0].x[segments[0][1]:segments[0][2]] if len(segments) == 1
                 else np.concatenate([r.x[a:b] for r, a, b in segments]))
            result, errors = None, []
            for attempt in range(self.attempts):
                try:
                    result = self.backend.scores_on((first + attempt) % self.backend.size, x)
                    break
                except ActorUnavailable as e:
                    errors.append(str(e))
            with self._cond:
                self.counters["batches"] += 1
                self.counters["rows"] += rows
                self.counters["resent_batches"] += bool(errors) and result is not None
                self.counters["failed_batches"] += result is None
            off = 0
            for req, a, b in segments:
                if result is None:
                    req.fail(f"batch failed after {self.attempts} attempts ({', '.join(errors)})")
                else:
                    req.fill(a, b, result[off:off + b - a], resent=bool(errors))
                off += b - a
            with self._cond:
                self._admitted -= rows


# ----------------------------------------------------------------- app -------


def create_app(pool, max_instances: int = MAX_INSTANCES):
    """The Flask app around a pool.

    ``pool`` is anything with predict(rows) -> predictions, health() and
    n_features: a Batcher, a ModelPool (batching off) or an in-process model.
    """
    from flask import Flask, Response, request

    app = Flask("ray-gcp-serve")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    def json_response(body: bytes, status: int = 200, headers=None) -> Response:
        return Response(body, status=status, headers=headers, mimetype="application/json")

    def error(message: str, status: int, headers=None) -> Response:
        return json_response(anomaly_model.error_body(message), status, headers)

    @app.post("/predict")
    def predict():
        try:
            x = parse_instances(request.get_data(cache=False), pool.n_features, max_instances)
        except BadRequest as e:
            return error(str(e), 400)
        try:
            if hasattr(pool, "scores"):
                return json_response(anomaly_model.response_body(pool.scores(x)))
            return json_response(anomaly_model.json_dumps({"predictions": pool.predict(x)}))
        except Overloaded as e:
            return error(f"overloaded: {e}; retry later", 503,
                         {"Retry-After": str(RETRY_AFTER_SECONDS)})
        except PoolUnavailable as e:
            return error(f"model pool unavailable: {e}", 503)

    @app.get("/healthz")
    def healthz():
        actors = pool.health()
        alive = sum(a["alive"] for a in actors)
        status = "ok" if alive == len(actors) else "degraded" if alive else "down"
        doc = {"status": status, "actors": actors}
        if hasattr(pool, "stats"):
            doc["batching"] = pool.stats()
        return json_response(anomaly_model.json_dumps(doc), 200 if alive else 503)

    @app.errorhandler(404)
    @app.errorhandler(405)
    def no_route(_e):
        status, message = anomaly_model.route_error(request.method, request.path)
        return error(message, status)

    @app.errorhandler(413)
    def too_large(_e):
        return error(f"body larger than {MAX_BODY_BYTES} bytes; split the batch", 413)

    return app


# ----------------------------------------------------------------- CLI -------


def _positive(v):
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _non_negative(v):
    n = int(v)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def _wait_ms(v):
    ms = float(v)
    if not 0 <= ms <= 1000:
        raise argparse.ArgumentTypeError(f"must be 0..1000 ms, got {v}")
    return ms


def build_parser():
    p = argparse.ArgumentParser(
        prog="serve.py", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; the head is not public anyway)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--actors", type=_positive, default=2, help="model actors in the pool (default 2)")
    p.add_argument("--features", type=_positive, default=DEFAULT_FEATURES,
                   help=f"features per instance (default {DEFAULT_FEATURES})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="training-data seed (default 0)")
    p.add_argument("--max-batch-rows", type=_non_negative, default=DEFAULT_MAX_BATCH_ROWS,
                   help=f"rows per actor call when batching (default {DEFAULT_MAX_BATCH_ROWS}); "
                        "0 turns batching off")
    p.add_argument("--max-wait-ms", type=_wait_ms, default=DEFAULT_MAX_WAIT_MS,
                   help="longest a request waits for others to join its batch "
                        f"(default {DEFAULT_MAX_WAIT_MS:g} ms)")
    p.add_argument("--max-queued-rows", type=_positive, default=DEFAULT_MAX_QUEUED_ROWS,
                   help="rows admitted and not yet answered before new requests get 503 + "
                        f"Retry-After (default {DEFAULT_MAX_QUEUED_ROWS})")
    p.add_argument("--http-server", choices=HTTP_SERVERS, default=DEFAULT_HTTP_SERVER,
                   help=f"WSGI server in front of the app (default {DEFAULT_HTTP_SERVER}; "
                        "see workloads/README.md for the measurement behind it)")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"serve.py: error: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    common.connect(args.address)
    pool = ModelPool(args.actors, args.seed, args.features)
    t0 = time.monotonic()
    print(f"serve: starting {args.actors} model actors ...", file=sys.stderr, flush=True)
    infos = pool.wait_ready()
    nodes = len({i["node_id"] for i in infos})
    print(f"serve: {args.actors} actors ready on {nodes} node(s) in {time.monotonic() - t0:.1f} s; "
          f"{common.cluster_shape().describe()}", file=sys.stderr, flush=True)
    if args.max_batch_rows:
        front = Batcher(pool, args.features, args.max_batch_rows, args.max_wait_ms,
                        args.max_queued_rows)
        print(f"serve: batching up to {args.max_batch_rows} rows, waiting at most "
              f"{args.max_wait_ms:g} ms; 503 past {args.max_queued_rows} queued rows",
              file=sys.stderr, flush=True)
    else:
        front = pool
        print("serve: batching off", file=sys.stderr, flush=True)
    print(f"serve: listening on http://{args.host}:{args.port}", flush=True)
    run_http(create_app(front), args.host, args.port, args.http_server)
    return 0


def run_http(app, host: str, port: int, server: str = DEFAULT_HTTP_SERVER) -> None:
    if server == "waitress":
        import waitress

        # Enough threads for every caller to wait on its batch at once.
        waitress.serve(app, host=host, port=port, threads=64, backlog=1024,
                       connection_limit=1024, channel_timeout=120, ident="ray-gcp-serve")
    else:
        app.run(host=host, port=port, threaded=True)


if __name__ == "__main__":
    # Run under the package name, so Ray pickles AnomalyModel by reference.
    from workloads import serve as _serve  # noqa: PLW0406 - see above

    sys.exit(_serve.main())
