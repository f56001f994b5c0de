"""HTTP anomaly-detection service: Flask on the head, Ray actors doing the work.

Each actor in the pool fits the model once when it starts: a scikit-learn
IsolationForest trained on data generated from --seed, so every actor holds
the same model and answers are deterministic. Flask (threaded, so requests
are served concurrently) validates the request, splits the batch across the
actors and returns the predictions in request order.

Endpoints:
  POST /predict  {"instances": [[x1, ..., xN], ...]}  (N = --features)
                 -> {"predictions": [{"score": s, "anomaly": bool}, ...]}
                 score = IsolationForest.decision_function (negative = anomalous)
  GET  /healthz  -> {"status": "ok", "actors": [{"pid", "node_id"}, ...]}
                 (503 if no actor answers)

A bad body gets 400 and a message naming the problem (not JSON, no
"instances", wrong number of features, a non-numeric value, too many rows).
An actor that dies (its worker or node lost) is restarted by Ray
(max_restarts) and calls on it are retried (max_task_retries); the pool also
resends a failed chunk to another actor.

Examples:
  python workloads/serve.py --port 8000 --actors 2
  curl -s localhost:8000/predict -H 'content-type: application/json' \\
       -d '{"instances": [[0,0,0,0,0,0,0,0], [9,9,9,9,9,9,9,9]]}'
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import threading
import time

try:
    from workloads import common
except ImportError:  # run as a file from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from workloads import common

import numpy as np

DEFAULT_FEATURES = 8
DEFAULT_SEED = 0
MAX_INSTANCES = 10_000
MAX_BODY_BYTES = 16 * 1024 * 1024


# --------------------------------------------------------------- model -------


def training_data(seed: int, n_features: int, n: int = 2048) -> np.ndarray:
    """Normal operating data: a correlated Gaussian cloud, plus 2% outliers."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(0, 0.5, size=(n_features, n_features)) + np.eye(n_features)
    normal = rng.normal(0, 1, size=(n - n // 50, n_features)) @ mixing
    outliers = rng.uniform(-8, 8, size=(n // 50, n_features))
    return np.vstack([normal, outliers])


def fit_model(seed: int = DEFAULT_SEED, n_features: int = DEFAULT_FEATURES):
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(n_estimators=100, contamination=0.02, random_state=seed, n_jobs=1)
    return model.fit(training_data(seed, n_features))


def predict_with(model, instances) -> list[dict]:
    x = np.asarray(instances, dtype=np.float64)
    scores = model.decision_function(x)
    return [{"score": float(s), "anomaly": bool(s < 0)} for s in scores]


class AnomalyModel:
    """Ray actor: fits the model once in __init__, then serves predict calls."""

    def __init__(self, seed: int, n_features: int):
        self.model = fit_model(seed, n_features)
        self.n_features = n_features

    def predict(self, instances) -> list[dict]:
        return predict_with(self.model, instances)

    def info(self) -> dict:
        import ray

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}


# ---------------------------------------------------------------- pool -------


class PoolUnavailable(Exception):
    """No actor answered in time; the request gets 503."""


class ModelPool:
    """N actors holding the same model; splits a batch across them, in order."""

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
            max_task_retries=3,  # calls in flight when it died are re-run after the restart
        )
        self.actors = [actor_cls.remote(seed, n_features) for _ in range(n_actors)]
        self._rr = itertools.count()
        self._lock = threading.Lock()

    def wait_ready(self, timeout: float = 600.0) -> list[dict]:
        """Block until every actor has fitted its model (autoscaling may add nodes first)."""
        import ray

        return ray.get([a.info.remote() for a in self.actors], timeout=timeout)

    def predict(self, instances: list) -> list[dict]:
        import ray

        with self._lock:
            offset = next(self._rr)
        n = len(self.actors)
        chunks = [c for c in np.array_split(np.arange(len(instances)), min(n, len(instances)))]
        parts = [[instances[i] for i in c] for c in chunks]
        results: list = [None] * len(parts)
        todo = list(range(len(parts)))
        errors = []
        for attempt in range(self.attempts):
            refs = {
                self.actors[(offset + i + attempt) % n].predict.remote(parts[i]): i for i in todo
            }
            todo = []
            for ref, i in refs.items():
                try:
                    results[i] = ray.get(ref, timeout=self.call_timeout)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                    # ActorDiedError / ActorUnavailableError: send it elsewhere
                    errors.append(f"{type(e).__name__}")
                    todo.append(i)
            if not todo:
                return [p for part in results for p in part]
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


# ----------------------------------------------------------------- app -------


class BadRequest(Exception):
    pass


def parse_instances(body: bytes, n_features: int, max_instances: int = MAX_INSTANCES) -> list:
    """The validated rows of a /predict body, or BadRequest saying what is wrong."""
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    except ValueError as e:
        raise BadRequest(str(e)) from None
    if not isinstance(doc, dict):
        raise BadRequest(f'body must be a JSON object {{"instances": [...]}}, got {type(doc).__name__}')
    if "instances" not in doc:
        raise BadRequest('missing "instances": send {"instances": [[...], ...]}')
    rows = doc["instances"]
    if not isinstance(rows, list) or not rows:
        raise BadRequest('"instances" must be a non-empty list of rows')
    if len(rows) > max_instances:
        raise BadRequest(f'too many instances: {len(rows)} > {max_instances} per request; split the batch')
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise BadRequest(f"instances[{i}] must be a list of {n_features} numbers, got {type(row).__name__}")
        if len(row) != n_features:
            raise BadRequest(f"instances[{i}] has {len(row)} values; the model expects {n_features}")
        for j, v in enumerate(row):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise BadRequest(f"instances[{i}][{j}] is not a number: {v!r}")
            if not math.isfinite(v):
                raise BadRequest(f"instances[{i}][{j}] is not finite: {v!r}")
    return rows


def _reject_constant(name):
    raise ValueError(f"body contains {name}, which is not a valid number here")


def create_app(pool, max_instances: int = MAX_INSTANCES):
    """The Flask app around a pool (anything with predict(rows), health(), n_features)."""
    from flask import Flask, jsonify, request

    app = Flask("ray-gcp-serve")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.post("/predict")
    def predict():
        try:
            rows = parse_instances(request.get_data(cache=False), pool.n_features, max_instances)
        except BadRequest as e:
            return jsonify(error=str(e)), 400
        try:
            predictions = pool.predict(rows)
        except PoolUnavailable as e:
            return jsonify(error=f"model pool unavailable: {e}"), 503
        return jsonify(predictions=predictions)

    @app.get("/healthz")
    def healthz():
        actors = pool.health()
        alive = sum(a["alive"] for a in actors)
        status = "ok" if alive == len(actors) else "degraded" if alive else "down"
        return jsonify(status=status, actors=actors), (200 if alive else 503)

    @app.errorhandler(413)
    def too_large(_e):
        return jsonify(error=f"body larger than {MAX_BODY_BYTES} bytes; split the batch"), 413

    return app


# ----------------------------------------------------------------- CLI -------


def _positive(v):
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


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
    print(f"serve: listening on http://{args.host}:{args.port}", flush=True)
    create_app(pool).run(host=args.host, port=args.port, threaded=True)
    return 0


if __name__ == "__main__":
    # Run under the package name, so Ray pickles AnomalyModel by reference.
    from workloads import serve as _serve  # noqa: PLW0406 - see above

    sys.exit(_serve.main())
