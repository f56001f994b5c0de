"""HTTP anomaly-detection service: an asyncio HTTP front on the head, Ray actors doing the work.

Each actor in the pool fits the model once when it starts: a scikit-learn
IsolationForest trained on data generated from --seed, so every actor holds
the same model and answers are deterministic (workloads/anomaly_model.py,
shared with the Ray Serve app serve_app.py).

The front is one event loop (uvicorn with httptools and uvloop,
serve_http.py): it parses and validates each body, and dynamic batching
(serve_batcher.py) merges concurrent requests into actor calls of at most
--max-batch-rows rows: a batch leaves when it holds an actor's share of the
rows in flight, when requests stop arriving for --batch-gap-ms, or
--max-wait-ms after its oldest request arrived, so under load the actors
take turns. Each caller gets exactly its own rows back, in order. A call costs
about 6 ms however few its rows, so merging is what lets the pool beat one
process doing everything. --max-batch-rows 0 turns merging off (every
request its own actor call).

Overload is bounded: at most --max-queued-rows rows are admitted and not yet
answered; past that a request gets 503 with Retry-After at once instead of
waiting in a queue that grows without bound.

Endpoints:
  POST /predict  {"instances": [[x1, ..., xN], ...]}  (N = --features)
                 -> {"predictions": [{"score": s, "anomaly": bool}, ...]}
                 score = IsolationForest.decision_function (negative = anomalous)
  GET  /healthz  -> {"status": "ok", "actors": [{"pid", "node_id", ...}, ...],
                     "batching": {counters}, "http": {counters}}  (503 if no actor answers)

A bad body gets 400 and a message naming the problem (not JSON, no
"instances", wrong number of features, a non-numeric value, too many rows);
a body over 16 MB gets 413; any other path or method gets a JSON 404/405. An
actor that dies (its worker or node lost) is restarted by Ray
(max_restarts); a batch that was on it is resent to the next actor at once
(counted as resent_batches in /healthz), and only if every attempt fails do
the requests in that batch get 503.

Once it answers, the server prints one line on stdout, "serve: ready at
http://HOST:PORT ...", for scripts to wait on (or poll GET /healthz).
SIGTERM (kill) or SIGINT (Ctrl-C) stops it cleanly: requests in flight are
answered, the actors are released, one line says so, exit status 0.

Examples:
  python workloads/serve.py --port 8000 --actors 2
  curl -s localhost:8000/predict -H 'content-type: application/json' \\
       -d '{"instances": [[0,0,0,0,0,0,0,0], [9,9,9,9,9,9,9,9]]}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
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
from workloads.serve_batcher import (  # noqa: F401 - re-exported
    DEFAULT_GAP_MS,
    DEFAULT_MAX_BATCH_ROWS,
    DEFAULT_MAX_QUEUED_ROWS,
    DEFAULT_MAX_WAIT_MS,
    ActorUnavailable,
    Batcher,
    Overloaded,
    PoolUnavailable,
)
from workloads.serve_http import App

# --------------------------------------------------------------- actor -------


class AnomalyModel:
    """Ray actor: fits the model once in __init__, then scores batches (and counts its time)."""

    def __init__(self, seed: int, n_features: int):
        self.model = fit_model(seed, n_features)
        self.n_features = n_features
        self.model_seconds = 0.0  # wall time inside the model
        self.model_cpu_seconds = 0.0  # CPU time of it (this thread; sklearn runs n_jobs=1)
        self.batches = 0
        self.rows = 0

    def predict(self, instances) -> list[dict]:
        return predict_with(self.model, instances)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """One batch: an array in, an array out (cheaper to ship than lists of dicts)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        out = anomaly_model.scores(self.model, x)
        self.model_seconds += time.perf_counter() - t0
        self.model_cpu_seconds += time.thread_time() - c0
        self.batches += 1
        self.rows += len(x)
        return out

    def info(self) -> dict:
        import ray

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                "batches": self.batches, "rows": self.rows,
                "model_seconds": round(self.model_seconds, 6),
                "model_cpu_seconds": round(self.model_cpu_seconds, 6),
                "cpu_seconds": round(time.process_time(), 3)}


# ---------------------------------------------------------------- pool -------


class ModelPool:
    """N actors holding the same model; ``await scores_on(i, x)`` is one call on actor i."""

    def __init__(self, n_actors: int, seed: int = DEFAULT_SEED, n_features: int = DEFAULT_FEATURES,
                 call_timeout: float = 60.0):
        import ray

        self.n_features = n_features
        self.seed = seed
        self.call_timeout = call_timeout
        actor_cls = ray.remote(AnomalyModel).options(
            num_cpus=1,
            max_restarts=-1,  # a lost actor always comes back (with the same model)
            # Calls that were on it fail at once and the batcher resends them to
            # another actor, instead of Ray re-running them only after the restart.
            max_task_retries=0,
        )
        self.actors = [actor_cls.remote(seed, n_features) for _ in range(n_actors)]

    @property
    def size(self) -> int:
        return len(self.actors)

    def wait_ready(self, timeout: float = 600.0, stop=lambda: False) -> list[dict]:
        """Block until every actor has fitted its model (autoscaling may add nodes first).

        Polls, so that ``stop()`` turning true (a signal) ends the wait with _Stopped.
        """
        import ray

        refs = [a.info.remote() for a in self.actors]
        deadline = time.monotonic() + timeout
        while True:
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=0.5)
            if not pending:
                return ray.get(refs)
            if stop():
                raise _Stopped
            if time.monotonic() > deadline:
                raise SystemExit(f"serve: error: {len(pending)} of {len(refs)} actors not ready "
                                 f"within {timeout:g} s; is the cluster short of CPUs? "
                                 "(python -m cluster local status, or ray status)")

    async def scores_on(self, i: int, x: np.ndarray) -> np.ndarray:
        """Scores of x from actor i; raises ActorUnavailable if it cannot answer in time."""
        import ray

        try:
            return await asyncio.wait_for(self.actors[i].scores.remote(x), self.call_timeout)
        except (ray.exceptions.RayActorError, TimeoutError) as e:
            # ActorDiedError / ActorUnavailableError / timeout: the batcher resends elsewhere
            raise ActorUnavailable(type(e).__name__) from e

    async def health(self, timeout: float = 5.0) -> list[dict]:
        import ray

        async def one(i: int, actor) -> dict:
            entry = {"index": i, "alive": False}
            try:
                entry.update(await asyncio.wait_for(actor.info.remote(), timeout), alive=True)
            except TimeoutError:
                entry["error"] = f"no answer within {timeout:g} s"
            except ray.exceptions.RayError as e:
                entry["error"] = type(e).__name__
            return entry

        return list(await asyncio.gather(*(one(i, a) for i, a in enumerate(self.actors))))

    def release(self) -> None:
        """Kill the actors now (they would also go when this driver disconnects)."""
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone: nothing to release
                ray.kill(actor, no_restart=True)


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
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--actors", type=_positive, default=2, help="model actors in the pool (default 2)")
    p.add_argument("--features", type=_positive, default=DEFAULT_FEATURES,
                   help=f"features per instance (default {DEFAULT_FEATURES})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="training-data seed (default 0)")
    p.add_argument("--max-batch-rows", type=_non_negative, default=DEFAULT_MAX_BATCH_ROWS,
                   help=f"rows per actor call when batching (default {DEFAULT_MAX_BATCH_ROWS}); "
                        "0 turns merging off (one request per actor call)")
    p.add_argument("--max-wait-ms", type=_wait_ms, default=DEFAULT_MAX_WAIT_MS,
                   help="longest a request waits for others to join its batch "
                        f"(default {DEFAULT_MAX_WAIT_MS:g} ms)")
    p.add_argument("--batch-gap-ms", type=_wait_ms, default=DEFAULT_GAP_MS,
                   help="a batch leaves once no request arrived for this long "
                        f"(default {DEFAULT_GAP_MS:g} ms; at most --max-wait-ms)")
    p.add_argument("--max-queued-rows", type=_positive, default=DEFAULT_MAX_QUEUED_ROWS,
                   help="rows admitted and not yet answered before new requests get 503 + "
                        f"Retry-After (default {DEFAULT_MAX_QUEUED_ROWS})")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)")
    return p


class _Stopped(BaseException):
    """SIGINT/SIGTERM while starting: raised between the start-up's short waits, to the clean exit.

    (A handler that raised it itself surfaced inside Ray's ray.get as a
    SystemError.)
    """


class _StopSignals:
    """SIGINT and SIGTERM stop the server; the first one names the reason.

    Installed after ``ray.init``, whose own handler would print a native stack
    dump on SIGTERM. While starting, a signal is only noted (the start-up
    checks it between short waits); once serving, it asks the HTTP server to
    finish (answer what is in flight, then return); a second signal makes it
    stop waiting for requests in flight.
    """

    def __init__(self):
        self.name: str | None = None
        self.server = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        again = self.name is not None
        self.name = self.name or signal.Signals(signum).name
        if self.server is not None:
            if again:
                self.server.force_exit = True
            self.server.should_exit = True


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"serve.py: error: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    from workloads import serve_http

    try:  # before anything starts: a taken port fails at once (bound, not listening yet)
        sock = serve_http.bind(args.host, args.port)
    except OSError as e:
        print(f"serve.py: error: cannot listen on {args.host}:{args.port}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    stop = _StopSignals()
    pool = app = None
    try:
        common.connect(args.address)
        stop.install()
        app, pool = _start(args, stop, sock)
    except (KeyboardInterrupt, _Stopped):
        stop.name = stop.name or "SIGINT"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the last line below is the last word
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sock.close()
        if pool is not None:
            pool.release()
        _disconnect()
    if stop.name:
        answered = app.counters["answered"] if app is not None else 0
        print(f"serve: stopped by {stop.name} after answering {answered} prediction request(s)",
              flush=True)
    return 0


def _start(args, stop: _StopSignals, sock):
    """Start the actors and the HTTP front; returns (app, pool) once the server has stopped."""
    from workloads import serve_http

    port = sock.getsockname()[1]
    pool = ModelPool(args.actors, args.seed, args.features)
    t0 = time.monotonic()
    print(f"serve: starting {args.actors} model actors ...", file=sys.stderr, flush=True)
    try:
        infos = pool.wait_ready(stop=lambda: stop.name is not None)
    except BaseException:
        pool.release()
        raise
    nodes = len({i["node_id"] for i in infos})
    print(f"serve: {args.actors} actors ready on {nodes} node(s) in {time.monotonic() - t0:.1f} s; "
          f"{common.cluster_shape().describe()}", file=sys.stderr, flush=True)
    if args.max_batch_rows:
        mode = (f"batching up to {args.max_batch_rows} rows (a batch leaves with an actor's "
                f"share of the rows in flight, after a {args.batch_gap_ms:g} ms lull or "
                f"{args.max_wait_ms:g} ms)")
    else:
        mode = "batching off (one request per actor call)"
    print(f"serve: {mode}; 503 past {args.max_queued_rows} queued rows", file=sys.stderr,
          flush=True)
    holder: dict = {}

    async def serve() -> None:
        front = Batcher(pool, args.features, args.max_batch_rows or MAX_INSTANCES,
                        args.max_wait_ms, args.max_queued_rows, gap_ms=args.batch_gap_ms,
                        merge=bool(args.max_batch_rows))
        app = holder["app"] = App(front, pool.health, args.features)
        server = serve_http.make_server(app, on_ready=lambda: print(
            f"serve: ready at http://{_url_host(args.host)}:{port} (POST /predict, GET /healthz)",
            flush=True))
        stop.server = server
        if stop.name:  # a signal came between the actors' start and now
            return
        await server.serve(sockets=[sock])

    loop = serve_http.new_event_loop()
    try:
        loop.run_until_complete(serve())
    finally:
        loop.close()
    return holder.get("app"), pool


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


if __name__ == "__main__":
    # Run under the package name, so Ray pickles AnomalyModel by reference.
    from workloads import serve as _serve  # noqa: PLW0406 - see above

    sys.exit(_serve.main())
