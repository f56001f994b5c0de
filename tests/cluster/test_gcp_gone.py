"""A node GCE answers 404 for is gone: ``ReadOnlyGCPNodeProvider`` says so instead of raising.

Ray's real provider code and googleapiclient, over HTTP, against the fake
Compute Engine API of the end-to-end test (``tests.e2e.fake_gce``), whose
404s have Google's error shape. A Spot worker is preempted (GCE deletes it,
``instanceTerminationAction: DELETE``) between the provider's last list and
its next call about the node: before a delete, before a setLabels, or before
anything at all. Ray 2.60's ``GCPNodeProvider`` raises ``UnboundLocalError``
from ``terminate_node`` and ``HttpError`` from the rest (``cluster.gcp_gone``).
"""

from __future__ import annotations

import copy

import pytest
from googleapiclient.errors import HttpError
from ray.autoscaler._private.gcp.node import GCPCompute
from ray.autoscaler._private.gcp.node_provider import GCPNodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    STATUS_UNINITIALIZED,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
from ray.autoscaler.v2.instance_manager.node_provider import NodeProviderAdapter
from ray.autoscaler.v2.instance_manager.ray_installer import RayInstaller
from ray.core.generated.instance_manager_pb2 import Instance

from cluster import gcp_clients
from cluster.gcp_provider import ReadOnlyGCPNodeProvider, bootstrap_readonly
from cluster.render import example_gcp_facts, render_gcp
from cluster.spec import ClusterSpec
from tests.cluster.fakes import RecordingProcessRunner
from tests.e2e.fake_gce import ApiError, FakeCloud
from tests.e2e.fake_gce_http import serve

FACTS = example_gcp_facts()
TOKEN = "ya29.fake-token"
SPEC = ClusterSpec.from_settings(max_workers=2, spot_workers=True)
CLUSTER = SPEC.cluster_name
TAGS = {
    TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
    TAG_RAY_NODE_NAME: f"ray-{CLUSTER}-worker",
    TAG_RAY_NODE_STATUS: STATUS_UNINITIALIZED,
    TAG_RAY_USER_NODE_TYPE: "cpu-worker",
}


@pytest.fixture
def cloud(monkeypatch):
    cloud = FakeCloud(
        project=FACTS.project, region=FACTS.region, zones=[FACTS.zone, *FACTS.fallback_zones],
        subnetwork=FACTS.subnetwork, cidr="10.10.0.0/20",
        service_accounts={FACTS.head_service_account, FACTS.worker_service_account},
        token=TOKEN,
    )
    server = serve(cloud)
    cloud.server = server
    # Ray polls zone operations every 5 s; the fake moves one step per poll.
    monkeypatch.setattr(GCPCompute.wait_for_operation, "__defaults__", (12, 0))
    yield cloud
    server.stop()


@pytest.fixture
def config(cloud, launcher_key) -> dict:
    """The rendered config at the fake's endpoints, through our read-only bootstrap."""
    cfg = render_gcp(SPEC, FACTS)
    cfg["provider"]["api_endpoints"] = dict(cloud.server.endpoints)
    cfg["provider"]["gcp_credentials"] = {"type": "credentials_token", "credentials": TOKEN}
    cfg["auth"]["ssh_private_key"] = str(launcher_key)
    return bootstrap_readonly(cfg)


@pytest.fixture
def provider(config) -> ReadOnlyGCPNodeProvider:
    return ReadOnlyGCPNodeProvider(config["provider"], CLUSTER)


@pytest.fixture
def rays_provider(config, monkeypatch) -> GCPNodeProvider:
    """Ray's own GCPNodeProvider on the same fake (its client factory knows no endpoints)."""
    import ray.autoscaler._private.gcp.node_provider as ray_gcp_node_provider

    monkeypatch.setattr(ray_gcp_node_provider, "construct_clients_from_provider_config",
                        gcp_clients.construct_clients)
    return GCPNodeProvider(config["provider"], CLUSTER)


def launch(provider, config, count: int = 1) -> list[str]:
    node_config = config["available_node_types"]["cpu-worker"]["node_config"]
    names = list(provider.create_node(node_config, dict(TAGS), count))
    assert sorted(provider.non_terminated_nodes({})) == sorted(names)
    return names


def calls_about(cloud, name: str, since: int = 0) -> list[tuple[str, int]]:
    return [(c.method.rsplit(".", 1)[1], c.status) for c in cloud.calls[since:]
            if c.params.get("instance") == name]


def is_call(method: str):
    return lambda m, params, body: m == f"compute.instances.{method}"


# ---- terminate --------------------------------------------------------------------------------


def test_rays_own_terminate_node_fails_on_the_404_it_means_to_ignore(rays_provider, config, cloud):
    """The premise, in Ray 2.60's source: the 404 is caught, then `return result` is unbound."""
    [name] = launch(rays_provider, config)
    cloud.preempt(name)
    with pytest.raises(UnboundLocalError):
        rays_provider.terminate_node(name)
    assert calls_about(cloud, name)[-1] == ("delete", 404)


def test_deleting_a_preempted_node_succeeds_and_the_batch_goes_on(provider, config, cloud):
    gone, alive = launch(provider, config, 2)
    cloud.preempt_on_call(lambda m, params, body: m == "compute.instances.delete"
                          and params["instance"] == gone)
    provider.terminate_nodes([gone, alive])  # raises nothing
    assert calls_about(cloud, gone)[-1] == ("delete", 404)
    assert ("delete", 200) in calls_about(cloud, alive)
    assert alive not in cloud.instances or cloud.instances[alive]["status"] == "STOPPING"
    assert provider.is_terminated(gone) and not provider.is_running(gone)
    since = len(cloud.calls)
    assert provider.terminate_node(gone) is None  # asked again: no call, nothing to do
    assert calls_about(cloud, gone, since) == []


def test_v2_reports_no_termination_error_for_a_preempted_node(provider, config, cloud):
    """NodeProviderAdapter turns any exception into TerminateNodeError for the whole batch."""
    gone, alive = launch(provider, config, 2)
    cloud.preempt(gone)
    adapter = NodeProviderAdapter(provider, config_reader=None)
    adapter._do_terminate([gone, alive], request_id="scale-down")
    assert adapter.poll_errors() == []
    assert ("delete", 200) in calls_about(cloud, alive)


# ---- setLabels and reads ----------------------------------------------------------------------


def test_labelling_a_node_preempted_after_the_list_writes_nothing_and_raises_nothing(
    provider, config, cloud, caplog
):
    [name] = launch(provider, config)
    ip = cloud.instances[name]["networkInterfaces"][0]["networkIP"]
    cloud.preempt_on_call(is_call("setLabels"))
    since = len(cloud.calls)
    assert provider.set_node_tags(name, {TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE}) is None
    assert calls_about(cloud, name, since) == [("setLabels", 404)]
    assert f"{name}: GCE answered instances.setLabels with 404" in caplog.text
    # What the provider says about it now: terminated, last labels (not the unwritten one), last IP.
    assert provider.is_terminated(name) and not provider.is_running(name)
    assert provider.node_tags(name)[TAG_RAY_NODE_STATUS] == STATUS_UNINITIALIZED
    assert provider.internal_ip(name) == ip
    assert name not in provider.non_terminated_nodes({})
    since = len(cloud.calls)
    assert provider.set_node_tags(name, {TAG_RAY_NODE_STATUS: "update-failed"}) is None
    assert calls_about(cloud, name, since) == []  # known gone: not asked again


def test_reads_of_a_node_preempted_before_the_list_see_it_terminated(provider, config, cloud):
    [name] = launch(provider, config)
    ip = cloud.instances[name]["networkInterfaces"][0]["networkIP"]
    cloud.preempt(name)
    provider.non_terminated_nodes({})  # the next round's list no longer has it
    since = len(cloud.calls)
    assert provider.is_terminated(name)  # Ray's NodeUpdater.wait_ready asks this
    assert calls_about(cloud, name, since) == [("get", 404)]
    assert not provider.is_running(name)
    assert provider.internal_ip(name) == ip
    assert provider.external_ip(name) is None  # private nodes have none
    assert provider.node_tags(name)[TAG_RAY_NODE_KIND] == NODE_KIND_WORKER


def test_rays_own_reads_raise_the_404(rays_provider, config, cloud):
    [name] = launch(rays_provider, config)
    cloud.preempt(name)
    rays_provider.non_terminated_nodes({})
    for read in (rays_provider.is_terminated, rays_provider.internal_ip,
                 lambda n: rays_provider.set_node_tags(n, {TAG_RAY_NODE_STATUS: "x"})):
        with pytest.raises(HttpError) as lost:
            read(name)
        assert lost.value.resp.status == 404


# ---- other errors still raise --------------------------------------------------------------


@pytest.mark.parametrize("method, status", [("delete", 403), ("delete", 503),
                                            ("setLabels", 403), ("setLabels", 412),
                                            ("get", 403)])
def test_any_other_error_still_raises(provider, config, cloud, method, status):
    [name] = launch(provider, config)

    def refuse(params):
        raise ApiError(status, f"refused {method} (test)")

    cloud.intercept(is_call(method), refuse)
    with pytest.raises(HttpError) as refused:
        if method == "delete":
            provider.terminate_node(name)
        elif method == "setLabels":
            provider.set_node_tags(name, {TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE})
        else:
            provider.cached_nodes.clear()
            provider._last_seen.clear()
            provider.get_command_runner("t: ", name, {"ssh_user": "ray"}, CLUSTER, None, True)
    assert refused.value.resp.status == status
    assert not provider.is_gone(name)


def test_a_404_for_an_operation_is_not_a_gone_node(provider, config, cloud):
    [name] = launch(provider, config)

    def lose_operation(params):
        raise ApiError(404, "The resource 'operation-x' was not found")

    cloud.intercept(lambda m, params, body: m == "compute.zoneOperations.get", lose_operation)
    with pytest.raises(HttpError):
        provider.terminate_node(name)
    assert not provider.is_gone(name)


# ---- autoscaler v2 setting up a worker that is preempted ----------------------------------


def test_v2_install_on_a_node_preempted_at_its_first_label_write_fails_clearly(
    provider, config, cloud, tmp_path, monkeypatch, ssh_control_dirs
):
    """RayInstaller's NodeUpdater: the 404 is a terminated node, not an HttpError, and nothing
    is run on it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    [name] = launch(provider, config)
    cfg = copy.deepcopy(config)
    cfg["file_mounts"] = {}
    runner = RecordingProcessRunner()
    installer = RayInstaller(provider, AutoscalingConfig(cfg, skip_content_hash=True),
                             process_runner=runner)
    cloud.preempt_on_call(is_call("setLabels"))
    with pytest.raises(Exception) as failed:
        installer.install_ray(Instance(instance_type="cpu-worker", cloud_instance_id=name),
                              head_node_ip="10.0.0.1")
    assert not isinstance(failed.value, HttpError), failed.value
    assert "detected as terminated" in str(failed.value)
    assert runner.commands == []
    assert [m for m, _ in calls_about(cloud, name)].count("setLabels") == 1
