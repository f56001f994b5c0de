"""One typed description of a Ray cluster, shared by the GCP and the local config.

``ClusterSpec`` says *what* cluster we want (node types, sizes, versions,
autoscaling behaviour); ``GcpFacts`` says *where* it lives (project, subnet,
service accounts, pinned image...), facts that only ``infra/`` knows after
``pulumi up`` has created them. ``cluster.render`` turns both into Ray
autoscaler configs.

Every validation error names the field and what is allowed, and happens
before anything is rendered, let alone created.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cluster import api_endpoints, layout
from cluster.api_endpoints import ApiEndpoints

# Ray names GCE instances `ray-<cluster_name>-<head|worker>-<uuid8>-compute`
# (ray/autoscaler/_private/gcp/node.py: _generate_node_name) and GCE allows 63
# characters: 63 - len("ray-") - len("-worker") - len("-12345678-compute").
CLUSTER_NAME_MAX_LEN = 63 - len("ray-") - len("-worker") - len("-12345678-compute")
_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
_TYPE_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
_MACHINE_CPUS_RE = re.compile(r"^[a-z0-9]+-[a-z]+(?:cpu)?-(\d+)(?:-.*)?$")
# e2 shared-core types have 2 vCPUs (0.25-1 physical core, bursting).
_SHARED_CORE_CPUS = {"e2-micro": 2, "e2-small": 2, "e2-medium": 2}

DEFAULT_HEAD_TYPE = "head"
DEFAULT_CPU_WORKER_TYPE = "cpu-worker"
DEFAULT_GPU_WORKER_TYPE = "gpu-worker"

# The one source of the stack's cluster defaults: infra/settings.py uses them
# as its defaults (and a test keeps Pulumi.yaml's equal), so `ClusterSpec()`
# is exactly the cluster `pulumi up` builds with default settings.
DEFAULT_CLUSTER_NAME = "ray-gcp"
DEFAULT_MACHINE_TYPE = "n2-standard-4"
DEFAULT_MIN_WORKERS = 0
DEFAULT_MAX_WORKERS = 6
DEFAULT_SPOT_WORKERS = False


class SpecError(ValueError):
    """A spec or facts value that cannot work; the message names the field."""


def machine_type_cpus(machine_type: str) -> int:
    """vCPUs of a GCE machine type from its name (`n2-standard-8` -> 8).

    Raises SpecError for names whose size is not in the name (custom types):
    give ``resources: {CPU: n}`` explicitly for those.
    """
    if machine_type in _SHARED_CORE_CPUS:
        return _SHARED_CORE_CPUS[machine_type]
    m = _MACHINE_CPUS_RE.match(machine_type)
    if not m:
        raise SpecError(
            f"machine_type {machine_type!r}: cannot derive the vCPU count from the name; "
            "use a standard type like 'n2-standard-8' or set resources={'CPU': n}"
        )
    return int(m.group(1))


class NodeTypeSpec(BaseModel):
    """One Ray node type: a GCE machine shape plus what Ray may schedule on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    machine_type: str = Field(
        description="GCE machine type, e.g. n2-standard-4", pattern=r"^[a-z0-9][a-z0-9-]*$"
    )
    # Logical Ray resources. CPU defaults to the machine's vCPUs; GPU to
    # accelerator_count. A head with CPU 0 keeps tasks off the head.
    resources: dict[str, float] = Field(default_factory=dict)
    min_workers: Annotated[int, Field(ge=0)] = 0
    max_workers: Annotated[int, Field(ge=0)] = 0
    spot: bool = False
    disk_size_gb: Annotated[int, Field(ge=10, le=65536)] = 50
    accelerator_type: str | None = Field(
        default=None, description="GCE accelerator, e.g. nvidia-tesla-t4", pattern=r"^[a-z0-9-]+$"
    )
    accelerator_count: Annotated[int, Field(ge=0, le=16)] = 0

    @field_validator("resources")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        for name, amount in v.items():
            if amount < 0:
                raise ValueError(f"resources[{name!r}] = {amount}: must be >= 0")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> NodeTypeSpec:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) > max_workers ({self.max_workers}): "
                "min_workers must be between 0 and max_workers"
            )
        if self.accelerator_count and not self.accelerator_type:
            raise ValueError(
                f"accelerator_count={self.accelerator_count} without accelerator_type: "
                "set accelerator_type (e.g. 'nvidia-tesla-t4', 'nvidia-l4') or count 0"
            )
        if self.accelerator_type and not self.accelerator_count:
            raise ValueError(
                f"accelerator_type={self.accelerator_type!r} with accelerator_count=0: "
                "set accelerator_count to 1..16"
            )
        gpu = self.resources.get("GPU")
        if gpu is not None and gpu != self.accelerator_count:
            raise ValueError(
                f"resources['GPU']={gpu} but accelerator_count={self.accelerator_count}: "
                "they must match (or leave GPU out of resources)"
            )
        if "CPU" not in self.resources:
            try:
                machine_type_cpus(self.machine_type)
            except SpecError as e:
                raise ValueError(str(e)) from None
        return self

    @property
    def is_gpu(self) -> bool:
        return self.accelerator_count > 0

    def ray_resources(self) -> dict[str, float | int]:
        """Resources Ray's autoscaler plans with: CPU and GPU filled in."""
        out: dict[str, float | int] = dict(self.resources)
        out.setdefault("CPU", machine_type_cpus(self.machine_type))
        if self.accelerator_count:
            out.setdefault("GPU", self.accelerator_count)
        return {k: (int(v) if float(v).is_integer() else v) for k, v in out.items()}


class ClusterSpec(BaseModel):
    """The Ray cluster: node types, autoscaling and the exact software versions."""

    # validate_default: a default is stored as a given value would be (5 -> 5.0
    # minutes), so ClusterSpec() and from_settings() render byte-identical YAML.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    cluster_name: str = Field(
        default=DEFAULT_CLUSTER_NAME,
        description=(
            f"lowercase letters, digits and dashes, starting with a letter, "
            f"at most {CLUSTER_NAME_MAX_LEN} characters"
        ),
    )
    head_node_type: str = DEFAULT_HEAD_TYPE
    node_types: dict[str, NodeTypeSpec] = Field(
        default_factory=lambda: {
            DEFAULT_HEAD_TYPE: NodeTypeSpec(machine_type=DEFAULT_MACHINE_TYPE, resources={"CPU": 0}),
            DEFAULT_CPU_WORKER_TYPE: NodeTypeSpec(
                machine_type=DEFAULT_MACHINE_TYPE,
                min_workers=DEFAULT_MIN_WORKERS,
                max_workers=DEFAULT_MAX_WORKERS,
                spot=DEFAULT_SPOT_WORKERS,
            ),
        }
    )
    max_workers: Annotated[int, Field(ge=0, le=1000)] = DEFAULT_MAX_WORKERS
    idle_timeout_minutes: Annotated[float, Field(gt=0, le=24 * 60)] = 5
    # Ray's default 1.0 launches at most ~1 node per running node per round;
    # a large value lets a burst launch every needed node at once.
    upscaling_speed: Annotated[float, Field(gt=0)] = 9999
    ray_version: str = layout.RAY_VERSION
    python_minor: str = layout.PYTHON_MINOR
    # Public image the provider VM resolves to a pinned image at deploy time
    # (GcpFacts.image); the spec only names the family.
    image_family: str = Field(
        default="projects/debian-cloud/global/images/family/debian-12",
        pattern=r"^projects/[a-z0-9-]+/global/images/family/[a-z0-9-]+$",
    )

    @field_validator("cluster_name")
    @classmethod
    def _cluster_name(cls, v: str) -> str:
        if len(v) > CLUSTER_NAME_MAX_LEN or not _NAME_RE.match(v):
            raise ValueError(
                f"cluster_name {v!r}: use lowercase letters, digits and dashes, start with a "
                f"letter, end with a letter or digit, at most {CLUSTER_NAME_MAX_LEN} characters "
                "(Ray names VMs 'ray-<cluster_name>-worker-<uuid8>-compute', GCE allows 63)"
            )
        return v

    @field_validator("node_types")
    @classmethod
    def _type_names(cls, v: dict[str, NodeTypeSpec]) -> dict[str, NodeTypeSpec]:
        for name in v:
            if not _TYPE_NAME_RE.match(name) or len(name) > 40:
                raise ValueError(
                    f"node type name {name!r}: use lowercase letters, digits and dashes "
                    "(at most 40 characters)"
                )
        return v

    @field_validator("ray_version")
    @classmethod
    def _ray_version(cls, v: str) -> str:
        if v != layout.RAY_VERSION:
            raise ValueError(
                f"ray_version {v!r} differs from the locked Ray {layout.RAY_VERSION!r} "
                "(uv.lock / cluster.layout.RAY_VERSION); every node must run exactly the "
                "locked version: change the lock, not the spec"
            )
        return v

    @field_validator("python_minor")
    @classmethod
    def _python_minor(cls, v: str) -> str:
        if v != layout.PYTHON_MINOR:
            raise ValueError(
                f"python_minor {v!r} differs from the locked Python {layout.PYTHON_MINOR!r} "
                "(cluster.layout.PYTHON_MINOR); Ray requires the same Python minor on "
                "the driver and every node"
            )
        return v

    @model_validator(mode="after")
    def _head_and_workers(self) -> ClusterSpec:
        if self.head_node_type not in self.node_types:
            raise ValueError(
                f"head_node_type {self.head_node_type!r} is not one of node_types: "
                f"{sorted(self.node_types)}"
            )
        head = self.node_types[self.head_node_type]
        if head.min_workers or head.max_workers:
            raise ValueError(
                f"node_types[{self.head_node_type!r}] is the head type: min_workers and "
                "max_workers must be 0 (there is exactly one head)"
            )
        if head.spot:
            raise ValueError(
                f"node_types[{self.head_node_type!r}].spot: the head cannot be a spot VM "
                "(losing it loses the cluster); allowed: false"
            )
        if not self.worker_types:
            raise ValueError("node_types: needs at least one worker type besides the head")
        total_min = sum(t.min_workers for t in self.worker_types.values())
        if total_min > self.max_workers:
            raise ValueError(
                f"max_workers ({self.max_workers}) < sum of the worker types' min_workers "
                f"({total_min}): raise max_workers or lower min_workers"
            )
        return self

    @property
    def head(self) -> NodeTypeSpec:
        return self.node_types[self.head_node_type]

    @property
    def worker_types(self) -> dict[str, NodeTypeSpec]:
        return {n: t for n, t in self.node_types.items() if n != self.head_node_type}

    @classmethod
    def from_settings(
        cls,
        *,
        cluster_name: str = DEFAULT_CLUSTER_NAME,
        head_machine_type: str = DEFAULT_MACHINE_TYPE,
        worker_machine_type: str = DEFAULT_MACHINE_TYPE,
        min_workers: int = DEFAULT_MIN_WORKERS,
        max_workers: int = DEFAULT_MAX_WORKERS,
        spot_workers: bool = DEFAULT_SPOT_WORKERS,
        worker_cpus: int | None = None,
        gpu_accelerator_type: str | None = None,
        gpu_accelerator_count: int = 0,
        gpu_machine_type: str = "n1-standard-4",
        gpu_max_workers: int = 0,
        idle_timeout_minutes: float = 5,
        upscaling_speed: float = 9999,
    ) -> ClusterSpec:
        """The spec from flat settings (Pulumi config keys map 1:1 onto these).

        One CPU worker type `cpu-worker` (min/max = min_workers/max_workers),
        a CPU-0 head, and a GPU worker type `gpu-worker` only when
        gpu_max_workers > 0. The cluster-wide max_workers equals the sum of the
        worker types' maxima. Raises pydantic.ValidationError naming the field.
        """
        types: dict[str, dict] = {
            DEFAULT_HEAD_TYPE: {"machine_type": head_machine_type, "resources": {"CPU": 0}},
            DEFAULT_CPU_WORKER_TYPE: {
                "machine_type": worker_machine_type,
                "min_workers": min_workers,
                "max_workers": max_workers,
                "spot": spot_workers,
                "resources": {"CPU": worker_cpus} if worker_cpus is not None else {},
            },
        }
        if gpu_max_workers or gpu_accelerator_type or gpu_accelerator_count:
            types[DEFAULT_GPU_WORKER_TYPE] = {
                "machine_type": gpu_machine_type,
                "max_workers": gpu_max_workers,
                "spot": spot_workers,
                "accelerator_type": gpu_accelerator_type,
                "accelerator_count": gpu_accelerator_count,
            }
        return cls.model_validate(
            {
                "cluster_name": cluster_name,
                "node_types": types,
                "max_workers": max_workers + gpu_max_workers,
                "idle_timeout_minutes": idle_timeout_minutes,
                "upscaling_speed": upscaling_speed,
            }
        )


def local_default_spec() -> ClusterSpec:
    """Spec for the one-machine fake cluster: a CPU-0 head, 2-CPU workers, at most 3."""
    return ClusterSpec(
        cluster_name="ray-local",
        node_types={
            DEFAULT_HEAD_TYPE: NodeTypeSpec(machine_type="n2-standard-2", resources={"CPU": 0}),
            DEFAULT_CPU_WORKER_TYPE: NodeTypeSpec(
                machine_type="n2-standard-2", min_workers=0, max_workers=3
            ),
        },
        max_workers=3,
        idle_timeout_minutes=1,
    )


_PROJECT_RE = r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$"
_SA_RE = r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z][a-z0-9-]{4,28}[a-z0-9]\.iam\.gserviceaccount\.com$"
_SUBNET_RE = (
    r"^(https://www\.googleapis\.com/compute/v1/)?"
    r"projects/[a-z][a-z0-9-]+/regions/[a-z0-9-]+/subnetworks/[a-z]([a-z0-9-]*[a-z0-9])?$"
)
# A pinned image: a concrete image, never an image family (family links move).
_IMAGE_RE = (
    r"^(https://www\.googleapis\.com/compute/v1/)?"
    r"projects/[a-z][a-z0-9-]+/global/images/[a-z]([a-z0-9-]*[a-z0-9])?$"
)


class GcpFacts(BaseModel):
    """What infra/ created and resolved at deploy time; nothing here is secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(pattern=_PROJECT_RE)
    region: str = Field(pattern=r"^[a-z]+-[a-z]+\d+$")
    zone: str = Field(pattern=r"^[a-z]+-[a-z]+\d+-[a-z]$")
    # Zones the node provider tries, in order, when `zone` has no capacity
    # (cluster.zones); empty = no fallback. Infra fills in the region's others.
    fallback_zones: tuple[str, ...] = Field(
        default=(), description="ordered zones of `region` to create nodes in when `zone` is full"
    )
    subnetwork: str = Field(
        pattern=_SUBNET_RE, description="subnetwork self-link projects/P/regions/R/subnetworks/N"
    )
    head_service_account: str = Field(pattern=_SA_RE)
    worker_service_account: str = Field(pattern=_SA_RE)
    ssh_public_key: str = Field(
        pattern=r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( \S+)?$",
        description="OpenSSH public key of the launcher key pair",
    )
    image: str = Field(
        pattern=_IMAGE_RE,
        description="pinned image self-link projects/P/global/images/NAME (not a family)",
    )
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
    # Where the launcher's and autoscaler's Google API clients connect (Private
    # Service Connect, or a fake API in tests); unset = Google's public hosts.
    api_endpoints: ApiEndpoints = Field(
        default_factory=ApiEndpoints,
        description="base URLs of the compute, iam and cloudresourcemanager APIs",
        json_schema_extra={"allowed": api_endpoints.ALLOWED},
    )

    @model_validator(mode="after")
    def _same_place(self) -> GcpFacts:
        if not self.zone.startswith(self.region + "-"):
            raise ValueError(f"zone {self.zone!r} is not in region {self.region!r}")
        seen = [self.zone]
        for z in self.fallback_zones:
            if not re.match(r"^[a-z]+-[a-z]+\d+-[a-z]$", z) or not z.startswith(self.region + "-"):
                raise ValueError(
                    f"fallback_zones: zone {z!r} is not in region {self.region!r}; "
                    f"allowed: zones {self.region}-<letter> other than {self.zone!r}"
                )
            if z in seen:
                raise ValueError(
                    f"fallback_zones: zone {z!r} is listed twice or is the primary zone "
                    f"{self.zone!r}; name each other zone once"
                )
            seen.append(z)
        subnet_region = self.subnetwork.split("/regions/")[1].split("/")[0]
        if subnet_region != self.region:
            raise ValueError(
                f"subnetwork {self.subnetwork!r} is in region {subnet_region!r}, "
                f"not {self.region!r}"
            )
        return self

    @property
    def subnetwork_name(self) -> str:
        return self.subnetwork.rsplit("/", 1)[1]

    @property
    def subnetwork_project(self) -> str:
        return self.subnetwork.split("projects/")[1].split("/")[0]
