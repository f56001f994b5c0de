"""Pure renderers for KubeRay on GKE: a ClusterSpec (plus KubeFacts) in, manifests out.

The same typed spec that ``cluster.render`` turns into a `ray up` config
(VMs) or a fake local cluster becomes Kubernetes objects for the KubeRay
operator (release ``layout.KUBERAY_VERSION``, CRDs ``ray.io/v1``):

* ``render_raycluster(spec, facts, name=None) -> dict``: a ``RayCluster``;
* ``render_rayjob(spec, facts, entrypoint=..., name=None, ...) -> dict``: a
  ``RayJob`` running a driver (default: ``workloads/annotate.py`` between two
  ``gs://`` prefixes of the bucket) on its own cluster, shut down after the
  job and deleted after a TTL;
* ``render_rayservice(spec, facts, name=None) -> dict``: a ``RayService``
  whose ``serveConfigV2`` imports ``serve_app:app``. That module is
  ``workloads/serve_app.py``, the Ray Serve app ``serve run`` also runs on VMs;
* ``render_core_objects(spec, facts, workloads) -> list[dict]``: Namespace,
  ServiceAccount (Workload Identity), NetworkPolicy and the ConfigMap with
  the ``workloads/`` files (``read_workloads()`` reads them: the only I/O here,
  kept out of the renderers);
* ``to_yaml_documents(objs)``: a ``---``-separated YAML stream for ``kubectl apply -f -``.

What every Ray pod gets, on purpose:

* Ray 2.60.0 on Python 3.11: ``rayVersion`` and the official image
  ``layout.RAY_IMAGE`` (``-gpu`` variant on GPU groups), pinned by exact tag;
* ``ray start`` parameters and environment from ``cluster.ray_start``, the
  very functions the VM and local clusters use (one source of truth), with
  the fixed ports and ``dashboard-host=0.0.0.0``: on Kubernetes the operator
  reaches the dashboard / Jobs API through the head Service (RayJob status,
  RayService's Serve config), so it cannot bind 127.0.0.1 as on VMs. What
  protects it instead: Ray token auth (``authOptions: {mode: token,
  secretName}``, a Secret with key ``auth_token`` that Pulumi creates), a
  ClusterIP head Service (never a LoadBalancer/NodePort) and the
  NetworkPolicy, which admits traffic to Ray pods only from the same Ray
  cluster's pods, and to the dashboard port also from the operator's
  namespace and the RayJob submitter pods (Serve's port 8000 too is for the
  cluster's own pods: clients use ``kubectl port-forward``);
* CPU/memory requests (= limits) derived from the node type's GCE machine
  type (``machine_shape``; unknown families are a ``SpecError`` naming the
  field), minus what GKE reserves on such a node and a headroom for GKE's
  own DaemonSets; ``num-cpus``/``num-gpus`` are the spec's logical Ray
  resources, exactly as on VMs;
* placement on the node pool ``gke_node_pool(spec, type)`` (the head on the
  system pool, each worker type on a pool named like the type), spot
  selector for spot types, GPU toleration and ``nvidia.com/gpu`` limits for
  GPU types;
* the Kubernetes service account ``facts.service_account`` (bound through
  Workload Identity to the bucket, so ``gs://`` works with no key) and the
  ``workloads/`` ConfigMap mounted at ``layout.KUBE_WORKLOADS_DIR`` on every
  pod, on ``PYTHONPATH``, so drivers, tasks and Serve replicas import it.

Autoscaling: KubeRay's in-tree autoscaler (v2), ``idleTimeoutSeconds`` from
the spec's idle timeout, ``upscalingMode: Aggressive`` for our fast
upscaling (KubeRay's autoscaler knows only 1000 or 1 as upscaling speed), and
the launch knobs of ``ray_start.autoscaler_env`` in the sidecar.

No I/O (except ``read_workloads``), no clock, no randomness: the same input
gives the same dict.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from cluster import kube_logship, layout, names, ray_start
from cluster.spec import DEFAULT_CLUSTER_NAME, ClusterSpec, NodeTypeSpec, SpecError

API_VERSION = "ray.io/v1"
# KubeRay caps names so the names it derives stay valid
# (ray-operator/controllers/ray/utils/constant.go, v1.7.0).
MAX_RAYCLUSTER_NAME = 53
MAX_RAYJOB_NAME = MAX_RAYCLUSTER_NAME - 6
MAX_RAYSERVICE_NAME = MAX_RAYCLUSTER_NAME - 6

# Our label on every Ray pod (all three kinds), valued the spec's cluster_name;
# the NetworkPolicy selects by it, so the clusters of one spec in one
# namespace (RayCluster, RayJob's, RayService's) are one trust zone.
CLUSTER_LABEL = "ray-gcp/cluster"
# KubeRay's labels on the RayJob submitter pods (rayjob_controller.go getSubmitterTemplate).
SUBMITTER_LABELS = {
    "ray.io/originated-from-crd": "RayJob",
    "app.kubernetes.io/created-by": "kuberay-operator",
}
AUTH_TOKEN_KEY = "auth_token"  # the key KubeRay reads from authOptions.secretName
SYSTEM_NODE_POOL = "ray-system"
WORKLOADS_VOLUME = "workloads"
GPU_RESOURCE = "nvidia.com/gpu"
SERVE_IMPORT_PATH = "serve_app:app"  # workloads/serve_app.py, see the module docstring
SERVE_PORT = 8000
# KubeRay's port names (ray-operator/controllers/ray/utils/constant.go): the
# operator finds the dashboard ("dashboard") and Serve ("serve") by name.
HEAD_SERVICE_PORTS = {
    "gcs-server": ray_start.GCS_PORT,
    "dashboard": ray_start.DASHBOARD_PORT,
    "client": ray_start.CLIENT_SERVER_PORT,
    "serve": SERVE_PORT,
    "metrics": 8080,  # KubeRay's default metrics-export-port
}
# Packages the drivers and the Serve app need that the rayproject/ray image
# lacks (annotate: OpenCV, gs://; serve_app/anomaly_model: scikit-learn,
# orjson), installed per job by Ray's runtime env; versions equal to uv.lock's
# (a test checks).
WORKLOAD_PIP = (
    "opencv-python-headless==5.0.0.93",
    "google-cloud-storage==3.17.1",
    "scikit-learn==1.9.1",
    "orjson==3.13.0",
)


@dataclasses.dataclass(frozen=True)
class ConfigMapMount:
    """A ConfigMap mounted read-only in every Ray pod (a user's job files).

    ``items``: (key, relative path) pairs, so keys without '/' become a tree.
    """

    volume: str
    configmap: str
    mount_path: str
    items: tuple[tuple[str, str], ...] = ()


# ---- facts --------------------------------------------------------------------

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class KubeFacts(BaseModel):
    """What infra/ created on GKE (namespace, KSA, Secret, bucket); nothing secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(default="ray", pattern=_DNS_LABEL, max_length=63)
    service_account: str = Field(
        default="ray-workloads",
        pattern=_DNS_LABEL,
        max_length=63,
        description="Kubernetes SA of every Ray pod, bound through Workload Identity to the bucket",
    )
    auth_secret_name: str = Field(
        default="ray-auth-token",
        pattern=_DNS_LABEL,
        max_length=63,
        description=f"Secret in the namespace with key {AUTH_TOKEN_KEY!r} (Ray's token)",
    )
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
    workloads_configmap: str = Field(default="ray-workloads", pattern=_DNS_LABEL, max_length=63)
    operator_namespace: str = Field(
        default="kuberay-system",
        pattern=_DNS_LABEL,
        max_length=63,
        description="namespace of the KubeRay operator (reaches the dashboard)",
    )
    ray_image: str = Field(default=layout.RAY_IMAGE, min_length=1)
    ray_gpu_image: str = Field(default=layout.RAY_GPU_IMAGE, min_length=1)

    @field_validator("ray_image", "ray_gpu_image")
    @classmethod
    def _pinned_image(cls, v: str, info: ValidationInfo) -> str:
        # A mirror or a digest is fine; another Ray or Python is not.
        tag = layout.RAY_GPU_IMAGE if info.field_name == "ray_gpu_image" else layout.RAY_IMAGE
        tag = tag.rsplit(":", 1)[1]
        if not (v.endswith(f":{tag}") or re.search(r"@sha256:[0-9a-f]{64}$", v)):
            raise ValueError(
                f"{info.field_name} {v!r}: must be tagged ':{tag}' (Ray {layout.RAY_VERSION}, "
                f"Python {layout.PYTHON_MINOR}) or pinned by '@sha256:<digest>'"
            )
        return v


def example_kube_facts(
    project: str = "my-ray-project", cluster_name: str = DEFAULT_CLUSTER_NAME
) -> KubeFacts:
    """The facts `pulumi up` on GKE would produce for this project and cluster name
    (names from cluster.names, as infra/ names the bucket), for previews and tests
    (`python -m cluster render --target kuberay`)."""
    return KubeFacts(bucket=names.bucket_name(project, cluster_name))


# ---- machine shapes -----------------------------------------------------------

MIB_PER_GIB = 1024


@dataclasses.dataclass(frozen=True)
class MachineFamily:
    mib_per_vcpu: int
    vcpus: tuple[int, ...]


# GCE machine families we allow for Ray pods on GKE: memory per vCPU and the
# sizes that exist (cloud.google.com/compute/docs/general-purpose-machines,
# .../accelerator-optimized-machines). "GB" there are GiB.
MACHINE_FAMILIES: dict[str, MachineFamily] = {
    "e2-standard": MachineFamily(4 * MIB_PER_GIB, (2, 4, 8, 16, 32)),
    "e2-highmem": MachineFamily(8 * MIB_PER_GIB, (2, 4, 8, 16)),
    "e2-highcpu": MachineFamily(1 * MIB_PER_GIB, (2, 4, 8, 16, 32)),
    "n2-standard": MachineFamily(4 * MIB_PER_GIB, (2, 4, 8, 16, 32, 48, 64, 80, 96, 128)),
    "n2-highmem": MachineFamily(8 * MIB_PER_GIB, (2, 4, 8, 16, 32, 48, 64, 80, 96, 128)),
    "n2-highcpu": MachineFamily(1 * MIB_PER_GIB, (2, 4, 8, 16, 32, 48, 64, 80, 96)),
    "n2d-standard": MachineFamily(4 * MIB_PER_GIB, (2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 224)),
    "c3-standard": MachineFamily(4 * MIB_PER_GIB, (4, 8, 22, 44, 88, 176)),
    # n1: 3.75 GB per vCPU; the family of T4/V100/P4 GPUs.
    "n1-standard": MachineFamily(3840, (1, 2, 4, 8, 16, 32, 64, 96)),
    # g2: L4 GPUs (g2-standard-4 has 1 L4 ... g2-standard-96 has 8).
    "g2-standard": MachineFamily(4 * MIB_PER_GIB, (4, 8, 12, 16, 24, 32, 48, 96)),
}
# Headroom on every node for GKE's DaemonSets (anetd, netd, fluentbit,
# gke-metadata-server, CSI drivers, the NVIDIA device plugin on GPU nodes).
DAEMONSET_CPU_MILLI = 400
DAEMONSET_MEMORY_MIB = 1024
# The head shares the system pool with the KubeRay operator (chart limits
# 100m / 512Mi) and KubeRay's autoscaler sidecar in the head pod (500m / 512Mi).
HEAD_EXTRA_CPU_MILLI = 100 + 500
HEAD_EXTRA_MEMORY_MIB = 512 + 512
AUTOSCALER_RESOURCES = {"cpu": "500m", "memory": "512Mi"}


@dataclasses.dataclass(frozen=True)
class MachineShape:
    vcpus: int
    memory_mib: int


def machine_shape(machine_type: str, *, field: str = "machine_type") -> MachineShape:
    """vCPUs and memory of a GCE machine type from the allowed families.

    Raises SpecError naming ``field``, the value and the allowed families/sizes.
    """
    family, _, size = machine_type.rpartition("-")
    fam = MACHINE_FAMILIES.get(family)
    if fam is None or not size.isdigit() or int(size) not in fam.vcpus:
        allowed = ", ".join(
            f"{f}-{{{','.join(map(str, m.vcpus))}}}" for f, m in MACHINE_FAMILIES.items()
        )
        raise SpecError(
            f"{field} = {machine_type!r}: not a machine type KubeRay pods can be sized for; "
            f"allowed on GKE: {allowed}"
        )
    return MachineShape(vcpus=int(size), memory_mib=int(size) * fam.mib_per_vcpu)


def gke_reserved_cpu_milli(vcpus: int) -> int:
    """CPU GKE reserves for the kubelet/OS: 6% of the 1st core, 1% of the 2nd,
    0.5% of the 3rd-4th, 0.25% above (cloud.google.com/kubernetes-engine/docs/
    concepts/plan-node-sizes)."""
    tiers = ((1, 60), (1, 10), (2, 5), (10**6, 2.5))
    left, out = vcpus, 0.0
    for cores, milli_per_core in tiers:
        take = min(left, cores)
        out += take * milli_per_core
        left -= take
    return int(-(-out // 1))  # ceil


def gke_reserved_memory_mib(memory_mib: int) -> int:
    """Memory GKE reserves: 25% of the first 4 GiB, 20% of the next 4, 10% of
    the next 8, 6% of the next 112, 2% above 128 GiB, plus the 100 MiB
    eviction threshold (same source)."""
    tiers = ((4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (10**6, 0.02))
    left, out = memory_mib, 0.0
    for gib, share in tiers:
        take = min(left, gib * MIB_PER_GIB)
        out += take * share
        left -= take
    return int(-(-out // 1)) + 100


def pod_resources(
    t: NodeTypeSpec, *, head: bool, field: str, log_sidecar: bool = False
) -> dict[str, str]:
    """CPU/memory a Ray pod's Ray container requests (= its limits): the
    machine minus GKE's reservation, DaemonSet headroom, the log shipper
    sidecar (``log_sidecar``) and, on the head's node, the operator and the
    autoscaler sidecar."""
    shape = machine_shape(t.machine_type, field=field)
    cpu = shape.vcpus * 1000 - gke_reserved_cpu_milli(shape.vcpus) - DAEMONSET_CPU_MILLI
    mem = shape.memory_mib - gke_reserved_memory_mib(shape.memory_mib) - DAEMONSET_MEMORY_MIB
    if log_sidecar:
        cpu -= kube_logship.CPU_MILLI
        mem -= kube_logship.MEMORY_MIB
    if head:
        cpu -= HEAD_EXTRA_CPU_MILLI
        mem -= HEAD_EXTRA_MEMORY_MIB
    if cpu < 500 or mem < 2048:
        raise SpecError(
            f"{field} = {t.machine_type!r}: leaves {cpu}m CPU / {mem}Mi memory for the Ray "
            "pod after GKE's reservations and system pods (at least 500m / 2048Mi needed); "
            "use a larger machine type"
        )
    return {"cpu": f"{cpu}m", "memory": f"{mem}Mi"}


def gke_node_pool(spec: ClusterSpec, type_name: str) -> str:
    """The GKE node pool a node type's pods run on (infra/ creates one per name).

    The head on the system pool (with the operator); each worker type on a
    pool named like the type (node type names are valid pool names).
    """
    if type_name == spec.head_node_type:
        return SYSTEM_NODE_POOL
    if type_name == SYSTEM_NODE_POOL:
        raise SpecError(
            f"node_types[{type_name!r}]: the name is reserved for the GKE system pool; "
            "rename the worker type"
        )
    return type_name


# ---- pods ---------------------------------------------------------------------


def _env_list(env: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in env.items()]


def _start_params(params: Mapping[str, ray_start.ParamValue]) -> dict[str, str]:
    """ray_start parameters as KubeRay's rayStartParams (str -> str).

    KubeRay turns "true" into a bare ``--flag`` and pastes other values into
    a shell command (pod.go convertParamMap), so JSON gets shell quotes, as
    KubeRay itself writes ``resources``.
    """
    out = {}
    for key, value in params.items():
        if value is True:
            out[key] = "true"
        elif value is False:
            continue
        elif isinstance(value, str) and not ray_start._SHELL_SAFE.match(value):
            out[key] = shlex.quote(value)
        else:
            out[key] = str(value)
    return out


def _pod_template(
    spec: ClusterSpec,
    facts: KubeFacts,
    type_name: str,
    *,
    head: bool,
    mounts: tuple[ConfigMapMount, ...] = (),
) -> dict[str, Any]:
    t = spec.node_types[type_name]
    field = f"node_types[{type_name!r}].machine_type"
    resources = pod_resources(t, head=head, field=field, log_sidecar=spec.logs.ship)
    limits: dict[str, Any] = dict(resources)
    if t.is_gpu:
        limits[GPU_RESOURCE] = t.accelerator_count
    # The head Service gets exactly these (service.go getPortsFromCluster), so
    # they carry KubeRay's port names and the ports rayStartParams give Ray.
    ports = [{"name": name, "containerPort": port} for name, port in HEAD_SERVICE_PORTS.items()]
    if not head:
        ports = []
    env = {
        **ray_start.node_env(spec),
        "PYTHONPATH": f"{layout.KUBE_WORKLOADS_DIR.rsplit('/', 1)[0]}:{layout.KUBE_WORKLOADS_DIR}",
        "RAY_GCP_BUCKET": facts.bucket,
        "RAY_GCP_CLUSTER": spec.cluster_name,
        # Users' jobs build their locked environments here (cluster/userjob.py).
        "RAY_GCP_JOB_ENVS": layout.KUBE_JOB_ENVS,
    }
    image = facts.ray_gpu_image if t.is_gpu else facts.ray_image
    container: dict[str, Any] = {
        "name": "ray-head" if head else "ray-worker",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": _env_list(env),
        "resources": {"requests": dict(resources), "limits": limits},
        "volumeMounts": [
            {"name": WORKLOADS_VOLUME, "mountPath": layout.KUBE_WORKLOADS_DIR, "readOnly": True},
            *({"name": m.volume, "mountPath": m.mount_path, "readOnly": True} for m in mounts),
        ],
    }
    containers = [container]
    volumes: list[dict[str, Any]] = [
        {
            "name": WORKLOADS_VOLUME,
            "configMap": {"name": facts.workloads_configmap, "defaultMode": 0o444},
        },
        *(_configmap_volume(m) for m in mounts),
    ]
    if spec.logs.ship:
        # Ray's log files leave the pod through the bucket (cluster/kube_logship.py).
        container["volumeMounts"].append(kube_logship.ray_container_mount())
        containers.append(
            kube_logship.sidecar(spec, facts.bucket, type_name, head=head, image=image)
        )
        volumes += kube_logship.volumes()
    if ports:
        container["ports"] = ports
    node_selector = {"cloud.google.com/gke-nodepool": gke_node_pool(spec, type_name)}
    if t.spot:
        node_selector["cloud.google.com/gke-spot"] = "true"
    if t.is_gpu:
        node_selector["cloud.google.com/gke-accelerator"] = t.accelerator_type
    pod_spec: dict[str, Any] = {
        "serviceAccountName": facts.service_account,
        "nodeSelector": node_selector,
        "containers": containers,
        "volumes": volumes,
    }
    if t.is_gpu:
        # GKE taints GPU pools nvidia.com/gpu=present:NoSchedule.
        pod_spec["tolerations"] = [
            {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        ]
    if t.spot:
        # GKE gives spot nodes ~30 s notice; Ray retries the lost tasks.
        pod_spec["terminationGracePeriodSeconds"] = 25
    return {
        "metadata": {
            "labels": {
                CLUSTER_LABEL: spec.cluster_name,
                "ray-gcp/node-type": type_name,
            }
        },
        "spec": pod_spec,
    }


def _configmap_volume(m: ConfigMapMount) -> dict[str, Any]:
    source: dict[str, Any] = {"name": m.configmap, "defaultMode": 0o444}
    if m.items:
        source["items"] = [{"key": k, "path": p} for k, p in m.items]
    return {"name": m.volume, "configMap": source}


def _upscaling_mode(spec: ClusterSpec) -> str:
    # Ray's KubeRay autoscaler maps Conservative to upscaling_speed 1 and
    # everything else to 1000 (ray/autoscaler/_private/kuberay/autoscaling_config.py).
    return "Conservative" if spec.upscaling_speed <= 1 else "Aggressive"


def raycluster_spec(
    spec: ClusterSpec, facts: KubeFacts, *, mounts: tuple[ConfigMapMount, ...] = ()
) -> dict[str, Any]:
    """The ``spec`` of a RayCluster; also RayJob's rayClusterSpec and RayService's
    rayClusterConfig (one renderer for all three). ``mounts``: ConfigMaps every
    pod mounts besides the workloads (a user's job files)."""
    type_max = sum(t.max_workers for t in spec.worker_types.values())
    if spec.max_workers < type_max:
        # Ray's KubeRay autoscaler caps the cluster at the sum of the groups'
        # maxReplicas (kuberay/autoscaling_config.py): no cluster-wide cap.
        raise SpecError(
            f"max_workers = {spec.max_workers} < {type_max}, the sum of the worker types' "
            "max_workers: KubeRay has no cluster-wide cap; lower the types' max_workers "
            f"or set max_workers = {type_max}"
        )
    if spec.head.is_gpu:
        raise SpecError(
            f"node_types[{spec.head_node_type!r}].accelerator_count = "
            f"{spec.head.accelerator_count}: on GKE the head runs on the system pool, which "
            "has no GPUs; allowed: 0 (put GPUs on a worker type)"
        )
    head_params = ray_start.head_params(spec, dashboard_host="0.0.0.0")
    workers = []
    for name, t in sorted(spec.worker_types.items()):
        workers.append(
            {
                "groupName": name,
                "replicas": t.min_workers,
                "minReplicas": t.min_workers,
                "maxReplicas": t.max_workers,
                "rayStartParams": _start_params(ray_start.worker_params(spec, name)),
                "template": _pod_template(spec, facts, name, head=False, mounts=mounts),
            }
        )
    return {
        "rayVersion": spec.ray_version,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "version": "v2",
            "upscalingMode": _upscaling_mode(spec),
            "idleTimeoutSeconds": round(spec.idle_timeout_minutes * 60),
            "env": _env_list(ray_start.autoscaler_env(spec)),
            "resources": {
                "requests": dict(AUTOSCALER_RESOURCES),
                "limits": dict(AUTOSCALER_RESOURCES),
            },
        },
        "authOptions": {"mode": "token", "secretName": facts.auth_secret_name},
        "headGroupSpec": {
            # Never LoadBalancer/NodePort: the dashboard and Jobs API stay in-cluster.
            "serviceType": "ClusterIP",
            "rayStartParams": _start_params(head_params),
            "template": _pod_template(
                spec, facts, spec.head_node_type, head=True, mounts=mounts
            ),
        },
        "workerGroupSpecs": workers,
    }


def _check_name(name: str, limit: int, kind: str) -> str:
    if len(name) > limit or not re.match(_DNS_LABEL, name):
        raise SpecError(
            f"{kind} name {name!r}: lowercase letters, digits and dashes, at most {limit} "
            f"characters (KubeRay {layout.KUBERAY_VERSION} limit for {kind})"
        )
    return name


def _metadata(spec: ClusterSpec, facts: KubeFacts, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": facts.namespace,
        "labels": {CLUSTER_LABEL: spec.cluster_name, "app.kubernetes.io/part-of": "ray-gcp"},
    }


def render_raycluster(
    spec: ClusterSpec, facts: KubeFacts, name: str | None = None
) -> dict[str, Any]:
    """A RayCluster named ``name`` (default: the spec's cluster_name)."""
    name = _check_name(name or spec.cluster_name, MAX_RAYCLUSTER_NAME, "RayCluster")
    return {
        "apiVersion": API_VERSION,
        "kind": "RayCluster",
        "metadata": _metadata(spec, facts, name),
        "spec": raycluster_spec(spec, facts),
    }


def default_annotate_entrypoint(facts: KubeFacts) -> list[str]:
    """annotate.py from gs://BUCKET/annotate/input to gs://BUCKET/annotate/output."""
    return [
        "python",
        f"{layout.KUBE_WORKLOADS_DIR}/annotate.py",
        "--input",
        f"gs://{facts.bucket}/annotate/input",
        "--output",
        f"gs://{facts.bucket}/annotate/output",
    ]


def _runtime_env(pip: tuple[str, ...]) -> dict[str, Any]:
    return {"pip": list(pip)} if pip else {}


def render_rayjob(
    spec: ClusterSpec,
    facts: KubeFacts,
    entrypoint: list[str] | str | None = None,
    *,
    name: str | None = None,
    ttl_seconds_after_finished: int = 600,
    active_deadline_seconds: int | None = None,
    pip: tuple[str, ...] = WORKLOAD_PIP,
    runtime_env: Mapping[str, Any] | None = None,
    mounts: tuple[ConfigMapMount, ...] = (),
) -> dict[str, Any]:
    """A RayJob on its own RayCluster (same renderer), shut down after the job.

    ``entrypoint``: argv (shell-quoted here) or a command line; default
    annotate.py with gs:// input and output in the bucket. The cluster is
    deleted ``ttl_seconds_after_finished`` after the job ends (logs stay
    readable until then). ``runtime_env`` replaces the default one (``pip``:
    our workloads' packages); ``mounts`` go on every pod of the job's cluster.
    A user's own job: ``cluster.userjob.render_kuberay``.
    """
    if entrypoint is None:
        entrypoint = default_annotate_entrypoint(facts)
    if not isinstance(entrypoint, str):
        entrypoint = shlex.join(entrypoint)
    if not entrypoint.strip():
        raise SpecError("entrypoint: empty; give the driver's command line")
    if ttl_seconds_after_finished < 0:
        raise SpecError(f"ttl_seconds_after_finished = {ttl_seconds_after_finished}: must be >= 0")
    name = _check_name(name or f"{spec.cluster_name}-job", MAX_RAYJOB_NAME, "RayJob")
    job: dict[str, Any] = {
        "entrypoint": entrypoint,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": ttl_seconds_after_finished,
        "submissionMode": "K8sJobMode",
        "rayClusterSpec": raycluster_spec(spec, facts, mounts=mounts),
    }
    if runtime_env is None:
        runtime_env = _runtime_env(pip)
    if runtime_env:
        job["runtimeEnvYAML"] = yaml.safe_dump(dict(runtime_env), sort_keys=True)
    if active_deadline_seconds is not None:
        job["activeDeadlineSeconds"] = active_deadline_seconds
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": _metadata(spec, facts, name),
        "spec": job,
    }


def serve_config(pip: tuple[str, ...] = WORKLOAD_PIP) -> dict[str, Any]:
    """Ray Serve config (serveConfigV2): our app, imported from the workloads dir
    (on PYTHONPATH of every pod)."""
    app: dict[str, Any] = {
        "name": "ray-gcp",
        "route_prefix": "/",
        "import_path": SERVE_IMPORT_PATH,
    }
    runtime_env = _runtime_env(pip)
    if runtime_env:
        app["runtime_env"] = runtime_env
    return {
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": [app],
    }


def render_rayservice(
    spec: ClusterSpec, facts: KubeFacts, name: str | None = None
) -> dict[str, Any]:
    """A RayService serving ``serve_app:app`` (workloads/serve_app.py) on a RayCluster
    from the same renderer; upgrades start a new cluster, then switch traffic."""
    name = _check_name(name or f"{spec.cluster_name}-serve", MAX_RAYSERVICE_NAME, "RayService")
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": _metadata(spec, facts, name),
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(), sort_keys=True),
            "upgradeStrategy": {"type": "NewCluster"},
            "rayClusterConfig": raycluster_spec(spec, facts),
        },
    }


# ---- core objects -------------------------------------------------------------


def read_workloads(root: Path | None = None) -> dict[str, str]:
    """The ``workloads/*.py`` files (name -> text), sorted: what the ConfigMap carries."""
    root = root or Path(__file__).resolve().parent.parent / "workloads"
    return {p.name: p.read_text() for p in sorted(root.glob("*.py"))}


def render_network_policy(
    spec: ClusterSpec, facts: KubeFacts, *, autostop: bool = False
) -> dict[str, Any]:
    """Ingress to Ray pods only from the same Ray cluster's pods (every port:
    Ray picks worker ports), plus the dashboard/Jobs API port from the
    operator's namespace and the RayJob submitter pods, and with ``autostop``
    the dashboard and GCS ports from the autostop watcher's Pod
    (cluster/kuberay_autostop.py). Egress is open (bucket, PyPI for runtime
    envs, the API server for the autoscaler)."""
    ray_pods = {"matchLabels": {CLUSTER_LABEL: spec.cluster_name}}
    extra = []
    if autostop:
        from cluster.kuberay_autostop import watcher_ingress

        extra.append(watcher_ingress(spec))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{spec.cluster_name}-ray-ingress",
            "namespace": facts.namespace,
            "labels": {CLUSTER_LABEL: spec.cluster_name},
        },
        "spec": {
            "podSelector": ray_pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": ray_pods}]},
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {
                                    "kubernetes.io/metadata.name": facts.operator_namespace
                                }
                            }
                        },
                        {"podSelector": {"matchLabels": dict(SUBMITTER_LABELS)}},
                    ],
                    "ports": [{"protocol": "TCP", "port": ray_start.DASHBOARD_PORT}],
                },
                *extra,
            ],
        },
    }


def workload_identity_principal(project_number: str, project_id: str, facts: KubeFacts) -> str:
    """The IAM principal of the Ray pods' KSA (Workload Identity Federation for
    GKE), to grant bucket roles to directly; no Google service account, no key."""
    return (
        f"principal://iam.googleapis.com/projects/{project_number}/locations/global/"
        f"workloadIdentityPools/{project_id}.svc.id.goog/subject/ns/{facts.namespace}/"
        f"sa/{facts.service_account}"
    )


def render_core_objects(
    spec: ClusterSpec, facts: KubeFacts, workloads: Mapping[str, str], *, autostop: bool = False
) -> list[dict[str, Any]]:
    """Namespace, ServiceAccount, NetworkPolicy and the workloads ConfigMap
    (``autostop``: the NetworkPolicy admits the autostop watcher).

    The Secret (``facts.auth_secret_name``, key ``auth_token``) is not here:
    its value is a secret, and Pulumi creates it from the random token.
    """
    if not workloads:
        raise SpecError("workloads: no files; the ConfigMap would be empty")
    labels = {"app.kubernetes.io/part-of": "ray-gcp"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": facts.namespace, "labels": dict(labels)},
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": facts.service_account,
                "namespace": facts.namespace,
                "labels": dict(labels),
            },
            # No annotation: bucket IAM names this KSA directly as a Workload
            # Identity principal (workload_identity_principal). Its API token
            # stays mounted: KubeRay's autoscaler sidecar patches the RayCluster
            # with it (the operator binds its Role to the head's SA).
        },
        render_network_policy(spec, facts, autostop=autostop),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": facts.workloads_configmap,
                "namespace": facts.namespace,
                "labels": dict(labels),
            },
            "data": {k: workloads[k] for k in sorted(workloads)},
        },
        *(
            [kube_logship.render_configmap(facts.namespace, kube_logship.shipper_files())]
            if spec.logs.ship
            else []
        ),
    ]


def to_yaml_documents(objs: list[dict[str, Any]]) -> str:
    """A deterministic multi-document YAML stream (sorted keys)."""
    from cluster.render import to_yaml

    return "---\n".join(to_yaml(o) for o in objs)


__all__ = [
    "ConfigMapMount",
    "KubeFacts",
    "example_kube_facts",
    "gke_node_pool",
    "machine_shape",
    "pod_resources",
    "raycluster_spec",
    "read_workloads",
    "render_core_objects",
    "render_network_policy",
    "render_raycluster",
    "render_rayjob",
    "render_rayservice",
    "serve_config",
    "to_yaml_documents",
    "workload_identity_principal",
]
