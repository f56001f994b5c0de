"""provider.api_endpoints: every Google API client of the launcher and autoscaler goes there.

The clients are built for real (googleapiclient's static discovery documents,
Ray's request builder, Ray's ``credentials_token`` credentials), and the
requests really go out over HTTP to a small API server on 127.0.0.1 that this
test starts: the bootstrap's three APIs, and Ray's own ``GCPCompute`` calls
from the node provider (which swap the transport per request).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ray.autoscaler._private.gcp.node import GCPNodeType
from ray.autoscaler._private.util import validate_config

from cluster import gcp_clients, gcp_provider
from cluster.api_endpoints import API_KEYS, DEFAULT_ENDPOINTS
from cluster.gcp_clients import ApiEndpointsError, construct_clients
from cluster.gcp_provider import BootstrapCheckError, ReadOnlyGCPNodeProvider, bootstrap_readonly
from cluster.render import example_gcp_facts, render_gcp
from cluster.spec import ClusterSpec

FACTS = example_gcp_facts()
TOKEN = "ya29.offline-test-token"
CREDENTIALS = {"type": "credentials_token", "credentials": TOKEN}
SUBNET = FACTS.subnetwork_name


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


@dataclass
class LoopbackApi:
    """A Google-API-shaped server on 127.0.0.1: records each request, answers a few GETs."""

    requests: list[Request] = field(default_factory=list)
    port: int = 0

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}/{prefix}"

    def answer(self, method: str, path: str) -> tuple[int, dict]:
        parts = path.split("?", 1)[0].strip("/").split("/")
        if method == "GET" and parts[:2] == ["crm", "v1"]:  # projects.get
            return 200, {"projectId": parts[-1], "lifecycleState": "ACTIVE"}
        if method == "GET" and parts[:2] == ["iam", "v1"]:  # serviceAccounts.get
            return 200, {"email": parts[-1], "name": "/".join(parts[2:])}
        if method == "GET" and "subnetworks" in parts:
            return 200, {"name": parts[-1]}
        if method == "GET" and parts[-1] == "instances":  # instances.list
            return 200, {"items": []}
        return 404, {"error": {"code": 404, "message": f"no such resource {path}"}}


@pytest.fixture
def api(monkeypatch) -> Iterator[LoopbackApi]:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # httplib2 honours them; loopback only
    # A client that ignored its endpoint would look up Google's host: fail instead,
    # before any lookup leaves this machine.
    lookup = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"a request went to {host}, not to the loopback API")
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    state = LoopbackApi()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests.append(Request("GET", self.path, self.headers.get("Authorization")))
            status, body = state.answer("GET", self.path)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
    assert not thread.is_alive()


def endpoints(api: LoopbackApi) -> dict[str, str]:
    return {
        "compute": api.url("compute/v1/"),
        "iam": api.url("iam/"),
        "cloudresourcemanager": api.url("crm/"),
    }


def provider_config(api: LoopbackApi) -> dict:
    cfg = render_gcp(ClusterSpec(), FACTS)["provider"]
    return {**cfg, "api_endpoints": endpoints(api), "gcp_credentials": CREDENTIALS}


# ---- the clients ---------------------------------------------------------------------


def test_each_client_is_built_at_its_endpoint_and_requests_go_there_with_the_token(api):
    crm, iam, compute, tpu = construct_clients(provider_config(api))
    assert tpu is None
    assert compute._baseUrl == api.url("compute/v1/")
    assert iam._baseUrl == api.url("iam/")
    assert crm._baseUrl == api.url("crm/")

    crm.projects().get(projectId=FACTS.project).execute()
    name = f"projects/{FACTS.project}/serviceAccounts/{FACTS.head_service_account}"
    iam.projects().serviceAccounts().get(name=name).execute()
    compute.instances().list(project=FACTS.project, zone=FACTS.zone).execute()
    assert [r.path.split("?")[0] for r in api.requests] == [
        f"/crm/v1/projects/{FACTS.project}",
        f"/iam/v1/{name}",
        f"/compute/v1/projects/{FACTS.project}/zones/{FACTS.zone}/instances",
    ]
    # Ray's gcp_credentials (credentials_token) authorises every request.
    assert {r.authorization for r in api.requests} == {f"Bearer {TOKEN}"}


def test_one_endpoint_moves_only_its_api(api):
    cfg = {**provider_config(api), "api_endpoints": {"compute": api.url("compute/v1/")}}
    crm, iam, compute, _ = construct_clients(cfg)
    assert compute._baseUrl == api.url("compute/v1/")
    assert iam._baseUrl == DEFAULT_ENDPOINTS["iam"]
    assert crm._baseUrl == DEFAULT_ENDPOINTS["cloudresourcemanager"]


def test_without_the_key_the_clients_are_rays_own(monkeypatch):
    """No api_endpoints: Ray's construct_clients_from_provider_config, Google's hosts."""
    from ray.autoscaler._private.gcp import config as ray_gcp_config

    calls = []
    rays = ray_gcp_config.construct_clients_from_provider_config
    monkeypatch.setattr(
        ray_gcp_config,
        "construct_clients_from_provider_config",
        lambda cfg: calls.append(cfg) or rays(cfg),
    )
    cfg = {**render_gcp(ClusterSpec(), FACTS)["provider"], "gcp_credentials": CREDENTIALS}
    crm, iam, compute, tpu = construct_clients(cfg)
    assert calls == [cfg]
    assert (compute._baseUrl, iam._baseUrl, crm._baseUrl, tpu) == (
        DEFAULT_ENDPOINTS["compute"],
        DEFAULT_ENDPOINTS["iam"],
        DEFAULT_ENDPOINTS["cloudresourcemanager"],
        None,
    )


def test_credentials_are_rays(api):
    """Ours and Ray's function read provider.gcp_credentials the same way."""
    from ray.autoscaler._private.gcp.config import construct_clients_from_provider_config

    cfg = provider_config(api)
    ours = construct_clients(cfg)[2]._http.credentials
    rays = construct_clients_from_provider_config(cfg)[2]._http.credentials
    assert type(ours) is type(rays) and ours.token == rays.token == TOKEN
    with pytest.raises(ValueError, match="gcp_credentials.type 'api_key'"):
        construct_clients({**cfg, "gcp_credentials": {"type": "api_key", "credentials": "x"}})


# ---- both places the provider builds clients -------------------------------------------


def test_the_bootstrap_reads_through_the_endpoints(api, launcher_key):
    """`ray up`/`ray down`'s bootstrap: its four GETs reach the loopback API, nothing else."""
    cfg = render_gcp(ClusterSpec(), FACTS)
    cfg["auth"]["ssh_private_key"] = str(launcher_key)
    cfg["provider"] = provider_config(api)
    out = bootstrap_readonly(cfg)
    assert out["provider"]["api_endpoints"] == endpoints(api)  # kept for the head's copy
    paths = [r.path.split("?")[0] for r in api.requests]
    assert paths == [
        f"/crm/v1/projects/{FACTS.project}",
        f"/iam/v1/projects/{FACTS.project}/serviceAccounts/{FACTS.head_service_account}",
        f"/iam/v1/projects/{FACTS.project}/serviceAccounts/{FACTS.worker_service_account}",
        f"/compute/v1/projects/{FACTS.project}/regions/{FACTS.region}/subnetworks/{SUBNET}",
    ]


def test_the_node_provider_lists_through_the_endpoint(api):
    """The head's autoscaler (and `ray up`/`ray down`): Ray's GCPCompute calls, per zone."""
    provider = ReadOnlyGCPNodeProvider(provider_config(api), "ray-gcp")
    assert provider.non_terminated_nodes({}) == []
    zones = [FACTS.zone, *FACTS.fallback_zones]
    assert [r.path.split("?")[0] for r in api.requests] == [
        f"/compute/v1/projects/{FACTS.project}/zones/{z}/instances" for z in zones
    ]
    assert {r.authorization for r in api.requests} == {f"Bearer {TOKEN}"}
    # Ray rebuilds the clients after a BrokenPipeError: still at the endpoint.
    provider._construct_clients()
    compute = provider.resources[GCPNodeType.COMPUTE]
    for zonal in (compute, *compute.per_zone.values()):
        assert zonal.resource._baseUrl == api.url("compute/v1/")


# ---- refused values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({"compute": "compute.googleapis.com/compute/v1/"}, "api_endpoints.compute = "),
        ({"compute": "ftp://h/compute/v1/"}, "not an absolute http(s) URL"),
        ({"iam": "https://iam.example/v1"}, "must end with '/'"),
        ({"iam": "https://iam.example/?x=1"}, "no query"),
        ({"storage": "https://storage.example/"}, "api_endpoints.storage: unknown API"),
        ({"compute": 5}, "not a URL"),
        ("https://compute.googleapis.com/", "not a mapping"),
    ],
)
def test_bad_endpoints_are_refused_naming_the_key(fake_gcp, launcher_key, value, needle):
    cfg = render_gcp(ClusterSpec(), FACTS)
    cfg["auth"]["ssh_private_key"] = str(launcher_key)
    cfg["provider"]["api_endpoints"] = value
    with pytest.raises(BootstrapCheckError) as err:
        bootstrap_readonly(cfg)
    assert needle in str(err.value)
    if "unknown API" in needle:
        assert ", ".join(API_KEYS) in str(err.value)
    elif "mapping" not in needle:
        assert "e.g. https://compute.googleapis.com/compute/v1/" in str(err.value)
    assert fake_gcp.calls == []  # refused before any API call
    with pytest.raises(ApiEndpointsError):
        gcp_clients.api_endpoints_of({"api_endpoints": value})


def test_rays_schema_takes_the_provider_key(api):
    cfg = render_gcp(ClusterSpec(), FACTS)
    cfg["provider"] = provider_config(api)
    validate_config(cfg)  # raises on a schema violation


def test_the_provider_module_builds_through_the_wrapper():
    """One name to patch: the bootstrap and the provider both call gcp_provider.construct_clients."""
    assert gcp_provider.construct_clients is gcp_clients.construct_clients
