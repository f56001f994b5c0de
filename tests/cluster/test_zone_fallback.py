"""Zone fallback of cluster.gcp_provider, through Ray's own autoscaler-facing methods.

Every test drives the provider Ray loads from the rendered config
(``_get_node_provider`` on the bootstrapped config, as both autoscalers and
``ray up`` do) and calls what the autoscaler calls: ``create_node`` (v1's
``BaseNodeLauncher``, v2's ``NodeProviderAdapter``), ``non_terminated_nodes``,
``node_tags``, ``set_node_tags``, ``internal_ip``, ``terminate_node(s)``. The
recording fake answers as Compute Engine does, zone by zone.
"""

from __future__ import annotations

import copy
import logging
import time

import pytest
from googleapiclient.errors import HttpError
from ray.autoscaler._private import commands
from ray.autoscaler._private.event_summarizer import EventSummarizer
from ray.autoscaler._private.node_launcher import BaseNodeLauncher
from ray.autoscaler._private.node_provider_availability_tracker import (
    NodeProviderAvailabilityTracker,
)
from ray.autoscaler._private.providers import _get_node_provider, _provider_instances
from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_NODE_NAME, TAG_RAY_USER_NODE_TYPE

from cluster import zones
from cluster.gcp_provider import BootstrapCheckError
from cluster.render import example_gcp_facts, render_gcp
from cluster.spec import ClusterSpec
from cluster.zones import ZonesExhaustedError, zone_error
from tests.cluster.fakes import http_error

FACTS = example_gcp_facts()
A, B, C = FACTS.zone, *FACTS.fallback_zones
MAX = 6


def exhausted_insert(*full: str, code: str = "ZONE_RESOURCE_POOL_EXHAUSTED"):
    """insert_fault: the zones in `full` refuse instances.insert (HTTP 503, GCE's body)."""

    def fault(zone: str, body: dict) -> Exception | None:
        if zone not in full:
            return None
        return http_error_with_reason(
            503,
            code,
            f"The zone 'projects/{FACTS.project}/zones/{zone}' does not have enough "
            "resources available to fulfill the request. Try a different zone, or try "
            "again later.",
        )

    return fault


def exhausted_operation(*full: str, code: str = "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"):
    """operation_fault: the insert is accepted, its zone operation ends in an error."""

    def fault(zone: str, body: dict) -> dict | None:
        if zone not in full:
            return None
        return {
            "errors": [
                {
                    "code": code,
                    "message": f"The zone 'projects/{FACTS.project}/zones/{zone}' does not "
                    "have enough resources available to fulfill the request.",
                }
            ]
        }

    return fault


def http_error_with_reason(status: int, reason: str, message: str) -> HttpError:
    import json

    import httplib2

    body = {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"domain": "global", "reason": reason, "message": message}],
        }
    }
    return HttpError(httplib2.Response({"status": status}), json.dumps(body).encode())


@pytest.fixture
def cfg(launcher_key) -> dict:
    spec = ClusterSpec.from_settings(
        max_workers=MAX, gpu_accelerator_type="nvidia-l4", gpu_accelerator_count=1,
        gpu_machine_type="g2-standard-4", gpu_max_workers=2,
    )
    cfg = render_gcp(spec, FACTS)
    cfg["auth"]["ssh_private_key"] = str(launcher_key)
    return cfg


def provider_of(cfg: dict):
    """The provider as `ray up` and the head's autoscaler load it (bootstrapped config)."""
    resolved = commands._bootstrap_config(copy.deepcopy(cfg), no_config_cache=True)
    _provider_instances.clear()
    return resolved, _get_node_provider(resolved["provider"], resolved["cluster_name"])


def v1_round(provider, resolved, count: int, node_type: str = "cpu-worker") -> None:
    """One v1 autoscaler launch (what StandardAutoscaler's NodeLauncher runs per round)."""
    BaseNodeLauncher(
        provider,
        _Pending(),
        EventSummarizer(),
        NodeProviderAvailabilityTracker(),
        node_types=resolved["available_node_types"],
    ).launch_node(resolved, count, node_type)


class _Pending:
    def inc(self, *a):
        pass

    def dec(self, *a):
        pass


def inserts(fake, zone: str | None = None) -> list:
    return [
        c
        for c in fake.calls
        if c.method == "instances.insert" and (zone is None or c.kwargs["zone"] == zone)
    ]


# ---- the must-show: a full burst lands in the next zone in the same round ------------


@pytest.mark.parametrize("where", ["insert", "operation"])
def test_burst_moves_to_the_next_zone_in_the_same_round(fake_gcp, cfg, where, caplog):
    if where == "insert":
        fake_gcp.insert_fault = exhausted_insert(A)
    else:
        fake_gcp.operation_fault = exhausted_operation(A)
    resolved, provider = provider_of(cfg)
    fake_gcp.calls.clear()
    with caplog.at_level(logging.WARNING, logger=zones.__name__):
        v1_round(provider, resolved, MAX)  # one autoscaler round asks for max_workers
    # Insert errors stop the zone at its first refusal; operation errors are
    # only seen after the whole zone's batch went out.
    assert len(inserts(fake_gcp, A)) == (1 if where == "insert" else MAX)
    assert len(inserts(fake_gcp, B)) == MAX
    assert inserts(fake_gcp, C) == []
    workers = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: "worker"})
    assert len(workers) == MAX
    assert {fake_gcp.zone_of(n) for n in workers} == {B}
    for node in workers:
        assert provider.node_tags(node)[TAG_RAY_USER_NODE_TYPE] == "cpu-worker"
        assert provider.internal_ip(node).startswith("10.0.0.")
    # Every zonal URL of the body names the zone it was created in.
    body = inserts(fake_gcp, B)[0].kwargs["body"]
    assert body["machineType"] == f"zones/{B}/machineTypes/n2-standard-4"
    assert body["disks"][0]["initializeParams"]["diskType"] == f"zones/{B}/diskTypes/pd-balanced"
    # One line per event, naming the zone, the reason, the cool-down and the next zone.
    lines = [r.getMessage() for r in caplog.records if r.name == zones.__name__]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"zone {A}: ZONE_RESOURCE_POOL_EXHAUSTED")
    assert "skipping it for 300s" in lines[0] and f"trying {B} for the remaining" in lines[0]


def test_v2_adapter_burst_lands_in_the_next_zone(fake_gcp, cfg, tmp_path):
    import yaml
    from ray.autoscaler.v2.instance_manager.config import FileConfigReader
    from ray.autoscaler.v2.instance_manager.node_provider import NodeProviderAdapter

    fake_gcp.insert_fault = exhausted_insert(A)
    resolved, provider = provider_of(cfg)
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(resolved))
    adapter = NodeProviderAdapter(
        v1_provider=provider, config_reader=FileConfigReader(str(path), skip_content_hash=True)
    )
    fake_gcp.calls.clear()
    adapter.launch({"cpu-worker": MAX}, request_id="burst-1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(fake_gcp.instances) < MAX:
        time.sleep(0.05)
    time.sleep(0.2)
    assert adapter.poll_errors() == []
    nodes = adapter.get_non_terminated()
    assert len(nodes) == MAX
    assert {fake_gcp.zone_of(n) for n in nodes} == {B}


# ---- errors another zone cannot fix ---------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        http_error(403, "Required 'compute.instances.create' permission for 'projects/p'"),
        http_error(400, "Invalid value for field 'resource.machineType': 'n2-bogus-4'"),
    ],
    ids=["permission-denied", "bad-request"],
)
def test_errors_another_zone_cannot_fix_surface_at_once(fake_gcp, cfg, error):
    fake_gcp.insert_fault = lambda zone, body: error
    resolved, provider = provider_of(cfg)
    fake_gcp.calls.clear()
    with pytest.raises(HttpError) as raised:
        provider.create_node(
            resolved["available_node_types"]["cpu-worker"]["node_config"],
            {TAG_RAY_NODE_NAME: "ray-ray-gcp-worker", TAG_RAY_NODE_KIND: "worker"},
            3,
        )
    assert raised.value is error
    assert [c.kwargs["zone"] for c in inserts(fake_gcp)] == [A]
    assert provider.placement.cooling() == []


def test_a_gpu_type_missing_in_a_zone_skips_that_zone(fake_gcp, cfg):
    def no_l4_in_a(zone: str, body: dict):
        accels = body.get("guestAccelerators") or []
        if zone == A and accels:
            return http_error(
                404,
                f"The resource 'projects/{FACTS.project}/zones/{A}/acceleratorTypes/"
                "nvidia-l4' was not found",
            )
        return None

    fake_gcp.insert_fault = no_l4_in_a
    resolved, provider = provider_of(cfg)
    fake_gcp.calls.clear()
    v1_round(provider, resolved, 2, node_type="gpu-worker")
    (gpu_a,) = inserts(fake_gcp, A)
    assert gpu_a.kwargs["body"]["guestAccelerators"][0]["acceleratorType"].endswith(
        f"zones/{A}/acceleratorTypes/nvidia-l4"
    )
    made = inserts(fake_gcp, B)
    assert len(made) == 2
    for call in made:
        acc = call.kwargs["body"]["guestAccelerators"][0]["acceleratorType"]
        assert acc == f"projects/{FACTS.project}/zones/{B}/acceleratorTypes/nvidia-l4"
    # The zone is skipped for the GPU type's sake; a CPU worker would go there
    # again after the cool-down (the cool-down is per zone, as GCE's answer is).
    assert provider.placement.cooling() == [A]


# ---- all zones exhausted, cool-downs, the next round ------------------------------------


def test_all_zones_exhausted_gives_one_error_and_the_next_round_retries(fake_gcp, cfg, caplog):
    full = {A, B, C}
    fake_gcp.insert_fault = lambda zone, body: exhausted_insert(*full)(zone, body)
    resolved, provider = provider_of(cfg)
    node_config = resolved["available_node_types"]["cpu-worker"]["node_config"]
    tags = {TAG_RAY_NODE_NAME: "ray-ray-gcp-worker", TAG_RAY_NODE_KIND: "worker"}
    fake_gcp.calls.clear()
    with pytest.raises(ZonesExhaustedError) as raised:
        provider.create_node(node_config, tags, 2)
    msg = str(raised.value)
    assert msg.startswith("no zone could create any of 2 node(s)")
    for z in (A, B, C):
        assert f"{z}: ZONE_RESOURCE_POOL_EXHAUSTED" in msg
    assert [c.kwargs["zone"] for c in inserts(fake_gcp)] == [A, B, C]
    assert provider.placement.cooling() == [A, B, C]
    # v1's launcher logs it and the next round asks again (all zones cooling:
    # every zone is asked, in order); capacity came back in B.
    full.discard(B)
    fake_gcp.calls.clear()
    v1_round(provider, resolved, 2)
    assert [c.kwargs["zone"] for c in inserts(fake_gcp)] == [A, B, B]
    assert len(provider.non_terminated_nodes({TAG_RAY_NODE_KIND: "worker"})) == 2


def test_cooldown_skips_a_zone_then_returns_to_it(fake_gcp, cfg):
    full = {A}
    fake_gcp.insert_fault = lambda zone, body: exhausted_insert(*full)(zone, body)
    resolved, provider = provider_of(cfg)
    now = [1000.0]
    provider.placement.clock = lambda: now[0]
    node_config = resolved["available_node_types"]["cpu-worker"]["node_config"]
    tags = {TAG_RAY_NODE_NAME: "ray-ray-gcp-worker", TAG_RAY_NODE_KIND: "worker"}

    fake_gcp.calls.clear()
    provider.create_node(node_config, tags, 1)
    assert [c.kwargs["zone"] for c in inserts(fake_gcp)] == [A, B]
    full.clear()  # A has room again, but is still cooling down
    now[0] += 299
    fake_gcp.calls.clear()
    provider.create_node(node_config, tags, 1)
    assert [c.kwargs["zone"] for c in inserts(fake_gcp)] == [B]
    now[0] += 2  # 301 s after the refusal
    fake_gcp.calls.clear()
    provider.create_node(node_config, tags, 1)
    assert [c.kwargs["zone"] for c in inserts(fake_gcp)] == [A]
    assert provider.placement.cooling() == []


# ---- nodes in two zones: list, tag, terminate, `ray down` ------------------------------


def test_nodes_in_two_zones_are_listed_tagged_and_deleted_in_their_zone(fake_gcp, cfg):
    # A takes two nodes, then runs out; the other two go to B.
    taken = []

    def two_fit_in_a(zone: str, body: dict):
        if zone == A:
            taken.append(body["name"])
            if len(taken) > 2:
                return exhausted_insert(A)(zone, body)
        return None

    fake_gcp.insert_fault = two_fit_in_a
    resolved, provider = provider_of(cfg)
    v1_round(provider, resolved, 4)
    workers = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: "worker"})
    by_zone = {z: sorted(n for n in workers if fake_gcp.zone_of(n) == z) for z in (A, B)}
    assert [len(by_zone[A]), len(by_zone[B])] == [2, 2]
    # Listing asks every configured zone.
    lists = [c.kwargs["zone"] for c in fake_gcp.calls if c.method == "instances.list"]
    assert lists[-3:] == [A, B, C]

    fake_gcp.calls.clear()
    for node in workers:
        provider.set_node_tags(node, {"ray-node-status": "up-to-date"})
    provider.non_terminated_nodes({})  # the autoscaler's next round refreshes the cache
    for node in workers:
        assert provider.node_tags(node)["ray-node-status"] == "up-to-date"
    set_labels = {c.kwargs["instance"]: c.kwargs["zone"] for c in fake_gcp.calls
                  if c.method == "instances.setLabels"}
    assert set_labels == {n: fake_gcp.zone_of(n) for n in workers}
    polls = [c for c in fake_gcp.calls if c.method == "zoneOperations.get"]
    assert {c.kwargs["zone"] for c in polls} == {A, B}  # no 404 from a wrong zone

    # The autoscaler terminates one node of each zone...
    fake_gcp.calls.clear()
    provider.terminate_node(by_zone[A][0])
    provider.terminate_node(by_zone[B][0])
    deletes = [(c.kwargs["instance"], c.kwargs["zone"]) for c in fake_gcp.calls
               if c.method == "instances.delete"]
    assert deletes == [(by_zone[A][0], A), (by_zone[B][0], B)]
    # ...and `ray down`, a fresh process with a fresh provider, finds the rest.
    _provider_instances.clear()
    fresh = _get_node_provider(resolved["provider"], resolved["cluster_name"])
    left = fresh.non_terminated_nodes({})
    assert sorted(left) == sorted([by_zone[A][1], by_zone[B][1]])
    fresh.terminate_nodes(left)
    assert fake_gcp.instances == {}


def test_a_fresh_provider_finds_a_node_it_never_listed(fake_gcp, cfg):
    """`ray down`/`ray attach` may address a node by name before any list."""
    fake_gcp.insert_fault = exhausted_insert(A)
    resolved, provider = provider_of(cfg)
    v1_round(provider, resolved, 1)
    (node,) = fake_gcp.instances
    _provider_instances.clear()
    fresh = _get_node_provider(resolved["provider"], resolved["cluster_name"])
    fake_gcp.calls.clear()
    fresh.terminate_node(node)
    assert [(c.method, c.kwargs["zone"]) for c in fake_gcp.calls][-2:] == [
        ("instances.delete", B),
        ("zoneOperations.get", B),
    ]
    assert fake_gcp.instances == {}


# ---- the head, fallback off, the setting's checks ----------------------------------------


def test_the_head_follows_the_same_rule(fake_gcp, cfg):
    """`ray up` creates the head with provider.create_node (commands.get_or_create_head_node)."""
    fake_gcp.operation_fault = exhausted_operation(A)
    resolved, provider = provider_of(cfg)
    head = resolved["available_node_types"]["head"]["node_config"]
    provider.create_node(head, {TAG_RAY_NODE_NAME: "ray-ray-gcp-head", TAG_RAY_NODE_KIND: "head"}, 1)
    (name,) = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: "head"})
    assert fake_gcp.zone_of(name) == B
    assert provider.internal_ip(name).startswith("10.0.0.")


def test_an_empty_fallback_list_turns_fallback_off(fake_gcp, cfg):
    cfg["provider"]["fallback_zones"] = []
    fake_gcp.insert_fault = exhausted_insert(A)
    resolved, provider = provider_of(cfg)
    fake_gcp.calls.clear()
    with pytest.raises(ZonesExhaustedError, match=f"Tried {A};"):
        provider.create_node(
            resolved["available_node_types"]["cpu-worker"]["node_config"],
            {TAG_RAY_NODE_NAME: "ray-ray-gcp-worker", TAG_RAY_NODE_KIND: "worker"},
            2,
        )
    assert [c.kwargs["zone"] for c in inserts(fake_gcp)] == [A]
    assert {c.kwargs["zone"] for c in fake_gcp.calls if c.method == "instances.list"} <= {A}


@pytest.mark.parametrize(
    ("zones_", "needle"),
    [
        (["us-central1-b"], "provider zone 'us-central1-b' is not in region 'asia-northeast3'"),
        ([B, B], "list a zone twice"),
        ([A], "list a zone twice"),
        ("asia-northeast3-b", "must be a list of zone names"),
    ],
)
def test_bootstrap_refuses_bad_fallback_zones(fake_gcp, cfg, zones_, needle):
    cfg["provider"]["fallback_zones"] = zones_
    with pytest.raises(BootstrapCheckError, match=needle.replace("(", r"\(")):
        commands._bootstrap_config(copy.deepcopy(cfg), no_config_cache=True)
    assert fake_gcp.calls == []


# ---- the classifier on Compute Engine's own error shapes ---------------------------------


@pytest.mark.parametrize(
    ("error", "moves"),
    [
        (http_error_with_reason(503, "ZONE_RESOURCE_POOL_EXHAUSTED", "no room"), True),
        (http_error_with_reason(403, "quotaExceeded", "Quota 'NVIDIA_L4_GPUS' exceeded."), True),
        (Exception({"errors": [{"code": "QUOTA_EXCEEDED", "message": "Quota 'CPUS' exceeded"}]}), True),
        (Exception({"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "message": "x"}]}), True),
        (http_error(400, "Accelerator type nvidia-h100-80gb is not available in zone asia-northeast3-c"), True),
        (http_error(404, "The resource 'projects/p/zones/asia-northeast3-a/machineTypes/a3-highgpu-8g' was not found"), True),
        (http_error_with_reason(403, "forbidden", "Required 'compute.instances.create' permission"), False),
        (http_error(404, "The resource 'projects/p/global/images/debian-12-x' was not found"), False),
        (http_error(400, "Invalid value for field 'resource.name'"), False),
        (Exception({"errors": [{"code": "RESOURCE_NOT_FOUND", "message": "subnetwork gone"}]}), False),
    ],
)
def test_which_errors_move_to_another_zone(error, moves):
    assert (zone_error(error) is not None) is moves
