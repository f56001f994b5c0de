"""``FakeCloud`` over HTTP, at the URLs ``provider.api_endpoints`` names.

One server answers three APIs under three path prefixes; each prefix plus the
API's service path is what googleapiclient's ``client_options.api_endpoint``
takes (``endpoints()``):

- ``/compute/v1/``: Compute Engine v1 (its discovery ``servicePath``);
- ``/cloudresourcemanager/``: Resource Manager v1 (service path ``""``);
- ``/iam/``: IAM v1 (service path ``""``).

A request is matched to its REST method by the discovery documents shipped in
google-api-python-client (``tests.infra.iam.discovery.match_url``); a path no
method has is Google's 404. With a ``token``, every request must carry
``Authorization: Bearer <token>`` (what ``provider.gcp_credentials`` of type
``credentials_token`` makes Ray's clients send), else 401.

``serve(cloud, host, port, netns=None)`` starts the server on a thread; with
``netns`` (a name under /run/netns) the listening socket is opened inside that
network namespace, so machines there reach it while this process stays where
it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from tests.e2e.fake_gce import COMPUTE, CRM, IAM, ApiError, Call, FakeCloud
from tests.infra.iam.discovery import NoSuchMethod, match_url

PREFIXES = {"/cloudresourcemanager/": CRM, "/iam/": IAM, "/compute/v1/": COMPUTE}
_CLONE_NEWNET = 0x40000000


def endpoints(base: str) -> dict[str, str]:
    """``provider.api_endpoints`` for a server at ``base`` (``http://host:port``)."""
    return {
        "compute": f"{base}/compute/v1/",
        "cloudresourcemanager": f"{base}/cloudresourcemanager/",
        "iam": f"{base}/iam/",
    }


def _route(path: str) -> tuple[str, str]:
    """(api, the path as the discovery document spells it)."""
    for prefix, api in PREFIXES.items():
        if path.startswith(prefix):
            return api, path if api == COMPUTE else "/" + path[len(prefix):]
    raise ApiError(404, f"The requested URL {unquote(path)} was not found on this server.")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet; calls are recorded
        pass

    def _answer(self) -> None:
        cloud = self.server.cloud
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        call = Call(api="?", method="?", params={}, body=None)
        try:
            api, path = _route(self.path.split("?", 1)[0])
            call.api = api
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            try:
                method, params, args = match_url(api, self.command, path + ("?" + query if query else ""))
            except NoSuchMethod as e:
                raise ApiError(404, f"The requested URL was not found: {e}") from None
            call.method, call.params = method, {**args, **params}
            if raw:
                try:
                    call.body = json.loads(raw)
                except ValueError:
                    raise ApiError(400, "Invalid JSON payload received.") from None
            if cloud.token is not None and self.headers.get("Authorization") != f"Bearer {cloud.token}":
                raise ApiError(401, "Request is missing required authentication credential. "
                                    "Expected OAuth 2 access token, login cookie or other valid "
                                    "authentication credential.")
            status, payload = 200, cloud.handle(api, method, call.params, call.body)
        except ApiError as e:
            status, payload = e.code, e.body()
        except Exception as e:  # noqa: BLE001 - a bug in the fake: a 500 the tests assert against
            status, payload = 500, ApiError(500, f"fake API error: {type(e).__name__}: {e}").body()
        call.status = status
        with cloud.lock:
            cloud.calls.append(call)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    cloud: FakeCloud


@contextlib.contextmanager
def in_netns(name: str | None):
    """This thread's network namespace is ``name``'s for the duration (sockets opened
    meanwhile stay in it)."""
    if name is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    here = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(there, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into network namespace {name}")
        try:
            yield
        finally:
            if libc.setns(here, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original network namespace")
    finally:
        os.close(here)
        os.close(there)


class FakeApiServer:
    """A running server: ``base`` URL, ``endpoints``, ``stop()``."""

    def __init__(self, cloud: FakeCloud, host: str, port: int = 0, netns: str | None = None):
        self.cloud = cloud
        with in_netns(netns):
            self._httpd = _Server((host, port), _Handler)
        self._httpd.cloud = cloud
        self.base = f"http://{host}:{self._httpd.server_address[1]}"
        self.endpoints = endpoints(self.base)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                             daemon=True, name="fake-gce-http"),
            threading.Thread(target=self._clock, daemon=True, name="fake-gce-clock"),
        ]
        for t in self._threads:
            t.start()

    def _clock(self) -> None:
        while not self._stop.wait(0.25):
            self.cloud.tick()

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        for t in self._threads:
            t.join(10)


def serve(cloud: FakeCloud, host: str = "127.0.0.1", port: int = 0,
          netns: str | None = None) -> FakeApiServer:
    return FakeApiServer(cloud, host, port, netns)
