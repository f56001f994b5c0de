"""Pure renderers for autostop on GKE: the watcher that suspends the idle RayCluster.

``render_autostop_objects(spec, facts, timeout_minutes, sources)`` returns, for
the RayCluster named ``spec.cluster_name``:

* a ConfigMap ``<cluster>-autostop`` with the watcher's code, the files of
  :data:`AUTOSTOP_MODULES` (``read_autostop_sources()`` reads them from this
  checkout: the only I/O here, kept out of the renderer). They use only the
  standard library and Ray, so the stock Ray image runs them;
* a ServiceAccount, and a Role + RoleBinding that allow exactly ``get`` and
  ``patch`` of that one RayCluster (``resourceNames``), nothing else: no other
  RayCluster, no RayJob, no Pod;
* a Deployment of one Pod (``python -m cluster.autostop gke-watch``) from the
  pinned Ray image ``facts.ray_image``, on the system node pool, with the
  cluster's token from its Secret, non-root, no privilege escalation, every
  capability dropped, a read-only root file system.

The NetworkPolicy of the Ray Pods (``cluster.kuberay.render_network_policy``,
``autostop=True``) admits this Pod, and only it beyond the cluster's own Pods
and the operator, to the dashboard and GCS ports.

What the watcher does and why: ``cluster/autostop_gke.py``. No I/O (except
``read_autostop_sources``), no clock: the same input gives the same dicts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cluster import autostop, autostop_gke, ray_start
from cluster.kuberay import AUTH_TOKEN_KEY, SYSTEM_NODE_POOL, KubeFacts
from cluster.spec import ClusterSpec, SpecError

# The watcher's code: this package's files that the GKE watcher imports.
AUTOSTOP_MODULES = ("__init__.py", "idle.py", "idle_probe.py", "autostop.py", "autostop_gke.py")
# Where the ConfigMap is mounted: the package dir `cluster` under PYTHONPATH.
CODE_ROOT = "/home/ray/ray-gcp-autostop"
CODE_DIR = f"{CODE_ROOT}/cluster"
# The Pod's label; the NetworkPolicy admits Pods with it to the head's ports.
WATCHER_LABEL = "ray-gcp/autostop"
RAYCLUSTER_GROUP = "ray.io"
RAYCLUSTER_RESOURCE = "rayclusters"
# Imports Ray for the GCS query: a few hundred MB; little CPU, once a minute.
WATCHER_RESOURCES = {
    "requests": {"cpu": "50m", "memory": "512Mi"},
    "limits": {"cpu": "500m", "memory": "512Mi"},
}
RAY_UID = 1000  # the rayproject/ray images' user `ray`


def read_autostop_sources(root: Path | None = None) -> dict[str, str]:
    """The watcher's files (name -> text) from cluster/, in AUTOSTOP_MODULES order."""
    root = root or Path(__file__).resolve().parent
    return {name: (root / name).read_text() for name in AUTOSTOP_MODULES}


def autostop_name(spec: ClusterSpec) -> str:
    return f"{spec.cluster_name}-autostop"


def _labels(spec: ClusterSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": "ray-gcp",
        "app.kubernetes.io/name": "ray-gcp-autostop",
        WATCHER_LABEL: spec.cluster_name,
    }


def _meta(spec: ClusterSpec, facts: KubeFacts, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": facts.namespace, "labels": _labels(spec)}


def render_role(spec: ClusterSpec, facts: KubeFacts) -> dict[str, Any]:
    """get and patch of this one RayCluster: all the watcher may do in the API."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(spec, facts, autostop_name(spec)),
        "rules": [
            {
                "apiGroups": [RAYCLUSTER_GROUP],
                "resources": [RAYCLUSTER_RESOURCE],
                "resourceNames": [spec.cluster_name],
                "verbs": ["get", "patch"],
            }
        ],
    }


def render_deployment(
    spec: ClusterSpec, facts: KubeFacts, timeout_minutes: int, code_hash: str = ""
) -> dict[str, Any]:
    name = autostop_name(spec)
    env = [
        {"name": autostop_gke.ENV_TIMEOUT, "value": str(timeout_minutes)},
        {"name": autostop_gke.ENV_RAYCLUSTER, "value": spec.cluster_name},
        {"name": autostop_gke.ENV_NAMESPACE, "value": facts.namespace},
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {
            "name": autostop_gke.ENV_TOKEN,
            "valueFrom": {
                "secretKeyRef": {"name": facts.auth_secret_name, "key": AUTH_TOKEN_KEY}
            },
        },
        {"name": "PYTHONPATH", "value": CODE_ROOT},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
        {"name": "HOME", "value": "/tmp"},
    ]
    template_meta: dict[str, Any] = {"labels": _labels(spec)}
    if code_hash:
        # A new ConfigMap content rolls the Pod (a mounted ConfigMap updates, a
        # running Python does not re-import).
        template_meta["annotations"] = {"ray-gcp/autostop-code-sha256": code_hash}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(spec, facts, name),
        "spec": {
            "replicas": 1,
            # Never two watchers of one cluster at once.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {WATCHER_LABEL: spec.cluster_name}},
            "template": {
                "metadata": template_meta,
                "spec": {
                    "serviceAccountName": name,
                    "nodeSelector": {"cloud.google.com/gke-nodepool": SYSTEM_NODE_POOL},
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RAY_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "autostop",
                            "image": facts.ray_image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["python", "-m", "cluster.autostop", "gke-watch"],
                            "env": env,
                            "resources": {
                                k: dict(v) for k, v in WATCHER_RESOURCES.items()
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "code", "mountPath": CODE_DIR, "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "code", "configMap": {"name": name, "defaultMode": 0o444}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }


def render_autostop_objects(
    spec: ClusterSpec,
    facts: KubeFacts,
    timeout_minutes: int,
    sources: Mapping[str, str],
) -> list[dict[str, Any]]:
    """ConfigMap, ServiceAccount, Role, RoleBinding and Deployment of the watcher
    (empty when ``timeout_minutes`` is 0: autostop off)."""
    try:
        timeout_minutes = autostop.check_timeout_minutes(timeout_minutes)
    except ValueError as e:
        raise SpecError(str(e)) from None
    if timeout_minutes == 0:
        return []
    missing = [m for m in AUTOSTOP_MODULES if m not in sources]
    if missing:
        raise SpecError(f"autostop sources: missing {', '.join(missing)}")
    code = {m: sources[m] for m in AUTOSTOP_MODULES}
    code_hash = hashlib.sha256(
        "".join(f"{k}\0{v}\0" for k, v in sorted(code.items())).encode()
    ).hexdigest()
    name = autostop_name(spec)
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(spec, facts, name),
            "data": code,
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(spec, facts, name),
            # Its token is what the watcher calls the API server with.
            "automountServiceAccountToken": True,
        },
        render_role(spec, facts),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(spec, facts, name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": facts.namespace}],
        },
        render_deployment(spec, facts, timeout_minutes, code_hash),
    ]


def watcher_ingress(spec: ClusterSpec) -> dict[str, Any]:
    """The NetworkPolicy rule that lets the watcher reach the dashboard and the GCS."""
    return {
        "from": [{"podSelector": {"matchLabels": {WATCHER_LABEL: spec.cluster_name}}}],
        "ports": [
            {"protocol": "TCP", "port": ray_start.DASHBOARD_PORT},
            {"protocol": "TCP", "port": ray_start.GCS_PORT},
        ],
    }
