"""Nodes that GCE answers 404 for are gone: the node provider says so instead of raising.

A Spot worker can be preempted (and, with ``instanceTerminationAction:
DELETE``, deleted) between the autoscaler's ``instances.list`` and its next
call about that node. Ray 2.60's ``GCPNodeProvider``
(ray/autoscaler/_private/gcp/node_provider.py) then does:

- ``terminate_node``: catches the delete's 404, logs "already gone", then
  ``return result`` with ``result`` never assigned: ``UnboundLocalError``.
  ``terminate_nodes`` stops at that node, so the rest of the batch is not
  deleted: ``ray down`` exits with the error and leaves workers running;
  autoscaler v2 marks the whole batch TERMINATION_FAILED and retries next
  round; v1 counts an update failure (ray#21151, #22999).
- ``set_node_tags``, ``is_running``, ``is_terminated``, ``node_tags``,
  ``internal_ip``, ``external_ip``: a node no longer in the cached listing is
  fetched with ``instances.get``, and its 404 is raised as ``HttpError``.
  v1 raises it out of its update loop (``internal_ip`` in ``summary``,
  ``prune_active_ips``, ``process_completed_updates``: ray#22537, #30050,
  #29698). In v2 it comes out of the ``NodeUpdater`` of a worker preempted
  while being set up: from ``set_node_tags`` (even from the one in its
  error handler, which then hides the real failure) and from
  ``is_terminated`` in ``wait_ready``, the very check meant to notice a
  vanished node.
- ``get_command_runner``: ``instances.get`` (to tell TPU from Compute), the
  same raise, before any updater exists.

Autoscaler v2 itself survives all of these (it lists the instances every
round, marks a missing one TERMINATED, and queues the errors of its
terminate and install threads), but the answers are wrong. ``GoneNodeAware``
(mixed into ``cluster.gcp_provider.ReadOnlyGCPNodeProvider``) makes a 404
for an instance mean "gone": deleting it succeeds (``None``) and the rest of
the batch goes on; labelling it logs a warning and writes nothing; reads
answer from the last copy of it this provider saw (labels, IPs), not
running and terminated. Only a 404 whose request addressed that instance
counts; every other error (403, 412, 5xx, a 404 for a zone operation) still
raises. A name GCE answered 404 for is not asked about
again (Ray's node names end in a random suffix and are never reused).
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections import OrderedDict
from typing import Any

from googleapiclient import errors
from ray.autoscaler._private.gcp.node import GCPComputeNode
from ray.autoscaler._private.gcp.node_provider import GCPNodeProvider, _retry
from ray.autoscaler.node_provider import NodeProvider

from cluster.gcp_zonal import http_status

logger = logging.getLogger(__name__)

# Names remembered (last copies seen, and gone nodes): a few KB each, far more
# than one cluster's nodes between two of its listings.
REMEMBERED = 1024


def is_not_found(e: BaseException, node_id: str) -> bool:
    """A 404 whose request addressed the instance ``node_id`` itself (get, delete,
    setLabels), not one of its operations (``zoneOperations.get``) or anything else."""
    if not isinstance(e, errors.HttpError) or http_status(e) != 404:
        return False
    path = urllib.parse.urlsplit(str(getattr(e, "uri", "") or "")).path
    return re.search(rf"/zones/[^/]+/instances/{re.escape(node_id)}(/[A-Za-z]+)?$", path) is not None


class GoneComputeNode(GCPComputeNode):
    """An instance GCE no longer has (404): the last copy of it seen, never running."""

    def is_running(self) -> bool:
        return False

    def is_terminated(self) -> bool:
        return True


class _Bounded(OrderedDict):
    def remember(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > REMEMBERED:
            self.popitem(last=False)


class GoneNodeAware(GCPNodeProvider):
    """GCPNodeProvider methods that take a 404 for an instance to mean it is gone."""

    def __init__(self, provider_config: dict, cluster_name: str) -> None:
        self._last_seen: _Bounded = _Bounded()  # name -> last GCPNode listed or fetched
        self._gone: _Bounded = _Bounded()  # name -> GoneComputeNode
        super().__init__(provider_config, cluster_name)

    def is_gone(self, node_id: str) -> bool:
        return node_id in self._gone

    def _mark_gone(self, node_id: str, call: str) -> GoneComputeNode:
        with self.lock:
            if node_id not in self._gone:
                logger.warning(
                    "NodeProvider: %s: GCE answered %s with 404: the instance is gone "
                    "(preempted or deleted); treating it as terminated", node_id, call,
                )
                last = self._last_seen.pop(node_id, None) or {"name": node_id}
                resource = self._get_resource_depending_on_node_name(node_id)
                self._gone.remember(node_id, GoneComputeNode(dict(last), resource))
            self.cached_nodes.pop(node_id, None)
            return self._gone[node_id]

    @_retry
    def non_terminated_nodes(self, tag_filters: dict):
        with self.lock:
            names = super().non_terminated_nodes(tag_filters)
            for name in names:
                self._gone.pop(name, None)  # listed again: it exists
                self._last_seen.remember(name, self.cached_nodes[name])
            return names

    @_retry
    def _get_node(self, node_id: str):
        """Ray's ``_get_node`` (list, then get what the list lacks); a 404 gives the gone node."""
        if node_id in self._gone:
            return self._gone[node_id]
        self.non_terminated_nodes({})  # refreshes the cache, as Ray's
        with self.lock:
            if node_id in self.cached_nodes:
                return self.cached_nodes[node_id]
            resource = self._get_resource_depending_on_node_name(node_id)
            try:
                node = resource.get_instance(node_id=node_id)
            except errors.HttpError as e:
                if not is_not_found(e, node_id):
                    raise
                return self._mark_gone(node_id, "instances.get")
            self._last_seen.remember(node_id, node)
            return node

    @_retry
    def terminate_node(self, node_id: str):
        """Ray's ``terminate_node`` without its UnboundLocalError: a 404 means done."""
        with self.lock:
            if node_id in self._gone:
                return None
            resource = self._get_resource_depending_on_node_name(node_id)
            try:
                if self.cache_stopped_nodes:
                    node = self._get_cached_node(node_id)
                    return resource.stop_instance(node_id=node_id) if node.is_running() else None
                return resource.delete_instance(node_id=node_id)
            except errors.HttpError as e:
                if not is_not_found(e, node_id):
                    raise
                self._mark_gone(node_id, "instances.delete")
                return None

    def get_command_runner(self, log_prefix: str, node_id: str, *args: Any, **kwargs: Any):
        """Ray's (which fetches the node to tell TPU from Compute); for a gone node, the
        plain runner, whose first step (``wait_ready``) sees it terminated."""
        if node_id not in self._gone:
            try:
                return super().get_command_runner(log_prefix, node_id, *args, **kwargs)
            except errors.HttpError as e:
                if not is_not_found(e, node_id):
                    raise
                self._mark_gone(node_id, "instances.get")
        # Compute Engine only: ray-gcp refuses TPU node types at bootstrap.
        return NodeProvider.get_command_runner(self, log_prefix, node_id, *args, **kwargs)
