"""cluster.local_provider without starting Ray: zones and the over-launch guard.

``_create_node_with_resources_and_labels`` (which starts a raylet; ours is
Ray's minus the log monitor) is replaced by a recorder; everything else is the provider as the local
autoscaler loads it from ``render_local``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    TAG_RAY_NODE_KIND,
    TAG_RAY_USER_NODE_TYPE,
)

from cluster import local_provider
from cluster.local import read_launch_ledger
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
        ledger = self._ledger_path and read_launch_ledger(Path(self._ledger_path))
        out.append({"id": node_id, "labels": dict(labels), "ledger": ledger})

    # Our override (no log monitor per fake node) is the one the provider calls.
    monkeypatch.setattr(
        local_provider.LocalNodeProvider, "_create_node_with_resources_and_labels", record
    )
    return out


def provider(full_zones=(), ledger: Path | None = None) -> LocalZonalNodeProvider:
    cfg = render_local(local_default_spec(), gcs_port=6379, full_zones=full_zones,
                       launch_ledger=str(ledger) if ledger else None)
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


def _wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_the_ledger_holds_each_node_until_just_before_its_processes_start(started, tmp_path):
    """What LocalCluster.status() counts as launching before a node's raylet runs."""
    ledger = tmp_path / "launches.json"
    p = provider(ledger=ledger)
    assert read_launch_ledger(ledger) == {}
    with p.lock:  # another batch holds the provider: this one waits, all 3 not started
        t = create_in_thread(p, 3)
        _wait_for(lambda: read_launch_ledger(ledger) == {"cpu-worker": 3})
        assert started == []
    _wait_for(lambda: len(started) == 3)
    # Each node left the ledger before it was started (never in both).
    assert [n["ledger"] for n in started] == [{"cpu-worker": 2}, {"cpu-worker": 1}, {}]
    assert t.is_alive()  # still counted by v1 as pending until a later list ...
    assert read_launch_ledger(ledger) == {}  # ... but no longer in the ledger
    p.non_terminated_nodes({})
    t.join(5)
    # A restarted monitor's provider starts from an empty ledger.
    ledger.write_text('{"not_started": {"cpu-worker": 2}}')
    provider(ledger=ledger)
    assert read_launch_ledger(ledger) == {}


def test_a_failed_batch_leaves_the_ledger(started, tmp_path):
    ledger = tmp_path / "launches.json"
    p = provider(full_zones=("local-a", "local-b"), ledger=ledger)
    with pytest.raises(ZonesExhaustedError):
        p.create_node_with_resources_and_labels({}, TAGS, 2, {"CPU": 2}, {})
    assert read_launch_ledger(ledger) == {}
