"""Ray's ``GCPCompute`` over several zones: the zone fallback of ``cluster.gcp_provider``.

``availability_zone`` is the preferred zone and ``fallback_zones`` (optional,
ordered) the others. A create goes to the first zone not cooling down; when
``instances.insert`` or its zone operation answers a capacity or availability
error (``cluster.zones.zone_error``) the rest of the request goes to the next
zone and the exhausted one is skipped for a cool-down (``cluster.zones.ZonePlacement``).
Every call that addresses a node (list, get, setLabels, delete) goes to the
node's own zone. The GCP methods stay Ray's, once per zone where Ray made one
call.
"""

from __future__ import annotations

import copy
from typing import Any

from googleapiclient import errors
from ray.autoscaler._private.gcp.node import GCPCompute

from cluster.zones import ZonePlacement, rezone, zone_error


def http_status(e: errors.HttpError) -> int:
    return int(getattr(e.resp, "status", 0) or 0)


class ZonalGCPCompute(GCPCompute):
    """Ray's GCPCompute over several zones: creates in the first zone with room,
    finds every node in its own zone.

    Each zone is served by an unchanged ``GCPCompute`` of Ray's (its insert,
    get, setLabels, delete and zoneOperations.get calls, with that zone); this
    class only decides which zone a call goes to. ``availability_zone`` stays
    the preferred zone.
    """

    def __init__(
        self,
        resource: Any,
        project_id: str,
        placement: ZonePlacement,
        cluster_name: str,
    ) -> None:
        super().__init__(resource, project_id, placement.zones[0], cluster_name)
        self.placement = placement
        self.per_zone = {
            z: GCPCompute(resource, project_id, z, cluster_name) for z in placement.zones
        }
        # node name -> zone, learnt from creates and lists (GCE's own `zone`
        # field wins when a node dict carries it).
        self._zone_of: dict[str, str] = {}

    # ---- where a node lives --------------------------------------------------

    def _zone_for(self, node_id: str, node: dict | None = None) -> str:
        if node is not None and node.get("zone"):
            return str(node["zone"]).rsplit("/", 1)[-1]
        if node_id in self._zone_of:
            return self._zone_of[node_id]
        # Unknown (e.g. `ray down` from a fresh process): ask each zone.
        for zone, compute in self.per_zone.items():
            try:
                compute.get_instance(node_id)
            except errors.HttpError as e:
                if http_status(e) == 404:
                    continue
                raise
            self._zone_of[node_id] = zone
            return zone
        return self.availability_zone  # not anywhere: Ray's own 404 handling applies

    def _compute_for(self, node_id: str, node: dict | None = None) -> GCPCompute:
        return self.per_zone.get(self._zone_for(node_id, node), self)

    # ---- GCPResource, routed by zone -------------------------------------------

    def wait_for_operation(self, operation: dict, *args: Any, **kwargs: Any) -> dict:
        zone = str(operation.get("zone") or self.availability_zone).rsplit("/", 1)[-1]
        return GCPCompute.wait_for_operation(self.per_zone.get(zone, self), operation, *args, **kwargs)

    def list_instances(self, label_filters=None, is_terminated=False):
        nodes = []
        for zone, compute in self.per_zone.items():
            for node in compute.list_instances(label_filters, is_terminated):
                self._zone_of[node["name"]] = zone
                nodes.append(node)
        return nodes

    def get_instance(self, node_id: str):
        return self._compute_for(node_id).get_instance(node_id)

    def set_labels(self, node, labels: dict, wait_for_operation: bool = True) -> dict:
        compute = self._compute_for(node["name"], node)
        if not node.get("labelFingerprint"):
            # A node whose labels we updated in place (ReadOnlyGCPNodeProvider.set_node_tags)
            # no longer knows GCE's fingerprint: read it, never send a stale one.
            node = compute.get_instance(node["name"])
        return compute.set_labels(node, labels, wait_for_operation=wait_for_operation)

    def delete_instance(self, node_id: str, wait_for_operation: bool = True) -> dict:
        result = self._compute_for(node_id).delete_instance(
            node_id, wait_for_operation=wait_for_operation
        )
        self._zone_of.pop(node_id, None)
        return result

    def stop_instance(self, node_id: str, wait_for_operation: bool = True) -> dict:
        return self._compute_for(node_id).stop_instance(
            node_id, wait_for_operation=wait_for_operation
        )

    def start_instance(self, node_id: str, wait_for_operation: bool = True) -> dict:
        return self._compute_for(node_id).start_instance(
            node_id, wait_for_operation=wait_for_operation
        )

    def create_instance(self, base_config: dict, labels: dict, wait_for_operation: bool = True):
        return self.create_instances(base_config, labels, 1, wait_for_operation)[0]

    def create_instances(
        self, base_config: dict, labels: dict, count: int, wait_for_operation: bool = True
    ) -> list[tuple[dict, str]]:
        """All inserts of a zone go out before waiting on any (as Ray's own
        create_instances); what a zone could not take goes to the next zone."""

        def launch(zone: str, n: int) -> tuple[list[tuple[dict, str]], str | None]:
            compute = self.per_zone[zone]
            node_config = zonal_node_config(base_config, zone)
            issued: list[tuple[dict, str]] = []
            reason = None
            for _ in range(n):
                try:
                    operation, name = compute.create_instance(
                        node_config, labels, wait_for_operation=False
                    )
                except errors.HttpError as e:
                    reason = zone_error(e)
                    if reason is None:
                        raise
                    break
                self._zone_of[name] = zone
                issued.append((operation, name))
            if not wait_for_operation:
                return issued, reason
            done: list[tuple[dict, str]] = []
            for operation, name in issued:
                try:
                    done.append((compute.wait_for_operation(operation), name))
                except Exception as e:  # Ray raises a bare Exception(operation["error"])
                    why = zone_error(e)
                    if why is None:
                        raise
                    self._zone_of.pop(name, None)  # a failed insert leaves no VM
                    reason = reason or why
            return done, reason

        return self.placement.place(count, launch)


# node_config fields that carry a zone (Ray expands bare machine and
# accelerator type names itself, with the zone it is given).
def zonal_node_config(node_config: dict[str, Any], zone: str) -> dict[str, Any]:
    """``node_config`` with every zonal URL (machine, disk, accelerator types) moved to ``zone``."""
    cfg = copy.deepcopy(node_config)
    if isinstance(cfg.get("machineType"), str):
        cfg["machineType"] = rezone(cfg["machineType"], zone)
    for disk in cfg.get("disks") or []:
        params = disk.get("initializeParams") or {}
        if isinstance(params.get("diskType"), str):
            params["diskType"] = rezone(params["diskType"], zone)
    for acc in cfg.get("guestAccelerators") or []:
        if isinstance(acc.get("acceleratorType"), str):
            acc["acceleratorType"] = rezone(acc["acceleratorType"], zone)
    return cfg


def provider_zones(provider_config: dict[str, Any]) -> list[str]:
    """The preferred zone, then ``fallback_zones`` in order."""
    return [provider_config["availability_zone"], *(provider_config.get("fallback_zones") or [])]
