"""serve.py's HTTP layer: a plain ASGI app on uvicorn (httptools parser, uvloop event loop).

One event loop does all of the front's work: read the body, parse and
validate it (anomaly_model.parse_instances), hand the rows to the batcher,
await the batch's scores and write the response. No thread per request and
no WSGI framework in between: measured, this front spends a fraction of the
CPU per request that Flask on waitress did (workloads/README.md), and on 2
cores that CPU is taken from the model actors.

The answers are the contract both servers share (anomaly_model): 200 with
predictions, 400 naming what is wrong with a body, 413 for a body over
MAX_BODY_BYTES, JSON 404/405 for other paths and methods, 503 (with
Retry-After when overloaded) when the pool cannot answer.

The app also keeps time: per request, the seconds spent reading, parsing,
waiting for the batch, building and sending the response, and the process's
CPU seconds; /healthz reports them (the benchmark's "where the time goes").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import sys
import time
from collections.abc import Awaitable, Callable

from workloads import anomaly_model
from workloads.serve_batcher import Overloaded, PoolUnavailable

RETRY_AFTER_SECONDS = 1
JSON_HEADERS = [(b"content-type", b"application/json")]
STAGES = ("read", "parse", "wait", "respond", "send")


class App:
    """The ASGI application: POST /predict, GET /healthz, JSON errors for anything else.

    ``front`` has ``async scores(x)`` (a Batcher) and optionally ``stats()``;
    ``health`` is an async callable returning the actors' entries
    ({"index", "alive", ...}).
    """

    def __init__(self, front, health: Callable[[], Awaitable[list[dict]]], n_features: int,
                 max_instances: int = anomaly_model.MAX_INSTANCES,
                 max_body_bytes: int = anomaly_model.MAX_BODY_BYTES):
        self.front = front
        self.health = health
        self.n_features = n_features
        self.max_instances = max_instances
        self.max_body_bytes = max_body_bytes
        self.seconds = collections.Counter()
        self.counters = collections.Counter()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == "/predict":
            await self._predict(scope, receive, send)
        elif method in ("GET", "HEAD") and path == "/healthz":
            await self._healthz(send, head=method == "HEAD")
        else:
            status, message = anomaly_model.route_error(method, path) or (
                405, f"{method} {path} is not allowed")
            await _reply(send, anomaly_model.error_body(message), status)

    async def _predict(self, scope, receive, send) -> None:
        t0 = time.perf_counter()
        try:
            if hasattr(self.front, "check_room"):
                self.front.check_room()  # full already: refuse before reading and parsing
        except Overloaded as e:
            await _overloaded(send, e)
            return
        body = await self._read_body(scope, receive)
        if body is None:
            self.counters["too_large"] += 1
            await _reply(send, anomaly_model.error_body(
                f"body larger than {self.max_body_bytes} bytes; split the batch"), 413)
            return
        t1 = time.perf_counter()
        try:
            x = anomaly_model.parse_instances(body, self.n_features, self.max_instances)
        except anomaly_model.BadRequest as e:
            self.counters["bad_requests"] += 1
            await _reply(send, anomaly_model.error_body(str(e)), 400)
            return
        t2 = time.perf_counter()
        try:
            row_scores = await self.front.scores(x)
        except Overloaded as e:
            await _overloaded(send, e)
            return
        except PoolUnavailable as e:
            await _reply(send, anomaly_model.error_body(f"model pool unavailable: {e}"), 503)
            return
        t3 = time.perf_counter()
        out = anomaly_model.response_body(row_scores)
        t4 = time.perf_counter()
        await _reply(send, out)
        t5 = time.perf_counter()
        s = self.seconds
        s["read"] += t1 - t0
        s["parse"] += t2 - t1
        s["wait"] += t3 - t2
        s["respond"] += t4 - t3
        s["send"] += t5 - t4
        self.counters["answered"] += 1
        self.counters["rows"] += len(x)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole body, or None once it is known to exceed max_body_bytes."""
        for name, value in scope["headers"]:
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    if int(value) > self.max_body_bytes:
                        return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _healthz(self, send, head: bool = False) -> None:
        actors = await self.health()
        alive = sum(a["alive"] for a in actors)
        status = "ok" if alive == len(actors) else "degraded" if alive else "down"
        doc = {"status": status, "actors": actors}
        if hasattr(self.front, "stats"):
            doc["batching"] = self.front.stats()
        doc["http"] = self.stats()
        await _reply(send, b"" if head else anomaly_model.json_dumps(doc), 200 if alive else 503)

    def stats(self) -> dict:
        return {**{k: self.counters[k] for k in ("answered", "rows", "bad_requests", "too_large")},
                "seconds": {k: round(self.seconds[k], 6) for k in STAGES},
                "cpu_seconds": round(time.process_time(), 3)}


async def _overloaded(send, e: Overloaded) -> None:
    await _reply(send, anomaly_model.error_body(f"overloaded: {e}; retry later"), 503,
                 [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())])


async def _reply(send, body: bytes, status: int = 200, headers=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


# -------------------------------------------------------------- server -------


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: any free port), not listening yet.

    Bound early, so a taken port fails before anything starts; the server
    listens once it can answer (until then a client's connect is refused,
    not left hanging).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def make_server(app, *, on_ready: Callable[[], None] | None = None,
                graceful_seconds: float = 30.0):
    """A uvicorn Server for ``app`` that leaves signals to the caller.

    ``server.should_exit = True`` stops it gracefully: no new connections,
    requests in flight are answered (at most ``graceful_seconds``).
    ``on_ready`` runs once the socket accepts requests.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def capture_signals(self):  # serve.py owns SIGINT/SIGTERM (one line, no re-raise)
            return contextlib.nullcontext()

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and on_ready is not None and not self.should_exit:
                on_ready()

    config = uvicorn.Config(
        app, loop="none", http="httptools", lifespan="off", access_log=False,
        log_config=None, log_level="warning", timeout_keep_alive=120, backlog=1024,
        timeout_graceful_shutdown=graceful_seconds, server_header=False, date_header=False,
        proxy_headers=False,
    )
    return Server(config)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it imports (it does on Linux and macOS), else asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with ray[serve] on our platforms
        print("serve: uvloop not importable; using asyncio's event loop", file=sys.stderr)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
