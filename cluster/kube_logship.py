"""The log shipper on GKE: a sidecar in every Ray pod (pure renderers).

What already reaches Cloud Logging on GKE: each container's stdout and
stderr, which GKE's logging agent ships with the node account's
``logging.logWriter``: the ``ray start --block`` output of the Ray
containers, KubeRay's autoscaler sidecar and the RayJob submitter (which
tails the driver's output). What does not: Ray's log files inside the pods
(``/tmp/ray/session_latest/logs``: raylet, gcs_server, every worker's
stdout/stderr, ``job-driver-*.log``, the dashboard's logs). They vanish with
the pod.

The gap is closed with the VMs' own shipper, ``cluster/logship.py``, as a
sidecar container of each Ray pod, so both platforms write the same
``gs://BUCKET/logs/<cluster>/<date>/<pod>/<session>/...`` and one reader
(``python -m cluster logs``) serves both:

* the pod's Ray container and the sidecar share an ``emptyDir`` at
  ``/tmp/ray``, named ``ray-logs`` like the one KubeRay itself adds for its
  autoscaler (pod.go ``RayLogVolumeName``), so the operator reuses it;
* the sidecar runs the Ray image the pod already has (pinned; nothing more
  to pull) with the shipper's three standard-library files from a
  ConfigMap, as the package ``cluster`` (``PYTHONPATH``);
* it authenticates as the pods' Kubernetes service account through
  Workload Identity, which already holds ``storage.objectUser`` on the
  bucket: no new grant;
* the node name is the pod's name (downward API); on pod deletion (scale
  down, Spot preemption) the sidecar gets SIGTERM with the Ray container and
  makes its last pass within the grace period.

KubeRay's own samples collect these files with a Fluent Bit sidecar
(``ray-cluster.fluentbit.yaml``, to Loki) and KubeRay 1.7 adds an alpha
``RayClusterHistoryServer`` collector behind a feature gate; neither gives
the bucket layout, the size cap and the reader the VMs have, and Fluent
Bit's configuration cannot be validated here (no fluent-bit package on
Debian 12 or PyPI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.logship import ShipConfig, run_argv
from cluster.spec import ClusterSpec

CONTAINER = "ray-gcp-logship"
CONFIGMAP = "ray-gcp-logship"
# KubeRay's name for the /tmp/ray emptyDir (ray-operator/controllers/ray/common/pod.go).
LOGS_VOLUME = "ray-logs"
LOGS_MOUNT = "/tmp/ray"
CODE_VOLUME = "ray-gcp-logship"
CODE_ROOT = "/home/ray/ray-gcp-logship"  # PYTHONPATH; the files are CODE_ROOT/cluster/*.py
FILES = ("__init__.py", "gcs_http.py", "logpaths.py", "logship.py", "logship_cli.py")
# Requests = limits (Guaranteed QoS, as the Ray container); the shipper idles
# between passes and holds one chunk (<= max_file_bytes / 16) in memory.
CPU_MILLI = 100
MEMORY_MIB = 128
POD_NAME_ENV = "POD_NAME"


def shipper_files(root: Path | None = None) -> dict[str, str]:
    """The ConfigMap's files: the shipper and what it imports, nothing else."""
    root = root or Path(__file__).resolve().parent
    return {name: (root / name).read_text() for name in FILES}


def render_configmap(namespace: str, files: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "ray-gcp"},
        },
        "data": {k: files[k] for k in sorted(files)},
    }


def sidecar(spec: ClusterSpec, bucket: str, type_name: str, *, head: bool, image: str
            ) -> dict[str, Any]:
    """The shipper container of one node type's pods."""
    cfg = ShipConfig(
        bucket=bucket,
        cluster=spec.cluster_name,
        node="pod",  # replaced by $(POD_NAME) below, which Kubernetes expands
        role="head" if head else "worker",
        node_type=type_name,
        logs_dir=f"{LOGS_MOUNT}/session_latest/logs",
        interval_s=spec.logs.interval_s,
        max_file_bytes=spec.logs.max_file_bytes,
    )
    args = run_argv(cfg)
    args[args.index("--node") + 1] = f"$({POD_NAME_ENV})"
    resources = {"cpu": f"{CPU_MILLI}m", "memory": f"{MEMORY_MIB}Mi"}
    return {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "cluster.logship", "run", *args],
        "env": [
            {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "PYTHONPATH", "value": CODE_ROOT},
        ],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "volumeMounts": [
            {"name": LOGS_VOLUME, "mountPath": LOGS_MOUNT, "readOnly": True},
            {"name": CODE_VOLUME, "mountPath": f"{CODE_ROOT}/cluster", "readOnly": True},
        ],
    }


def ray_container_mount() -> dict[str, Any]:
    """The Ray container's side of the shared log directory."""
    return {"name": LOGS_VOLUME, "mountPath": LOGS_MOUNT}


def volumes() -> list[dict[str, Any]]:
    return [
        {"name": LOGS_VOLUME, "emptyDir": {}},
        {"name": CODE_VOLUME, "configMap": {"name": CONFIGMAP, "defaultMode": 0o444}},
    ]
