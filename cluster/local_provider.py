"""The node provider of the local fake cluster: Ray's FakeMultiNodeProvider with zones.

``LocalZonalNodeProvider`` is what ``render_local`` names (through Ray's
``external`` provider hook). It changes five things of Ray's fake provider:

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
* **A launch ledger** (``launch_ledger`` in the provider config, a JSON file
  that ``LocalCluster.status()`` reads). Ray's reports cannot say which nodes
  are still launching: v1 counts a whole batch in ``pendingLaunches`` until
  its create call returns, which here is after the batch's last node and one
  more node list (see above), so nodes of the batch that are already up were
  counted as alive *and* launching ("3 alive, 3 launching" with at most 3).
  The provider knows: the ledger holds, per node type, the nodes asked of
  it whose processes it has not started yet, and drops each one just before
  starting it. A node is then launching while it is in the ledger or while
  its raylet runs and GCS does not know it yet, and alive once GCS does.
* **A Ray directory per node, like a disk per VM** (``LocalNodeProvider``).
  With ``node_temp_root`` set (``LocalCluster`` always sets it) each fake
  node gets its own temp dir, ``<root>/n<5-digit id>``, so its session
  directory and logs are its own, and it runs its own log monitor on them,
  as on GCP. (Nodes sharing the head's session directory, Ray's default,
  had to run without log monitors: each one tailed every node's files and
  the driver printed every autoscaler event once per node.) Its
  ``runtime_resources`` is its own too: a node unpacks a job's working_dir
  there, and the first time a node needs a package it deletes and re-unpacks
  it (Ray's ``WorkingDirPlugin.create``: ``overwrite=True``); in a shared
  session dir, a node that joined mid-job wiped the folder that other nodes'
  workers were running in (seen: a numba task failing in ``os.getcwd()`` with
  ``FileNotFoundError``).
* **A log shipper per node**, with ``log_shipping`` set: the same
  ``cluster.logship`` as on a VM, as a child of the node (it carries the
  node's id, so ``LocalCluster.kill_worker_node`` kills it with the node,
  like a vanished VM), and SIGTERMed after the node's processes when the
  autoscaler removes the node, like a VM's shutdown.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import ray
from ray._common.network_utils import build_address
from ray._private import ray_constants
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from cluster.render import LAUNCH_LEDGER_KEY
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


def node_temp_dir(root: str, node_id: str) -> str:
    """A fake node's own Ray temp dir (short: unix socket paths must stay < 108 bytes)."""
    return os.path.join(root, f"n{node_id[-5:]}")


def node_log_name(node_type: str, node_id: str) -> str:
    """A fake node's name in the shipped logs (a VM's is its instance name)."""
    return f"local-{node_type}-{node_id[-5:]}"


class LocalNodeProvider(FakeMultiNodeProvider):
    """FakeMultiNodeProvider whose worker nodes have their own Ray directory and,
    if configured, their own log shipper (see the module doc)."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str):
        super().__init__(provider_config, cluster_name)
        self.node_temp_root = provider_config.get("node_temp_root")
        self.log_shipping = provider_config.get("log_shipping")
        self.cluster_name = cluster_name

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        # Ray 2.60.0's method, verbatim except temp_dir and include_log_monitor (a
        # directory and a log monitor per node) and the shipper (Ray is pinned exactly).
        resources = copy.deepcopy(resources)
        with self.lock:
            node_type = tags[TAG_RAY_USER_NODE_TYPE]
            next_id = self._next_hex_node_id()
            gcs = self._gcs_address or build_address(
                ray._private.services.get_node_ip_address(), 6379
            )
            ray_params = ray._private.parameter.RayParams(
                min_worker_port=0,
                max_worker_port=0,
                dashboard_port=None,
                dashboard_agent_listen_port=0,
                num_cpus=resources.pop("CPU", 0),
                num_gpus=resources.pop("GPU", 0),
                object_store_memory=resources.pop("object_store_memory", None),
                resources=resources,
                labels=labels,
                redis_address=gcs,
                gcs_address=gcs,
                temp_dir=node_temp_dir(self.node_temp_root, next_id) if self.node_temp_root
                else None,
                include_log_monitor=bool(self.node_temp_root),
                env_vars={
                    "RAY_OVERRIDE_NODE_ID_FOR_TESTING": next_id,
                    "RAY_CLOUD_INSTANCE_ID": next_id,
                    "RAY_NODE_TYPE_NAME": node_type,
                    ray_constants.RESOURCES_ENVIRONMENT_VARIABLE: json.dumps(resources),
                    ray_constants.LABELS_ENVIRONMENT_VARIABLE: json.dumps(labels),
                },
            )
            node = ray._private.node.Node(
                ray_params, head=False, shutdown_at_exit=False, spawn_reaper=False
            )
            all_tags = {
                TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
                TAG_RAY_USER_NODE_TYPE: node_type,
                TAG_RAY_NODE_NAME: next_id,
                TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
            }
            all_tags.update(tags)
            self._nodes[next_id] = {
                "tags": all_tags,
                "node": node,
                "shipper": self._start_shipper(next_id, node_type),
            }

    def _start_shipper(self, node_id: str, node_type: str) -> subprocess.Popen | None:
        if not (self.log_shipping and self.node_temp_root):
            return None
        from cluster.logship import ShipConfig, run_argv

        ship = self.log_shipping
        home = node_temp_dir(self.node_temp_root, node_id)
        cfg = ShipConfig(
            bucket=ship["bucket"],
            cluster=self.cluster_name,
            node=node_log_name(node_type, node_id),
            role="worker",
            node_type=node_type,
            logs_dir=os.path.join(home, "session_latest", "logs"),
            interval_s=float(ship["interval_s"]),
            max_file_bytes=int(ship["max_file_bytes"]),
        )
        env = {**os.environ, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": node_id}
        if ship.get("endpoint"):
            env["STORAGE_EMULATOR_HOST"] = ship["endpoint"]
        Path(home).mkdir(parents=True, exist_ok=True)
        with open(os.path.join(home, "logship.log"), "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "cluster.logship", "run", *run_argv(cfg)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )

    def _terminate_node(self, node):
        super()._terminate_node(node)
        shipper = node.get("shipper")
        if shipper is not None and shipper.poll() is None:
            # A VM's shutdown: Ray's processes are gone, the shipper makes its last pass.
            shipper.send_signal(signal.SIGTERM)
            threading.Thread(target=shipper.wait, daemon=True).start()


class LocalZonalNodeProvider(LocalNodeProvider):
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
        self._ledger_path = provider_config.get(LAUNCH_LEDGER_KEY)
        self._ledger_lock = threading.Lock()
        self._not_started: dict[str, int] = {}
        with self._ledger_lock:  # a new provider (a restarted monitor): nothing in flight
            self._write_ledger()

    def _ledger_add(self, node_type: str, n: int) -> None:
        with self._ledger_lock:
            left = self._not_started.get(node_type, 0) + n
            if left > 0:
                self._not_started[node_type] = left
            else:
                self._not_started.pop(node_type, None)
            self._write_ledger()

    def _write_ledger(self) -> None:
        if self._ledger_path:  # atomically: status() may read it at any time
            tmp = Path(f"{self._ledger_path}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"not_started": self._not_started}, sort_keys=True))
            tmp.replace(self._ledger_path)

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
        worker = tags.get(TAG_RAY_NODE_KIND) == NODE_KIND_WORKER
        node_type = tags.get(TAG_RAY_USER_NODE_TYPE, "?")
        # In the ledger from the call on (the batch may wait for the lock), each
        # node out of it just before its processes start, the rest when the call ends.
        not_started = count if worker else 0
        self._ledger_add(node_type, not_started)
        try:
            with self.lock:  # the whole batch (see the module docstring)
                if self._creation_error:
                    raise self._creation_error

                def launch(zone: str, n: int) -> tuple[list[str], str | None]:
                    nonlocal not_started
                    if zone in self.full_zones:
                        return [], zone_error(ZoneExhausted(zone))
                    made = []
                    for _ in range(n):
                        if not_started:
                            not_started -= 1
                            self._ledger_add(node_type, -1)
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
        finally:
            if not_started:  # a failed or partial batch
                self._ledger_add(node_type, -not_started)
        if worker:
            self._wait_for_a_later_list()  # outside the lock: the list needs it
