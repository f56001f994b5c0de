"""The fake Compute Engine API, driven by Ray's own ``GCPCompute`` over real HTTP.

Loopback only, no namespaces: these run in ``make test``. The clients are built
the way Ray's ``_create_compute`` builds them (static discovery document,
``credentials_token`` credentials) plus ``client_options.api_endpoint``, so a
behaviour the end-to-end test relies on is pinned here first.
"""

from __future__ import annotations

import json
import time

import httplib2
import pytest
from google.auth.exceptions import RefreshError
from google.oauth2.credentials import Credentials as OAuthCredentials
from googleapiclient import discovery
from googleapiclient.errors import HttpError
from ray.autoscaler._private.gcp.node import GCPCompute

from cluster.gcp_zonal import zonal_node_config
from cluster.render import example_gcp_facts, render_gcp
from cluster.spec import ClusterSpec
from cluster.zones import zone_error
from tests.e2e.fake_gce import SERVED, FakeCloud
from tests.e2e.fake_gce_http import serve
from tests.e2e.gce_filter import FilterError, compile_filter

FACTS = example_gcp_facts()
A, B = FACTS.zone, FACTS.fallback_zones[0]
TOKEN = "ya29.fake-token"
SPEC = ClusterSpec.from_settings(max_workers=2, spot_workers=True)
CONFIG = render_gcp(SPEC, FACTS)
WORKER = CONFIG["available_node_types"]["cpu-worker"]["node_config"]
# Ray's label filter for one cluster's workers, verbatim from GCPCompute.list_instances.
WORKERS = {"ray-node-type": "worker"}
# The labels Ray's NodeUpdater/launcher put on a new worker.
LABELS = {"ray-node-type": "worker", "ray-node-name": "ray-ray-gcp-worker",
          "ray-user-node-type": "cpu-worker", "ray-node-status": "uninitialized",
          "ray-launch-config": "0123456789abcdef0123456789abcdef01234567"}


def new_cloud(**kw) -> FakeCloud:
    return FakeCloud(
        project=FACTS.project, region=FACTS.region, zones=[A, *FACTS.fallback_zones],
        subnetwork=FACTS.subnetwork, cidr="10.10.0.0/20",
        service_accounts={FACTS.head_service_account, FACTS.worker_service_account},
        token=TOKEN, **kw,
    )


@pytest.fixture
def cloud():
    cloud = new_cloud()
    server = serve(cloud)
    cloud.server = server
    yield cloud
    server.stop()


def client(cloud, api="compute", version="v1", token=TOKEN):
    return discovery.build(
        api, version, credentials=OAuthCredentials(token), cache_discovery=False,
        client_options={"api_endpoint": cloud.server.endpoints[api]},
    )


def compute(cloud, zone=A) -> GCPCompute:
    return GCPCompute(client(cloud), FACTS.project, zone, CONFIG["cluster_name"])


def error_of(e: HttpError) -> dict:
    return json.loads(e.content)["error"]


def test_ray_create_polls_pending_running_done_then_lists_gets_labels_deletes(cloud):
    gce = compute(cloud)
    operation, name = gce.create_instance(WORKER, LABELS,
                                          wait_for_operation=False)
    assert operation["status"] == "PENDING"
    assert gce.get_instance(name)["status"] == "PROVISIONING"
    seen = []
    for _ in range(3):  # as Ray's wait_for_operation, one status per poll
        seen.append(cloud.handle("compute.v1", "compute.zoneOperations.get",
                                 {"project": FACTS.project, "zone": A,
                                  "operation": operation["name"]}, None)["status"])
    assert seen == ["RUNNING", "DONE", "DONE"]
    node = gce.get_instance(name)
    assert node["status"] == "RUNNING"
    assert node.get_internal_ip() == "10.10.0.2"
    assert node["machineType"].endswith(f"/zones/{A}/machineTypes/n2-standard-4")

    [listed] = gce.list_instances(WORKERS)
    assert listed["name"] == name
    assert gce.list_instances({"ray-node-type": "head"}) == []
    assert compute(cloud, B).list_instances(WORKERS) == []

    gce.set_labels(listed, {"ray-node-status": "up-to-date"}, wait_for_operation=False)
    assert gce.get_instance(name)["labels"]["ray-node-status"] == "up-to-date"
    # The fingerprint changed: a second write from the stale copy is refused.
    with pytest.raises(HttpError) as stale:
        gce.set_labels(listed, {"ray-node-status": "waiting-for-ssh"}, wait_for_operation=False)
    assert stale.value.resp.status == 412
    assert error_of(stale.value)["errors"][0]["reason"] == "conditionNotMet"

    deleting = gce.delete_instance(name, wait_for_operation=False)
    assert gce.get_instance(name)["status"] == "STOPPING"
    assert gce.list_instances(WORKERS) == []  # Ray lists non-terminated statuses only
    gce.wait_for_operation(deleting, poll_interval=0)
    with pytest.raises(HttpError) as gone:
        gce.get_instance(name)
    assert gone.value.resp.status == 404
    assert error_of(gone.value)["message"] == (
        f"The resource 'projects/{FACTS.project}/zones/{A}/instances/{name}' was not found"
    )
    assert error_of(gone.value)["errors"][0]["reason"] == "notFound"
    assert all(c.status in (200, 404, 412) for c in cloud.calls)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"machineTypo": "n2"}, "resource.machineTypo: unknown field"),
        ({"canIpForward": "yes"}, "resource.canIpForward: expected a boolean"),
        ({"scheduling": {"provisioningModel": "CHEAP"}}, "'CHEAP' is not one of"),
        ({"labels": {"Role": "x"}}, "resource.labels"),
        ({"machineType": f"zones/{B}/machineTypes/n2-standard-4"}, "resource.machineType"),
        ({"serviceAccounts": [{"email": "nobody@x.iam.gserviceaccount.com"}]}, "serviceAccounts/"),
        ({"scheduling": {"provisioningModel": "SPOT", "automaticRestart": True}}, "Spot VMs"),
    ],
)
def test_invalid_insert_bodies_get_googles_400(cloud, change, field):
    with pytest.raises(HttpError) as refused:
        compute(cloud).create_instance({**WORKER, **change}, LABELS, wait_for_operation=False)
    assert refused.value.resp.status == 400
    error = error_of(refused.value)
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert field in error["message"], error["message"]
    assert error["errors"][0]["domain"] == "global"
    assert cloud.instances == {}
    assert cloud.calls[-1].status == 400


def test_exhausted_zone_fails_in_the_operation_and_leaves_no_instance(cloud):
    cloud.exhausted[A] = "operation"
    gce = compute(cloud)
    operation, name = gce.create_instance(WORKER, LABELS, wait_for_operation=False)
    with pytest.raises(Exception) as failed:
        gce.wait_for_operation(operation, poll_interval=0)
    assert zone_error(failed.value) == "ZONE_RESOURCE_POOL_EXHAUSTED"
    with pytest.raises(HttpError):
        gce.get_instance(name)
    # The next zone has room, for a body whose zonal types name that zone.
    with pytest.raises(HttpError) as other_zone:
        compute(cloud, B).create_instance(WORKER, LABELS, wait_for_operation=False)
    assert "diskType" in error_of(other_zone.value)["message"]
    compute(cloud, B).create_instance(zonal_node_config(WORKER, B), LABELS, wait_for_operation=False)


def test_exhausted_zone_can_refuse_the_insert_itself(cloud):
    cloud.exhausted[A] = "insert"
    with pytest.raises(HttpError) as refused:
        compute(cloud).create_instance(WORKER, LABELS, wait_for_operation=False)
    assert refused.value.resp.status == 503
    assert zone_error(refused.value) == "ZONE_RESOURCE_POOL_EXHAUSTED"


def test_spot_instance_is_preempted_and_deleted_by_gce(cloud):
    gone = []
    cloud.on_gone = gone.append
    spot = render_gcp(SPEC, FACTS)["available_node_types"]["cpu-worker"]["node_config"]
    assert spot["scheduling"]["instanceTerminationAction"] == "DELETE"
    gce = compute(cloud)
    operation, name = gce.create_instance(spot, LABELS,
                                          wait_for_operation=False)
    gce.wait_for_operation(operation, poll_interval=0)
    cloud.preempt(name)
    cloud.wait_hooks()
    assert [g["name"] for g in gone] == [name]
    with pytest.raises(HttpError) as lost:
        gce.get_instance(name)
    assert lost.value.resp.status == 404
    assert gce.list_instances(WORKERS) == []
    assert [op.kind for op in cloud.operations.values()][-1] == "compute.instances.preempted"


def test_spot_with_stop_action_stays_terminated_and_standard_vms_are_not_preempted(cloud):
    gce = compute(cloud)
    stop = {**WORKER, "scheduling": {"provisioningModel": "SPOT", "automaticRestart": False,
                                     "onHostMaintenance": "TERMINATE",
                                     "instanceTerminationAction": "STOP"}}
    _, spot = gce.create_instance(stop, LABELS, wait_for_operation=False)
    cloud.preempt(spot)
    assert gce.get_instance(spot)["status"] == "TERMINATED"
    assert gce.list_instances(WORKERS) == []
    assert [n["name"] for n in gce.list_instances(WORKERS, is_terminated=True)] == [spot]
    standard = render_gcp(ClusterSpec(), FACTS)["available_node_types"]["cpu-worker"]
    _, name = gce.create_instance(standard["node_config"], LABELS, wait_for_operation=False)
    with pytest.raises(ValueError, match="not a Spot VM"):
        cloud.preempt(name)


def test_operations_finish_on_their_own_when_nobody_polls():
    cloud = new_cloud(op_step_s=0.2)
    server = serve(cloud)
    cloud.server = server
    running = []
    cloud.on_running = running.append
    try:
        _, name = compute(cloud).create_instance(WORKER, LABELS, wait_for_operation=False)
        deadline = time.monotonic() + 30
        while not running and time.monotonic() < deadline:
            time.sleep(0.05)
        cloud.wait_hooks()
        assert [r["name"] for r in running] == [name]
        assert cloud.instances[name]["status"] == "RUNNING"
    finally:
        server.stop()


def test_bootstrap_reads_are_served_and_anything_else_is_recorded_and_refused(cloud):
    crm, iam = client(cloud, "cloudresourcemanager"), client(cloud, "iam")
    assert crm.projects().get(projectId=FACTS.project).execute()["lifecycleState"] == "ACTIVE"
    email = FACTS.worker_service_account
    name = f"projects/{FACTS.project}/serviceAccounts/{email}"
    assert iam.projects().serviceAccounts().get(name=name).execute()["email"] == email
    subnet = FACTS.subnetwork.rsplit("/", 1)[1]
    got = client(cloud).subnetworks().get(project=FACTS.project, region=FACTS.region,
                                          subnetwork=subnet).execute()
    assert got["ipCidrRange"] == "10.10.0.0/20"
    with pytest.raises(HttpError) as missing:
        iam.projects().serviceAccounts().get(
            name=f"projects/{FACTS.project}/serviceAccounts/x@y.iam.gserviceaccount.com"
        ).execute()
    assert missing.value.resp.status == 404
    with pytest.raises(HttpError) as refused:
        client(cloud).projects().setCommonInstanceMetadata(
            project=FACTS.project, body={"items": []}).execute()
    assert refused.value.resp.status == 403
    assert cloud.methods() == [
        "cloudresourcemanager.projects.get", "iam.projects.serviceAccounts.get",
        "compute.subnetworks.get", "iam.projects.serviceAccounts.get",
        "compute.projects.setCommonInstanceMetadata",
    ]
    assert "compute.projects.setCommonInstanceMetadata" not in SERVED


def test_requests_without_the_token_are_refused(cloud):
    anonymous = discovery.build("compute", "v1", http=httplib2.Http(), cache_discovery=False,
                                client_options={"api_endpoint": cloud.server.endpoints["compute"]})
    with pytest.raises(HttpError) as refused:
        anonymous.instances().list(project=FACTS.project, zone=A).execute()
    assert refused.value.resp.status == 401
    assert error_of(refused.value)["status"] == "UNAUTHENTICATED"
    # A wrong token: the 401 makes google-auth try a refresh, which a bare token cannot do.
    with pytest.raises(RefreshError):
        client(cloud, token="ya29.other").instances().list(project=FACTS.project, zone=A).execute()
    assert [c.status for c in cloud.calls] == [401, 401]
    ok = client(cloud).instances().list(project=FACTS.project, zone=A).execute()
    assert "items" not in ok  # GCE leaves out an empty list


def test_ray_list_filter_is_evaluated_as_gce_does():
    ray = ("((labels.ray-node-type = worker)) AND ((status = PROVISIONING) OR (status = STAGING)"
           " OR (status = RUNNING)) AND (labels.ray-cluster-name = ray-gcp) AND "
           "(NOT labels.tpu_cores:*)")
    match = compile_filter(ray)
    node = {"status": "RUNNING",
            "labels": {"ray-node-type": "worker", "ray-cluster-name": "ray-gcp"}}
    assert match(node)
    assert not match({**node, "status": "STOPPING"})
    assert not match({**node, "labels": {**node["labels"], "tpu_cores": "8"}})
    assert not match({**node, "labels": {**node["labels"], "ray-cluster-name": "other"}})
    assert compile_filter('name = "a b"')({"name": "a b"})
    assert compile_filter("status != RUNNING -labels.x:*")({"status": "STAGING"})
    for bad in ("(status = RUNNING", "status RUNNING", "= x", "status = RUNNING)"):
        with pytest.raises(FilterError):
            compile_filter(bad)


def test_an_invalid_filter_is_googles_400(cloud):
    with pytest.raises(HttpError) as refused:
        client(cloud).instances().list(project=FACTS.project, zone=A,
                                       filter="(status = RUNNING").execute()
    assert refused.value.resp.status == 400
    assert "Invalid value for field 'filter'" in error_of(refused.value)["message"]


def test_a_preemption_armed_for_a_call_lands_just_before_it_once(cloud):
    """The race the e2e test needs: preempted between the autoscaler's list and its call."""
    gce = compute(cloud)
    spot = render_gcp(SPEC, FACTS)["available_node_types"]["cpu-worker"]["node_config"]
    names = [gce.create_instance(spot, LABELS, wait_for_operation=False)[1] for _ in range(2)]
    cloud.preempt_on_call(lambda method, params, body: method == "compute.instances.setLabels")
    [listed, other] = sorted(gce.list_instances(WORKERS), key=lambda n: n["name"] != names[0])
    with pytest.raises(HttpError) as lost:
        gce.set_labels(listed, {"ray-node-status": "waiting-for-ssh"}, wait_for_operation=False)
    assert lost.value.resp.status == 404 and names[0] not in cloud.instances
    gce.set_labels(other, {"ray-node-status": "waiting-for-ssh"}, wait_for_operation=False)
    assert cloud.instances[names[1]]["labels"]["ray-node-status"] == "waiting-for-ssh"
    assert [(c.method, c.status) for c in cloud.calls[-2:]] == [
        ("compute.instances.setLabels", 404), ("compute.instances.setLabels", 200)]
