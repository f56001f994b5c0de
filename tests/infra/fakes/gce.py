"""Fake GCE metadata server and fake Secret Manager on 127.0.0.1 (random ports).

Both are ``http.server`` servers in a daemon thread that record every request.
They check what the real services check and the boot script must get right:
the metadata server answers only requests carrying ``Metadata-Flavor: Google``;
Secret Manager answers only the bearer token the metadata server handed out.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import google_crc32c

METADATA_PREFIX = "/computeMetadata/v1/instance"
TOKEN_PATH = f"{METADATA_PREFIX}/service-accounts/default/token"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


class _Server:
    """Common start/stop plumbing; subclasses implement ``answer(request)``."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                request = Request("GET", self.path, {k.lower(): v for k, v in self.headers.items()})
                with owner._lock:
                    owner.requests.append(request)
                    status, body, ctype = owner.answer(request)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{host}:{port}"

    def answer(self, request: Request) -> tuple[int, bytes, str]:
        raise NotImplementedError

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _json(status: int, doc: object) -> tuple[int, bytes, str]:
    return status, json.dumps(doc).encode(), "application/json"


def _text(status: int, text: str) -> tuple[int, bytes, str]:
    return status, text.encode(), "application/text"


class FakeMetadataServer(_Server):
    """Instance attributes and the default service account's token endpoint.

    ``token_status`` != 200 makes the token endpoint fail (e.g. 404: no service
    account attached). Set ``attributes`` entries to change what the VM sees.
    """

    def __init__(self, attributes: dict[str, str], token: str = "ya29.fake-token") -> None:
        super().__init__()
        self.attributes = dict(attributes)
        self.token = token
        self.token_status = 200
        self.bad_flavor_requests = 0

    def answer(self, request: Request) -> tuple[int, bytes, str]:
        # Like the real server: no Metadata-Flavor header, no answer (SSRF guard).
        if (
            request.headers.get("metadata-flavor") != "Google"
            or "x-forwarded-for" in request.headers
        ):
            self.bad_flavor_requests += 1
            return _text(403, "Missing Metadata-Flavor:Google header.")
        path = request.path.split("?", 1)[0]
        if path == TOKEN_PATH:
            if self.token_status != 200:
                return _text(self.token_status, "service account not found")
            return _json(
                200, {"access_token": self.token, "expires_in": 3599, "token_type": "Bearer"}
            )
        prefix = f"{METADATA_PREFIX}/attributes/"
        if path.startswith(prefix) and path[len(prefix) :] in self.attributes:
            return _text(200, self.attributes[path[len(prefix) :]])
        return _text(404, "Not Found")


class FakeSecretManager(_Server):
    """``GET /v1/<version name>:access`` like secretmanager.googleapis.com.

    ``versions`` maps version resource names to payload bytes; ``failures`` maps
    a version name to an HTTP status to answer instead (403, 404...);
    ``transient`` maps a version name to how many 503s to answer before success;
    ``corrupt_crc`` names versions whose dataCrc32c is wrong.
    """

    _STATUS: ClassVar[dict[int, str]] = {
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        503: "UNAVAILABLE",
    }

    def __init__(self, versions: dict[str, bytes], token: str = "ya29.fake-token") -> None:
        super().__init__()
        self.versions = dict(versions)
        self.token = token
        self.failures: dict[str, int] = {}
        self.transient: dict[str, int] = {}
        self.corrupt_crc: set[str] = set()

    def _error(self, code: int, message: str) -> tuple[int, bytes, str]:
        status = self._STATUS.get(code, "UNKNOWN")
        return _json(code, {"error": {"code": code, "message": message, "status": status}})

    def answer(self, request: Request) -> tuple[int, bytes, str]:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return self._error(401, "Request had invalid authentication credentials.")
        path = request.path.split("?", 1)[0]
        if not (path.startswith("/v1/") and path.endswith(":access")):
            return self._error(404, f"unknown method {path}")
        name = path[len("/v1/") : -len(":access")]
        if self.transient.get(name, 0) > 0:
            self.transient[name] -= 1
            return self._error(503, "The service is currently unavailable.")
        if name in self.failures:
            code = self.failures[name]
            return self._error(code, f"Permission or existence problem on {name}.")
        if name not in self.versions:
            return self._error(404, f"Secret Version [{name}] not found.")
        data = self.versions[name]
        crc = google_crc32c.value(data) ^ (1 if name in self.corrupt_crc else 0)
        payload = {"data": base64.b64encode(data).decode(), "dataCrc32c": str(crc)}
        return _json(200, {"name": name, "payload": payload})

    def accessed(self) -> list[str]:
        """Version names of the access requests made so far, in order."""
        return [r.path[len("/v1/") : -len(":access")] for r in self.requests]
