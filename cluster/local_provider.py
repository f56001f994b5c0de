"""The node provider of the local fake cluster: Ray's FakeMultiNodeProvider with zones.

``LocalZonalNodeProvider`` is what ``render_local`` names (through Ray's
``external`` provider hook). It changes two things of Ray's fake provider:

* **Zones.** Nodes are placed by the same ``cluster.zones.ZonePlacement`` the
  GCP provider uses: ``availability_zone`` first, then ``fallback_zones``. A
  zone listed in ``full_zones`` answers every create with
  ZONE_RESOURCE_POOL_EXHAUSTED, like a stocked-out GCE zone, so the real
  autoscaler (v1 and v2) can be watched falling back. Each node carries its
  zone as the Ray node label ``ray-gcp-zone`` (visible in ``ray.nodes()``).
* **No over-launch** (a race in Ray's autoscaler v1, worked around here).
  ``StandardAutoscaler._update`` lists the nodes first and reads its
  pending-launch counter later; the launcher thread decrements that counter
  as soon as ``create_node`` returns. A batch that finishes between the two
  is in neither, and v1 launches it again, past max_workers (then removes the
  surplus as ``max_workers_per_type``). Ray's fake provider widens the window:
  it takes its lock per node, so a list can see half a batch. This provider
  takes the lock for the whole batch (as Ray's GCPNodeProvider does) and
  returns from a worker create only after a node list that started after the
  batch was done has finished, so a finished launch is always either pending
  or listed. (That costs the launcher one autoscaler round; autoscaler v2,
  which counts launches as instances, is not affected either way.)
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import NODE_KIND_WORKER, TAG_RAY_NODE_KIND

from cluster.zones import DEFAULT_COOLDOWN_S, ZonePlacement, zone_error

logger = logging.getLogger(__name__)

ZONE_LABEL = "ray-gcp-zone"
DEFAULT_LOCAL_ZONE = "local-a"
# Longest a worker create waits for the autoscaler's next node list (rounds
# are AUTOSCALER_UPDATE_INTERVAL_S = 1 s apart on the local cluster).
SETTLE_TIMEOUT_S = 30.0


class ZoneExhausted(Exception):
    """What a full local zone raises (the shape of a GCE zone operation error)."""

    def __init__(self, zone: str):
        super().__init__(
            {
                "errors": [
                    {
                        "code": "ZONE_RESOURCE_POOL_EXHAUSTED",
                        "message": f"The zone '{zone}' does not have enough resources "
                        "available to fulfill the request (local cluster: full_zones)",
                    }
                ]
            }
        )


class LocalZonalNodeProvider(FakeMultiNodeProvider):
    def __init__(self, provider_config: dict[str, Any], cluster_name: str):
        super().__init__(provider_config, cluster_name)
        zones = [
            provider_config.get("availability_zone", DEFAULT_LOCAL_ZONE),
            *(provider_config.get("fallback_zones") or []),
        ]
        self.full_zones = frozenset(provider_config.get("full_zones") or [])
        self.placement = ZonePlacement(
            zones, cooldown_s=float(provider_config.get("zone_cooldown_s", DEFAULT_COOLDOWN_S))
        )
        # Node lists started / the latest started one that has finished.
        self._lists = threading.Condition()
        self._lists_started = 0
        self._latest_list_done = 0

    def non_terminated_nodes(self, tag_filters):
        with self._lists:
            self._lists_started += 1
            mine = self._lists_started
        try:
            return super().non_terminated_nodes(tag_filters)
        finally:
            with self._lists:
                self._latest_list_done = max(self._latest_list_done, mine)
                self._lists.notify_all()

    def _wait_for_a_later_list(self) -> None:
        with self._lists:
            after = self._lists_started
            if not self._lists.wait_for(
                lambda: self._latest_list_done > after, timeout=SETTLE_TIMEOUT_S
            ):
                logger.warning("no node list within %.0fs after a launch", SETTLE_TIMEOUT_S)

    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        with self.lock:  # the whole batch (see the module docstring)
            if self._creation_error:
                raise self._creation_error

            def launch(zone: str, n: int) -> tuple[list[str], str | None]:
                if zone in self.full_zones:
                    return [], zone_error(ZoneExhausted(zone))
                made = []
                for _ in range(n):
                    before = set(self._nodes)
                    self._create_node_with_resources_and_labels(
                        node_config, tags, 1, resources, {**(labels or {}), ZONE_LABEL: zone}
                    )
                    (node_id,) = set(self._nodes) - before
                    self._nodes[node_id]["tags"][ZONE_LABEL] = zone
                    made.append(node_id)
                return made, None

            created = self.placement.place(count, launch)
            logger.info("created %d node(s): %s", len(created), ", ".join(created))
        if tags.get(TAG_RAY_NODE_KIND) == NODE_KIND_WORKER:
            self._wait_for_a_later_list()  # outside the lock: the list needs it
