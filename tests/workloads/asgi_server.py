"""serve.py's HTTP front (serve_http.App on uvicorn) on 127.0.0.1 in a thread, and a small client.

The tests talk to the app over real HTTP, as wrk and curl do: the same
uvicorn, httptools parser and event loop as ``python workloads/serve.py``,
only with an in-process backend instead of Ray actors. The Batcher is
created on the server's loop (it is asyncio-only).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time

from workloads import serve_http


class Response:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status_code = status
        self.headers = headers
        self.data = body
        self.content_type = headers.get("content-type", "")

    def get_json(self):
        return json.loads(self.data)


class Client:
    """One keep-alive HTTP/1.1 connection (not thread-safe: one per thread)."""

    def __init__(self, port: int, timeout: float = 60.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def open(self, path: str, method: str = "GET", data: bytes | None = None, json_body=None,
             headers: dict | None = None) -> Response:
        body = json.dumps(json_body).encode() if json_body is not None else data
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        self.conn.request(method, path, body=body, headers=hdrs)
        resp = self.conn.getresponse()
        out = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        if resp.will_close:
            self.conn.close()
        return out

    def post(self, path: str, json=None, data: bytes | None = None, content_type=None) -> Response:
        return self.open(path, "POST", data=data, json_body=json)

    def get(self, path: str) -> Response:
        return self.open(path, "GET")

    def close(self) -> None:
        self.conn.close()


class AppServer:
    """Runs ``make_app()`` (called on the server's loop) on a free port until stop()."""

    def __init__(self, make_app):
        self.sock = serve_http.bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.app = None
        self.server = None
        self.loop = None
        ready = threading.Event()

        async def main():
            self.app = make_app()
            self.server = serve_http.make_server(self.app, on_ready=ready.set, graceful_seconds=5)
            await self.server.serve(sockets=[self.sock])

        def run():
            self.loop = serve_http.new_event_loop()
            try:
                self.loop.run_until_complete(main())
            finally:
                self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True, name=f"asgi-{self.port}")
        self.thread.start()
        if not ready.wait(30):
            raise RuntimeError("test HTTP server did not start within 30 s")

    def client(self) -> Client:
        return Client(self.port)

    def call_soon(self, fn) -> None:
        """Run ``fn()`` on the server's loop (the batcher's thread) and wait for it."""
        done = threading.Event()
        out = {}

        def wrapped():
            try:
                out["value"] = fn()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(wrapped)
        done.wait(30)
        return out.get("value")

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def run_coroutine(coro):
    """Run a coroutine to completion on a fresh loop (for backends used outside a server)."""
    return asyncio.run(coro)
