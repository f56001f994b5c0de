"""A small Cloud Storage JSON API client on the standard library only.

The log shipper (``cluster/logship.py``) runs on every Ray node: VMs, fake
local nodes and, on GKE, a sidecar in the official Ray image, which we do not
control. So the shipper and this client import nothing outside the standard
library: the same two files work everywhere, start in milliseconds, and do
exactly the requests listed here, no background bucket-metadata fetches.

Requests (all on one bucket):

* ``upload``: ``objects.insert`` (``uploadType=media``, ``ifGenerationMatch=0``:
  never overwrites, so the versioned bucket keeps no old copies);
* ``compose``: ``objects.compose`` of up to 32 objects into a new one;
* ``delete``: ``objects.delete`` of one exact generation (a permanent delete,
  also in a versioned bucket);
* ``list``: ``objects.list`` with a prefix (and a delimiter), every page;
* ``download``: ``objects.get`` with ``alt=media``.

Credentials (``token_source``): the metadata server of a GCE VM or a GKE pod
(``metadata_token``: the node's service account, or the pod's Workload
Identity), Application Default Credentials where google-auth is installed
(``adc_token``: a laptop after ``gcloud auth application-default login``), or
none against the emulator (``STORAGE_EMULATOR_HOST``, as Google's clients).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

GOOGLE_ENDPOINT = "https://storage.googleapis.com"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# Google's clients honour this for the metadata server's address (GKE, tests).
METADATA_HOST_ENV = "GCE_METADATA_HOST"
METADATA_HOST = "metadata.google.internal"
COMPOSE_MAX_SOURCES = 32  # objects.compose's limit per request
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class GcsError(Exception):
    """A request that failed for good (after retries), with its status and body."""

    def __init__(self, status: int, method: str, url: str, body: str):
        super().__init__(f"{method} {url}: HTTP {status}: {body[:500]}")
        self.status = status


class PreconditionFailed(GcsError):
    """412: ``ifGenerationMatch=0`` and the object exists (an upload that already happened)."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    generation: str
    updated: str = ""


@dataclass(frozen=True)
class Listing:
    objects: list[ObjectInfo]
    prefixes: list[str]


TokenSource = Callable[[], "str | None"]


def no_token() -> str | None:
    """The emulator takes no credentials."""
    return None


def metadata_token(timeout: float = 5.0) -> TokenSource:
    """Access tokens of the VM's (or GKE pod's Workload Identity) service account,
    from the metadata server, cached until a minute before they expire."""
    lock = threading.Lock()
    cached: dict[str, float | str] = {}

    def token() -> str:
        with lock:
            if cached and time.monotonic() < float(cached["until"]):
                return str(cached["token"])
            host = os.environ.get(METADATA_HOST_ENV, METADATA_HOST)
            req = urllib.request.Request(
                f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token",
                headers={"Metadata-Flavor": "Google"},
            )
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                data = json.loads(resp.read())
            cached["token"] = data["access_token"]
            cached["until"] = time.monotonic() + max(0, int(data.get("expires_in", 0)) - 60)
            return str(cached["token"])

    return token


def adc_token() -> TokenSource:
    """Application Default Credentials through google-auth (a laptop, a workstation),
    read-only: the reader (cluster.logs) is its only user."""
    import google.auth
    import google.auth.transport.requests

    credentials, _ = google.auth.default(
        scopes=["https://www.googleapis.com/auth/devstorage.read_only"]
    )
    lock = threading.Lock()

    def token() -> str:
        with lock:
            if not credentials.valid:
                credentials.refresh(google.auth.transport.requests.Request())
            return credentials.token

    return token


def default_endpoint() -> str:
    """``$STORAGE_EMULATOR_HOST`` (with a scheme added if missing), else Google's."""
    host = os.environ.get(EMULATOR_ENV, "").strip()
    if not host:
        return GOOGLE_ENDPOINT
    return host if "://" in host else f"http://{host}"


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


class GcsHttp:
    """One bucket, the five requests above, retried with backoff on transient errors.

    ``attempts``: tries per request on 408/429/5xx and connection errors
    (exponential backoff from ``backoff_s``, with jitter); other errors raise at once.
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint: str | None = None,
        token_source: TokenSource | None = None,
        timeout: float = 30.0,
        attempts: int = 4,
        backoff_s: float = 0.5,
    ):
        self.bucket = bucket
        self.endpoint = (endpoint or default_endpoint()).rstrip("/")
        emulated = self.endpoint != GOOGLE_ENDPOINT
        self.token_source = token_source or (no_token if emulated else metadata_token())
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s

    # ---- requests --------------------------------------------------------

    def upload(
        self, name: str, data: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> ObjectInfo:
        """Create ``name``; PreconditionFailed if it exists already (never overwrites)."""
        url = (
            f"{self.endpoint}/upload/storage/v1/b/{self.bucket}/o?"
            + urllib.parse.urlencode({"uploadType": "media", "name": name, "ifGenerationMatch": 0})
        )
        return self._info(self._send("POST", url, data, {"Content-Type": content_type}))

    def compose(self, sources: list[ObjectInfo], name: str) -> ObjectInfo:
        if not 1 <= len(sources) <= COMPOSE_MAX_SOURCES:
            raise ValueError(f"compose takes 1 to {COMPOSE_MAX_SOURCES} sources, not {len(sources)}")
        url = (
            f"{self.endpoint}/storage/v1/b/{self.bucket}/o/{_quote(name)}/compose?"
            + urllib.parse.urlencode({"ifGenerationMatch": 0})
        )
        body = {
            "sourceObjects": [{"name": s.name, "generation": s.generation} for s in sources],
            "destination": {"contentType": "text/plain; charset=utf-8"},
        }
        return self._info(
            self._send("POST", url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        )

    def delete(self, obj: ObjectInfo) -> bool:
        """Delete exactly this generation; False if it is already gone."""
        url = f"{self.endpoint}/storage/v1/b/{self.bucket}/o/{_quote(obj.name)}?" + (
            urllib.parse.urlencode({"generation": obj.generation})
        )
        try:
            self._send("DELETE", url)
        except GcsError as e:
            if e.status == 404:
                return False
            raise
        return True

    def list(self, prefix: str, delimiter: str | None = None) -> Listing:
        """Every object (and, with a delimiter, every sub-prefix) under ``prefix``."""
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        token = None
        while True:
            params = {"prefix": prefix, "fields": "items(name,size,generation,updated),prefixes,nextPageToken"}
            if delimiter:
                params["delimiter"] = delimiter
            if token:
                params["pageToken"] = token
            url = f"{self.endpoint}/storage/v1/b/{self.bucket}/o?" + urllib.parse.urlencode(params)
            page = json.loads(self._send("GET", url) or b"{}")
            objects += [self._info(item) for item in page.get("items") or []]
            prefixes += page.get("prefixes") or []
            token = page.get("nextPageToken")
            if not token:
                return Listing(objects, sorted(set(prefixes)))

    def iter_prefixes(self, prefix: str) -> Iterator[str]:
        yield from self.list(prefix, delimiter="/").prefixes

    def download(self, name: str) -> bytes:
        url = f"{self.endpoint}/storage/v1/b/{self.bucket}/o/{_quote(name)}?alt=media"
        return self._send("GET", url)

    # ---- transport -------------------------------------------------------

    @staticmethod
    def _info(item: dict | bytes) -> ObjectInfo:
        if isinstance(item, bytes):
            item = json.loads(item)
        return ObjectInfo(
            name=item["name"],
            size=int(item.get("size", 0)),
            generation=str(item.get("generation", "")),
            updated=item.get("updated", ""),
        )

    def _send(
        self, method: str, url: str, data: bytes | None = None, headers: dict | None = None
    ) -> bytes:
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            hdrs = dict(headers or {})
            token = self.token_source()
            if token:
                hdrs["Authorization"] = f"Bearer {token}"
            req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return resp.read()
            except urllib.error.HTTPError as e:
                body = e.read().decode(errors="replace")
                if e.code == 412:
                    raise PreconditionFailed(e.code, method, url, body) from None
                if e.code not in RETRY_STATUSES or attempt == self.attempts:
                    raise GcsError(e.code, method, url, body) from None
            except (urllib.error.URLError, OSError) as e:
                if attempt == self.attempts:
                    raise GcsError(0, method, url, f"connection failed: {e}") from None
            time.sleep(delay * (0.5 + random.random()))
            delay *= 2
        raise AssertionError("unreachable")
