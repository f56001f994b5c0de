"""cluster.local_provider without starting Ray: zones and the over-launch guard.

``_create_node_with_resources_and_labels`` (which starts a raylet; ours is
Ray's minus the log monitor) is replaced by a recorder; everything else is the provider as the local
autoscaler loads it from ``render_local``.
"""

from __future__ import annotations

import threading
import time

import pytest
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    TAG_RAY_NODE_KIND,
    TAG_RAY_USER_NODE_TYPE,
)

from cluster import local_provider
from cluster.local_provider import ZONE_LABEL, LocalZonalNodeProvider
from cluster.render import render_local
from cluster.spec import local_default_spec
from cluster.zones import ZonesExhaustedError

TAGS = {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: "cpu-worker"}


@pytest.fixture
def started(monkeypatch) -> list[dict]:
    """Every fake node 'started' (instead of a raylet process), with its labels."""
    monkeypatch.setenv("RAY_FAKE_CLUSTER", "1")
    out: list[dict] = []

    def record(self, node_config, tags, count, resources, labels):
        node_id = self._next_hex_node_id()
        self._nodes[node_id] = {"tags": {**tags, "ray-node-name": node_id}, "node": None}
        out.append({"id": node_id, "labels": dict(labels)})

    # Our override (no log monitor per fake node) is the one the provider calls.
    monkeypatch.setattr(
        local_provider.LocalNodeProvider, "_create_node_with_resources_and_labels", record
    )
    return out


def provider(full_zones=()) -> LocalZonalNodeProvider:
    cfg = render_local(local_default_spec(), gcs_port=6379, full_zones=full_zones)
    return LocalZonalNodeProvider(cfg["provider"], cfg["cluster_name"])


def create_in_thread(p, count: int) -> threading.Thread:
    t = threading.Thread(
        target=p.create_node_with_resources_and_labels,
        args=({}, TAGS, count, {"CPU": 2}, {}),
        daemon=True,
    )
    t.start()
    return t


def test_a_full_zone_sends_the_batch_to_the_next_zone(started):
    p = provider(full_zones=("local-a",))
    t = create_in_thread(p, 3)
    time.sleep(0.1)
    p.non_terminated_nodes({})  # lets the create return (see the next test)
    t.join(5)
    assert not t.is_alive()
    assert [n["labels"][ZONE_LABEL] for n in started] == ["local-b"] * 3
    workers = p.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER})
    assert {p.node_tags(n)[ZONE_LABEL] for n in workers} == {"local-b"}
    assert p.placement.cooling() == ["local-a"]


def test_every_zone_full_raises_one_error(started):
    p = provider(full_zones=("local-a", "local-b"))
    with pytest.raises(ZonesExhaustedError, match="local-a: ZONE_RESOURCE_POOL_EXHAUSTED.*local-b"):
        p.create_node_with_resources_and_labels({}, TAGS, 2, {"CPU": 2}, {})
    assert started == []


def test_a_worker_create_returns_only_after_a_later_node_list(started):
    """v1 forgets a launch once create_node returns: a list must include it by then."""
    p = provider()
    t = create_in_thread(p, 2)
    deadline = time.monotonic() + 5
    while len(started) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert len(started) == 2
    assert t.is_alive()  # created, but no list has seen them yet
    listed = p.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER})
    t.join(5)
    assert not t.is_alive()
    assert sorted(listed) == sorted(n["id"] for n in started)


def test_without_any_list_the_create_still_returns(started, monkeypatch):
    monkeypatch.setattr(local_provider, "SETTLE_TIMEOUT_S", 0.2)
    p = provider()
    p.create_node_with_resources_and_labels({}, TAGS, 1, {"CPU": 2}, {})
    assert len(started) == 1
