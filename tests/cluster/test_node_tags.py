"""After set_node_tags, node_tags shows what was written (autoscaler v2 kills workers otherwise).

Ray 2.60's ``GCPNodeProvider.set_node_tags`` labels the instance through the
API but leaves the cached node that ``node_tags`` reads with the old labels.
Autoscaler v2's ``RayInstaller.install_ray`` reads ``node_tags`` right after
``NodeUpdater.run()`` set ``ray-node-status: up-to-date``: with the stale
cache it raises "Ray installation failed", v2 retries the install, the
retry's ``ray stop`` stops Ray and v2 then terminates the healthy worker.

Each test runs Ray's real provider code (``GCPNodeProvider``, ``GCPCompute``,
``NodeUpdater``, v2's ``RayInstaller``) against the recording GCE fake, whose
nodes are decoded copies as over HTTP, with label fingerprints checked as GCE
checks them (a stale fingerprint fails the write).
"""

from __future__ import annotations

import copy

import pytest
from ray.autoscaler._private.gcp.node_provider import GCPNodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    STATUS_WAITING_FOR_SSH,
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
from ray.autoscaler.v2.instance_manager.ray_installer import RayInstaller
from ray.core.generated.instance_manager_pb2 import Instance

from cluster.gcp_provider import ReadOnlyGCPNodeProvider, bootstrap_readonly
from cluster.render import example_gcp_facts, render_gcp
from cluster.spec import ClusterSpec
from tests.cluster.fakes import RecordingProcessRunner

FACTS = example_gcp_facts()
CLUSTER = "ray-gcp"
WORKER_TAGS = {
    TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
    TAG_RAY_NODE_NAME: f"ray-{CLUSTER}-worker",
    TAG_RAY_NODE_STATUS: STATUS_WAITING_FOR_SSH,
    TAG_RAY_USER_NODE_TYPE: "cpu-worker",
    TAG_RAY_CLUSTER_NAME: CLUSTER,
}


@pytest.fixture
def resolved(fake_gcp, launcher_key) -> dict:
    cfg = render_gcp(ClusterSpec(), FACTS)
    cfg["auth"]["ssh_private_key"] = str(launcher_key)
    out = bootstrap_readonly(cfg)
    fake_gcp.calls.clear()
    return out


@pytest.fixture
def rays_provider(fake_gcp, monkeypatch, resolved) -> GCPNodeProvider:
    """Ray's own GCPNodeProvider (one zone), on the same fake."""
    import ray.autoscaler._private.gcp.node_provider as ray_gcp_node_provider

    monkeypatch.setattr(ray_gcp_node_provider, "construct_clients_from_provider_config", fake_gcp.clients)
    return GCPNodeProvider(resolved["provider"], CLUSTER)


def launch_worker(provider, resolved) -> str:
    node_config = resolved["available_node_types"]["cpu-worker"]["node_config"]
    (node_id,) = provider.create_node(node_config, dict(WORKER_TAGS), 1)
    assert node_id in provider.non_terminated_nodes({})
    return node_id


def test_rays_own_provider_serves_the_old_tags(rays_provider, resolved, fake_gcp):
    """The premise, in Ray 2.60.0's source: the API has the new label, node_tags the old one."""
    node_id = launch_worker(rays_provider, resolved)
    rays_provider.set_node_tags(node_id, {TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE})
    assert fake_gcp.instances[node_id]["labels"][TAG_RAY_NODE_STATUS] == STATUS_UP_TO_DATE
    assert rays_provider.node_tags(node_id)[TAG_RAY_NODE_STATUS] == STATUS_WAITING_FOR_SSH


def test_node_tags_show_what_set_node_tags_wrote(fake_gcp, resolved):
    provider = ReadOnlyGCPNodeProvider(resolved["provider"], CLUSTER)
    node_id = launch_worker(provider, resolved)
    before = copy.deepcopy(fake_gcp.instances[node_id]["labels"])

    provider.set_node_tags(node_id, {TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE, "extra": "1"})

    # Exactly what GCE now holds: the old labels merged with the new tags.
    held = fake_gcp.instances[node_id]["labels"]
    assert held == {**before, TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE, "extra": "1"}
    assert provider.node_tags(node_id) == held
    # setLabels does not return the new fingerprint: the cache must not keep the old one.
    assert "labelFingerprint" not in provider.cached_nodes[node_id]
    # Still the full node (internal IP, status) for Ray's other cached reads.
    assert provider.internal_ip(node_id) == fake_gcp.instances[node_id]["networkInterfaces"][0]["networkIP"]
    assert provider.is_running(node_id)


def test_consecutive_writes_each_use_gces_current_fingerprint(fake_gcp, resolved):
    """The fake refuses a stale labelFingerprint (as GCE answers 412): three writes in a row."""
    provider = ReadOnlyGCPNodeProvider(resolved["provider"], CLUSTER)
    node_id = launch_worker(provider, resolved)
    for status in ("setting-up", "syncing-files", STATUS_UP_TO_DATE):
        provider.set_node_tags(node_id, {TAG_RAY_NODE_STATUS: status})
        assert provider.node_tags(node_id)[TAG_RAY_NODE_STATUS] == status
    sent = [c.kwargs["body"]["labelFingerprint"] for c in fake_gcp.calls if c.method == "instances.setLabels"]
    assert len(sent) == 3 and len(set(sent)) == 3


def test_a_labels_only_node_fetches_its_fingerprint_before_a_write(fake_gcp, resolved):
    """ZonalGCPCompute.set_labels on the cached node (no fingerprint) reads GCE's first."""
    provider = ReadOnlyGCPNodeProvider(resolved["provider"], CLUSTER)
    node_id = launch_worker(provider, resolved)
    provider.set_node_tags(node_id, {TAG_RAY_NODE_STATUS: "setting-up"})
    compute = next(iter(provider.resources.values()))
    compute.set_labels(provider.cached_nodes[node_id], {TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE})
    assert fake_gcp.instances[node_id]["labels"][TAG_RAY_NODE_STATUS] == STATUS_UP_TO_DATE


def test_tags_of_a_node_in_a_fallback_zone(fake_gcp, resolved):
    """Zone fallback: the node lives in -b; its labels are written there and read back."""
    fake_gcp.insert_fault = lambda zone, body: (
        _exhausted(zone) if zone == FACTS.zone else None
    )
    provider = ReadOnlyGCPNodeProvider(resolved["provider"], CLUSTER)
    node_id = launch_worker(provider, resolved)
    assert fake_gcp.zone_of(node_id) == FACTS.fallback_zones[0]
    provider.set_node_tags(node_id, {TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE})
    assert provider.node_tags(node_id)[TAG_RAY_NODE_STATUS] == STATUS_UP_TO_DATE
    (write,) = [c for c in fake_gcp.calls if c.method == "instances.setLabels"]
    assert write.kwargs["zone"] == FACTS.fallback_zones[0]


def _exhausted(zone: str):
    from tests.cluster.fakes import http_error

    return http_error(503, f"ZONE_RESOURCE_POOL_EXHAUSTED in {zone}")


# ---- what autoscaler v2 does with it --------------------------------------------------------


def install(provider, resolved, tmp_path, monkeypatch) -> RecordingProcessRunner:
    """v2's RayInstaller.install_ray on a fresh worker, ssh/rsync recorded (all succeed)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    node_id = launch_worker(provider, resolved)
    config = copy.deepcopy(resolved)
    config["file_mounts"] = {}  # the head's own paths; nothing to sync in this test
    runner = RecordingProcessRunner()
    installer = RayInstaller(
        provider, AutoscalingConfig(config, skip_content_hash=True), process_runner=runner
    )
    instance = Instance(instance_type="cpu-worker", cloud_instance_id=node_id)
    installer.install_ray(instance, head_node_ip="10.0.0.1")
    return runner


def test_v2_sees_a_successful_install_as_successful(
    fake_gcp, resolved, tmp_path, monkeypatch, ssh_control_dirs
):
    provider = ReadOnlyGCPNodeProvider(resolved["provider"], CLUSTER)
    runner = install(provider, resolved, tmp_path, monkeypatch)  # raises if seen as failed
    flat = [" ".join(c) for c in runner.commands]
    assert sum("ray start --address=" in c for c in flat) == 1
    assert sum("/bin/ray stop" in c for c in flat) == 1  # no retry, so no second `ray stop`


def test_with_rays_provider_v2_calls_the_same_install_a_failure(
    rays_provider, resolved, tmp_path, monkeypatch, ssh_control_dirs
):
    """Contrast: what made v2 retry (and its `ray stop` then kill) healthy workers."""
    with pytest.raises(Exception, match="Ray installation failed with unexpected status"):
        install(rays_provider, resolved, tmp_path, monkeypatch)
