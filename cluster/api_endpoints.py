"""``provider.api_endpoints``: where Ray's Google API clients send their requests.

By default googleapiclient addresses each API at its public host
(``https://compute.googleapis.com/compute/v1/``...). Two kinds of user need
another address:

* organisations that reach Google APIs only through **Private Service
  Connect** endpoints (``https://compute-myendpoint.p.googleapis.com/compute/v1/``);
* **offline testing**: a fake Compute Engine API on a loopback or test
  network address (``http://10.99.0.1:8080/compute/v1/``).

The value is what googleapiclient's ``client_options.api_endpoint`` takes:
the API's *whole* base URL, service path included, because
``googleapiclient.discovery.build_from_document`` uses it as the base in
place of ``rootUrl + servicePath``. Method paths are joined to it as
relative URLs (``urljoin``), so it must end with ``/``: without the slash
the last path segment (``v1``) would silently be dropped.

This module is the one rule, shared by the cluster facts (``GcpFacts``), the
stack setting ``ray-gcp:apiEndpoints`` and the provider's config check; it
imports neither Ray nor googleapiclient. ``cluster.gcp_clients`` builds the
clients with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The APIs Ray's GCP code builds clients for (ray/autoscaler/_private/gcp/config.py
# `_create_crm/_create_iam/_create_compute`), by discovery name.
API_KEYS = ("compute", "iam", "cloudresourcemanager")
# Each API's default base URL (discovery document: rootUrl + servicePath).
DEFAULT_ENDPOINTS = {
    "compute": "https://compute.googleapis.com/compute/v1/",
    "iam": "https://iam.googleapis.com/",
    "cloudresourcemanager": "https://cloudresourcemanager.googleapis.com/",
}
URL_FORM = (
    "an absolute http(s) URL ending in '/', the API's whole base URL with its service "
    "path, e.g. https://compute.googleapis.com/compute/v1/"
)
ALLOWED = (
    f"an object whose keys are {', '.join(API_KEYS)} (each optional) and whose values are "
    + URL_FORM
)


def url_problem(url: Any) -> str | None:
    """Why ``url`` cannot be an API base URL, or None if it can."""
    if not isinstance(url, str):
        return f"not a URL (a {type(url).__name__}); allowed: {URL_FORM}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"not an absolute http(s) URL; allowed: {URL_FORM}"
    if parts.query or parts.fragment or parts.username or parts.password:
        return (
            "a base URL has no query, fragment or user info (googleapiclient appends "
            f"method paths and parameters itself); allowed: {URL_FORM}"
        )
    if not parts.path.endswith("/"):
        return (
            "must end with '/': method paths are joined relative to it, so without the slash "
            f"its last segment is dropped (write {url}/); allowed: {URL_FORM}"
        )
    return None


def problems(value: Any, where: str = "provider.api_endpoints", sep: str = ".") -> list[str]:
    """Every problem of a raw ``api_endpoints`` mapping, one line each, naming the key
    as ``<where><sep><key>``."""
    if not isinstance(value, Mapping):
        return [f"{where} = {value!r}: not a mapping; allowed: {ALLOWED}"]
    out = []
    for key, url in value.items():
        if key not in API_KEYS:
            out.append(f"{where}{sep}{key}: unknown API; allowed keys: {', '.join(API_KEYS)}")
            continue
        problem = url_problem(url)
        if problem:
            out.append(f"{where}{sep}{key} = {url!r}: {problem}")
    return out


class ApiEndpoints(BaseModel):
    """Base URLs of the Google APIs the Ray launcher and autoscaler call; unset = Google's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute: str | None = Field(default=None, json_schema_extra={"allowed": URL_FORM})
    iam: str | None = Field(default=None, json_schema_extra={"allowed": URL_FORM})
    cloudresourcemanager: str | None = Field(
        default=None, json_schema_extra={"allowed": URL_FORM}
    )

    @field_validator(*API_KEYS)
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if v is not None:
            problem = url_problem(v)
            if problem:
                raise ValueError(problem)
        return v

    def as_config(self) -> dict[str, str]:
        """The ``provider.api_endpoints`` mapping: only the APIs that are set."""
        return self.model_dump(exclude_none=True)
