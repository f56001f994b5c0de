"""Record every GCP REST call each actor makes, by running the real code paths.

- provider VM: the boot script (bash, sandboxed: fake metadata server and fake
  Secret Manager, tests/infra/fakes/), then `ray up` (Ray's
  `_bootstrap_config` and `get_or_create_head_node`) and `ray down` (Ray's
  `teardown_cluster`), through ReadOnlyGCPNodeProvider against FakeGcp;
- head: the autoscaler's provider calls: create_node per worker type (zone
  operation polling), non_terminated_nodes, node_tags on a fresh provider
  (instances.get), set_node_tags, terminate_node; plus the drivers' bucket I/O;
- worker: the workloads' GCS client (workloads.common.GCSStorage) against
  gcp-storage-emulator, every operation it offers.

Each call is reduced to an infra.iam.Call: the REST method id of the
discovery documents, what it acts on (project, account:<who>, secret:<name>,
bucket), the accounts its body attaches, its parameter names and body paths.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import requests
import yaml

from cluster import gcp_provider, layout
from infra import names
from infra.iam import PROJECT, Call
from tests.cluster.fakes import FakeGcp, RecordingProcessRunner
from tests.infra.iam.discovery import match_url

API_PREFIX = {"crm": "cloudresourcemanager", "iam": "iam", "compute": "compute"}
# Parameters whose value changes what GCP checks; recorded as name=value.
ENUM_PARAMS = ("projection", "alt", "uploadType")
# Maps in request bodies whose keys are data, not fields.
MAP_FIELDS = ("labels",)
SECRET_LOGICAL = (layout.SECRET_SSH_PRIVATE_KEY, layout.SECRET_RAY_AUTH_TOKEN, layout.SECRET_SA_KEY)


def body_paths(value: Any, where: str = "$") -> set[str]:
    out: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}"
            out.add(path)
            if key not in MAP_FIELDS:
                out |= body_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            out |= body_paths(item, f"{where}[]")
    return out


def _params(params: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(f"{k}={v}" if k in ENUM_PARAMS else k for k, v in params.items()))


class Scenario:
    """What one deployment gives the recorder: the cluster config, accounts, bucket, metadata."""

    def __init__(self, name: str, cluster_yaml: str, accounts: Mapping[str, str], bucket: str,
                 metadata: Mapping[str, str]):
        self.name = name
        self.config: dict[str, Any] = yaml.safe_load(cluster_yaml)
        self.cluster_yaml = cluster_yaml
        self.accounts = dict(accounts)  # who -> email
        self.bucket = bucket
        self.metadata = dict(metadata)
        # Every raw FakeGcp call reduced so far (for the request-body checks).
        self.raw: list = []

    @property
    def cluster_name(self) -> str:
        return self.config["cluster_name"]

    def who(self, email: str) -> str:
        for who, known in self.accounts.items():
            if known == email:
                return f"account:{who}"
        raise AssertionError(f"call names an account that is none of ours: {email}")

    def secret(self, version_name: str) -> str:
        secret_id = version_name.split("/")[3]
        for logical in SECRET_LOGICAL:
            if names.resource_name(self.cluster_name, logical) == secret_id:
                return f"secret:{logical}"
        raise AssertionError(f"call reads a secret that is none of ours: {version_name}")

    def fake_gcp(self) -> FakeGcp:
        provider = self.config["provider"]
        subnets = {
            "/".join(gcp_provider._subnet_parts(nic["subnetwork"]))
            for t in self.config["available_node_types"].values()
            for nic in t["node_config"]["networkInterfaces"]
        }
        fake = FakeGcp(
            project=provider["project_id"],
            service_accounts={self.accounts["head"], self.accounts["worker"]},
            subnetworks=subnets,
        )
        fake.extra_handlers[("compute", "instances.list")] = _list_non_terminated
        return fake

    def reduce(self, fake: FakeGcp) -> list[Call]:
        """FakeGcp's calls as infra.iam.Call."""
        self.raw += fake.calls
        out = []
        for c in fake.calls:
            method = f"{API_PREFIX[c.api]}.{c.method}"
            on = PROJECT
            if c.method == "projects.serviceAccounts.get":
                on = self.who(c.kwargs["name"].rsplit("/", 1)[1])
            body = c.kwargs.get("body") or {}
            attaches = tuple(sorted({self.who(sa["email"]) for sa in body.get("serviceAccounts", [])}))
            # googleapiclient leaves out parameters passed as None (Ray passes
            # sourceInstanceTemplate=None to every insert).
            params = _params(
                {k: v for k, v in c.kwargs.items() if k != "body" and v is not None}
            )
            out.append(Call(method, on, attaches, params, tuple(sorted(body_paths(body)))))
        return out


def _list_non_terminated(fake: FakeGcp, kw: dict) -> dict:
    """instances.list as GCE answers Ray's filter, including its `(status = X)` terms."""
    import re

    statuses = set(re.findall(r"\(status = (\w+)\)", kw.get("filter") or ""))
    items = FakeGcp._list(fake, kw)["items"]
    return {"items": [i for i in items if not statuses or i["status"] in statuses]}


@contextlib.contextmanager
def patched_gcp(fake: FakeGcp) -> Iterator[None]:
    """Ray's GCP client factory replaced by the fake, like tests/cluster/conftest.py."""
    import ray.autoscaler._private.gcp.config as ray_gcp_config
    import ray.autoscaler._private.gcp.node_provider as ray_gcp_node_provider
    from ray.autoscaler._private.providers import _provider_instances

    def rays_own(*_a, **_k):
        raise AssertionError("Ray's own GCP client factory (bootstrap_gcp path) was used")

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(gcp_provider, "construct_clients", fake.clients))
        stack.enter_context(mock.patch.object(ray_gcp_config, "construct_clients_from_provider_config", rays_own))
        stack.enter_context(mock.patch.object(ray_gcp_node_provider, "construct_clients_from_provider_config", rays_own))
        stack.enter_context(mock.patch("tempfile.tempdir", tmp))
        _provider_instances.clear()
        try:
            yield
        finally:
            _provider_instances.clear()


def _with_key(config: dict[str, Any], directory: Path) -> dict[str, Any]:
    config = copy.deepcopy(config)
    key = directory / "ray-launcher-key"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
    key.chmod(0o600)
    config["auth"]["ssh_private_key"] = str(key)
    # file_mounts name paths on the provider VM; ray up hashes their contents.
    for remote, local in list(config.get("file_mounts", {}).items()):
        path = directory / "mounts" / remote.strip("/~").replace("/", "_")
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"stand-in for {local}\n")
        config["file_mounts"][remote] = str(path)
    return config


# ---- the provider VM: ray up, ray down ------------------------------------------------


def record_ray_up_and_down(scenario: Scenario, directory: Path) -> list[Call]:
    from ray.autoscaler._private import commands

    config = _with_key(scenario.config, directory)
    config_file = directory / "cluster.yaml"
    config_file.write_text(yaml.safe_dump(config))
    fake = scenario.fake_gcp()
    with patched_gcp(fake), \
            mock.patch.object(commands, "exec_cluster", side_effect=RuntimeError("no ssh here")), \
            mock.patch.object(commands, "POLL_INTERVAL", 0), \
            mock.patch.dict("os.environ", {"HOME": str(directory)}):
        # `ray up`: Ray's real head creation and NodeUpdater (its SSH and rsync
        # commands go to a recording process runner).
        resolved = commands._bootstrap_config(copy.deepcopy(config), no_config_cache=True)
        commands.get_or_create_head_node(
            resolved, str(config_file), no_restart=False, restart_only=False, yes=True,
            override_cluster_name=None, no_monitor_on_head=True,
            _runner=RecordingProcessRunner(),
        )
        assert len(fake.instances) == 1, f"ray up made {len(fake.instances)} VMs"
        # `ray down`
        commands.teardown_cluster(str(config_file), yes=True, workers_only=False,
                                  override_cluster_name=None, keep_min_workers=False)
        assert fake.instances == {}, "ray down left VMs behind"
    return scenario.reduce(fake)


# ---- the head: the autoscaler -----------------------------------------------------------


def record_autoscaler(scenario: Scenario, directory: Path) -> list[Call]:
    from ray.autoscaler._private import commands
    from ray.autoscaler._private.providers import _get_node_provider, _provider_instances
    from ray.autoscaler._private.updater import NodeUpdaterThread
    from ray.autoscaler.tags import (
        NODE_KIND_WORKER,
        STATUS_UP_TO_DATE,
        TAG_RAY_NODE_KIND,
        TAG_RAY_NODE_NAME,
        TAG_RAY_NODE_STATUS,
        TAG_RAY_USER_NODE_TYPE,
    )

    config = _with_key(scenario.config, directory)
    fake = scenario.fake_gcp()
    with patched_gcp(fake):
        resolved = commands._bootstrap_config(copy.deepcopy(config), no_config_cache=True)
        fake.calls.clear()  # the bootstrap runs on the provider VM, not on the head
        provider = _get_node_provider(resolved["provider"], resolved["cluster_name"])
        head_type = resolved["head_node_type"]
        for type_name, node_type in sorted(resolved["available_node_types"].items()):
            if type_name == head_type:
                continue
            provider.create_node(
                copy.deepcopy(node_type["node_config"]),
                {
                    TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
                    TAG_RAY_NODE_NAME: f"ray-{resolved['cluster_name']}-worker",
                    TAG_RAY_USER_NODE_TYPE: type_name,
                },
                2,
            )
        workers = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER})
        assert len(workers) == 2 * (len(resolved["available_node_types"]) - 1)
        # A restarted autoscaler has no cache.
        _provider_instances.clear()
        fresh = _get_node_provider(resolved["provider"], resolved["cluster_name"])
        for node in workers:
            fresh.node_tags(node)
            # The autoscaler's NodeUpdaterThread for a new node (its constructor asks the
            # provider for a command runner: instances.get); its SSH goes nowhere.
            NodeUpdaterThread(
                node_id=node, provider_config=resolved["provider"], provider=fresh,
                auth_config=resolved["auth"], cluster_name=resolved["cluster_name"],
                file_mounts={}, initialization_commands=[], setup_commands=[],
                ray_start_commands=[], runtime_hash="", file_mounts_contents_hash="",
                is_head_node=False, process_runner=RecordingProcessRunner(),
            )
            fresh.set_node_tags(node, {TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE})
        # A preempted spot VM drops out of the list; Ray reads it to see that it is gone.
        fake.instances[workers[0]]["status"] = "TERMINATED"
        _provider_instances.clear()
        after = _get_node_provider(resolved["provider"], resolved["cluster_name"])
        assert after.is_terminated(workers[0])
        for node in workers:
            after.terminate_node(node)
        assert fake.instances == {}
    return scenario.reduce(fake)


# ---- the boot script ----------------------------------------------------------------------


def record_boot(scenario: Scenario, sandbox_factory) -> tuple[list[Call], list[str]]:
    """(Secret Manager calls, metadata server paths) of one real boot with this metadata."""
    from tests.infra import test_boot

    sb = sandbox_factory(scenario.metadata[layout.META_CREDENTIAL_MODE])
    sb.metadata.attributes = {k: v for k, v in scenario.metadata.items() if k != "startup-script"}
    values = test_boot.make_secrets()
    sb.sm.versions = {
        version: values[logical]
        for logical, version in json.loads(scenario.metadata[layout.META_SECRETS]).items()
    }
    result = sb.boot()
    assert result.returncode == 0, f"boot failed:\n{result.stdout}\n{result.stderr}"
    calls = []
    for request in sb.sm.requests:
        method, path_params, query = match_url("secretmanager.v1", request.method, request.path)
        calls.append(Call(method, scenario.secret(path_params["name"]), params=_params(
            {**{k: 1 for k in path_params}, **query})))
    return calls, [r.path for r in sb.metadata.requests]


# ---- the workloads' GCS client --------------------------------------------------------------


@contextlib.contextmanager
def recording_http() -> Iterator[list[tuple[str, str]]]:
    """Every (HTTP method, URL) a requests.Session sends, google-cloud-storage's included."""
    seen: list[tuple[str, str]] = []
    original = requests.Session.request

    def request(self, method, url, *args, params=None, **kwargs):
        if params:
            url = requests.Request(method, url, params=params).prepare().url
        seen.append((method, url))
        return original(self, method, url, *args, **kwargs)

    with mock.patch.object(requests.Session, "request", request):
        yield seen


def _wait_for_background_fetches(store, timeout: float = 30) -> None:
    """google-cloud-storage fetches bucket metadata in background threads; wait for them,
    so what is recorded does not depend on timing."""
    import time

    cache = getattr(store.bucket.client, "_bucket_metadata_cache", None)
    deadline = time.monotonic() + timeout
    while cache is not None and time.monotonic() < deadline:
        with cache._lock:
            if not cache._inflight_fetches and not cache._inflight_checks:
                return
        time.sleep(0.02)


@contextlib.contextmanager
def _environ_restored(name: str) -> Iterator[None]:
    """GCSStorage points this process at its emulator; later tests (and a local
    cluster started after them) must not inherit that endpoint."""
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def record_gcs(emulator: str, bucket: str) -> list[Call]:
    """Every operation workloads.common.GCSStorage offers, against the emulator."""
    from workloads.common import GCSStorage

    store = GCSStorage(bucket, "iam-recording", emulator_host=emulator)
    with _environ_restored("STORAGE_EMULATOR_HOST"), recording_http() as seen:
        store.write_bytes("in/a.txt", b"a")
        store.write_text("in/b.txt", "b")
        assert sorted(store.list("in")) == ["in/a.txt", "in/b.txt"]
        assert store.read_bytes("in/a.txt") == b"a"
        assert store.exists("in/b.txt") and not store.exists("in/none")
        with contextlib.suppress(FileNotFoundError):
            store.read_bytes("in/none")
        store.write_bytes("in/a.txt", b"overwritten")
        _wait_for_background_fetches(store)
    calls = []
    for http_method, url in seen:
        method, path_params, query = match_url("storage.v1", http_method, url)
        assert path_params["bucket"] == bucket
        calls.append(Call(method, "bucket", params=_params({**{k: 1 for k in path_params}, **query})))
    return calls
