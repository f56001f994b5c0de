"""Pure renderers: (spec, facts) in, Ray autoscaler config dict / YAML text out."""

from __future__ import annotations

from typing import Any

import yaml

from cluster.spec import ClusterSpec

# The fake_multinode provider hard-codes the head's node type name
# (ray/autoscaler/_private/fake_multi_node/node_provider.py: FAKE_HEAD_NODE_TYPE).
LOCAL_HEAD_TYPE = "ray.head.default"
# Fake workers otherwise reserve 30% of RAM each for their object store.
LOCAL_WORKER_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def render_local(
    spec: ClusterSpec,
    *,
    gcs_port: int,
    host: str = "127.0.0.1",
    object_store_bytes: int = LOCAL_WORKER_OBJECT_STORE_BYTES,
) -> dict[str, Any]:
    """The spec's node types as fake nodes on this machine (fake_multinode provider).

    The head type is renamed to ``ray.head.default`` (the fake provider's fixed
    name); worker types keep their names, resources and min/max. No command
    runs: fake nodes are processes started by the autoscaler itself.
    """
    types: dict[str, Any] = {
        LOCAL_HEAD_TYPE: {
            "resources": spec.head.ray_resources(),
            "node_config": {},
            "min_workers": 0,
            "max_workers": 0,
        }
    }
    for name, t in sorted(spec.worker_types.items()):
        resources = t.ray_resources()
        resources["object_store_memory"] = object_store_bytes
        types[name] = {
            "resources": resources,
            "node_config": {},
            "min_workers": t.min_workers,
            "max_workers": t.max_workers,
        }
    return {
        "cluster_name": spec.cluster_name,
        "max_workers": spec.max_workers,
        "upscaling_speed": spec.upscaling_speed,
        "idle_timeout_minutes": spec.idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"{host}:{gcs_port}",
        },
        "auth": {"ssh_user": "ray"},
        "available_node_types": types,
        "head_node_type": LOCAL_HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def to_yaml(cfg: dict[str, Any]) -> str:
    """Deterministic YAML: sorted keys, block style, no aliases."""

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(cfg, Dumper=_NoAliases, sort_keys=True, default_flow_style=False, width=1000)
