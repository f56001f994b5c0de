"""Fixtures of the offline GCP tests: the project `pulumi up` creates, as recording fakes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ray.autoscaler._private.providers import _provider_instances

from cluster import gcp_provider
from cluster.render import example_gcp_facts
from tests.cluster.fakes import FakeGcp

FACTS = example_gcp_facts()
SUBNET_KEY = f"{FACTS.project}/{FACTS.region}/{FACTS.subnetwork_name}"


@pytest.fixture
def fake_gcp(monkeypatch, tmp_path) -> FakeGcp:
    """The project `pulumi up` creates; Ray's own client factory is booby-trapped."""
    fake = FakeGcp(
        project=FACTS.project,
        service_accounts={FACTS.head_service_account, FACTS.worker_service_account},
        subnetworks={SUBNET_KEY},
    )
    monkeypatch.setattr(gcp_provider, "construct_clients", fake.clients)

    def rays_own(*_a, **_k):
        raise AssertionError("Ray's own GCP client factory (bootstrap_gcp path) was used")

    import ray.autoscaler._private.gcp.config as ray_gcp_config
    import ray.autoscaler._private.gcp.node_provider as ray_gcp_node_provider

    monkeypatch.setattr(ray_gcp_config, "construct_clients_from_provider_config", rays_own)
    monkeypatch.setattr(ray_gcp_node_provider, "construct_clients_from_provider_config", rays_own)
    # _bootstrap_config caches the resolved config in tempfile.gettempdir().
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    _provider_instances.clear()
    yield fake
    _provider_instances.clear()


@pytest.fixture
def launcher_key(tmp_path) -> Path:
    key = tmp_path / "ray-launcher-key"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
    key.chmod(0o600)
    return key


@pytest.fixture
def ssh_control_dirs():
    """Ray's SSHCommandRunner makes /tmp/ray_ssh_<user>/<cluster> itself; remove ours."""
    before = set(Path("/tmp").glob("ray_ssh_*/*")) | set(Path("/tmp").glob("ray_ssh_*"))
    yield
    after = set(Path("/tmp").glob("ray_ssh_*/*")) | set(Path("/tmp").glob("ray_ssh_*"))
    for path in sorted(after - before, key=lambda p: -len(p.parts)):
        shutil.rmtree(path, ignore_errors=True)
