"""Ray's fake_multinode provider, with one change: fake worker nodes run no log monitor.

Every fake node is a raylet on this machine sharing the head's session
directory, so every node's log monitor tails the same files (monitor.log,
events/event_AUTOSCALER.log, gcs_server.err, every worker-*.out) and
publishes each line again: with 3 workers the driver printed each autoscaler
event 4 times ("Adding 3 node(s) of type cpu-worker." x4), and under
autoscaler v2 a monitor started later re-read the file from its start, so old
events reappeared after the nodes were up. The head's log monitor alone
already sees every file, so each line is forwarded exactly once, as on GCP
where each node has its own disk.
"""

from __future__ import annotations

import copy
import json

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


class LocalNodeProvider(FakeMultiNodeProvider):
    """FakeMultiNodeProvider whose worker nodes start without a log monitor."""

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        # Ray 2.60.0's method, verbatim except include_log_monitor=False (Ray is pinned
        # exactly, and tests/cluster/test_local.py counts the log monitors).
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
                include_log_monitor=False,
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
            self._nodes[next_id] = {"tags": all_tags, "node": node}
