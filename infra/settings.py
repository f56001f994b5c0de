"""Stack settings: every `ray-gcp:*` config key, parsed and validated in one place.

`load_settings()` runs before any resource is declared: a bad value stops the
program with a `SettingsError` that names the key, the value and what is
allowed, and nothing is registered with the engine. The keys, types and
defaults here are the ones `Pulumi.yaml` declares (a test keeps them equal).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import pulumi
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

from cluster import api_endpoints
from cluster.api_endpoints import ApiEndpoints
from cluster.regions import (
    DEFAULT_REGION,
    DEFAULT_ZONE,
    REGION_ZONES,
    default_fallback_zones,
    zones_of,
)
from cluster.spec import (
    CLUSTER_NAME_MAX_LEN,
    DEFAULT_CLUSTER_NAME,
    DEFAULT_CPU_WORKER_TYPE,
    DEFAULT_GPU_WORKER_TYPE,
    DEFAULT_HEAD_TYPE,
    DEFAULT_MACHINE_TYPE,
    DEFAULT_MAX_WORKERS,
    DEFAULT_MIN_WORKERS,
    DEFAULT_SPOT_WORKERS,
    ClusterSpec,
    SpecError,
)

NAMESPACE = "ray-gcp"
PROJECT_KEY = "gcp:project"

# Google's IAP TCP forwarding connects from this range (documented, fixed).
IAP_SOURCE_RANGE = "35.235.240.0/20"

# An IAM principal of a person or a Google group; service accounts cannot use OS Login
# with a predictable POSIX name, so they are not operators.
_OPERATOR_RE = re.compile(r"^(user|group):[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_MACHINE_TYPE_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")
_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_RFC1918 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
# Accelerators of the optional GKE GPU pool, and the machine family each one
# attaches to (n1 takes T4/V100/P4; L4 comes built into g2). Only families the
# KubeRay renderer can size Pods for (cluster/kuberay.py MACHINE_FAMILIES).
GKE_GPU_MACHINE_FAMILY = {
    "nvidia-l4": "g2-standard",
    "nvidia-tesla-t4": "n1-standard",
    "nvidia-tesla-v100": "n1-standard",
    "nvidia-tesla-p4": "n1-standard",
}
GKE_GPU_TYPES = tuple(GKE_GPU_MACHINE_FAMILY)
# L4 GPUs per g2-standard-<vCPUs> machine (fixed by the machine type).
G2_L4_PER_MACHINE = {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}
# An SSH source range shorter than this is "most of the internet", whatever its address.
_MIN_SSH_PREFIX = 8


class SettingsError(pulumi.RunError):
    """One or more settings are invalid. RunError: Pulumi prints the message, no traceback."""


def _allowed(text: str) -> dict[str, Any]:
    return {"json_schema_extra": {"allowed": text}}


class Settings(BaseModel):
    """The validated `ray-gcp:*` settings plus the project (`gcp:project`)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    # Not a ray-gcp key: the gcp provider's own required setting, validated here too.
    project: str = Field(alias="project", **_allowed("a GCP project ID: 6-30 of [a-z0-9-]"))

    region: str = Field(
        default=DEFAULT_REGION,
        description="GCP region of the network, bucket, secrets and every VM.",
        **_allowed("one of the regions in cluster/regions.py, e.g. asia-northeast3, us-central1"),
    )
    zone: str = Field(
        default=DEFAULT_ZONE,
        description="Zone of the provider VM and the Ray nodes; must lie in region.",
        **_allowed("a zone of `region`"),
    )
    fallback_zones: tuple[str, ...] | None = Field(
        default=None,
        description=(
            "Ordered zones of the region where Ray nodes are created when `zone` has no "
            "capacity (ZONE_RESOURCE_POOL_EXHAUSTED, QUOTA_EXCEEDED, a machine or GPU type "
            "the zone lacks). Unset: the region's other zones, starting after `zone`. "
            "An empty list turns zone fallback off."
        ),
        **_allowed("a list of zones of `region` other than `zone`; [] for no fallback"),
    )
    api_endpoints: ApiEndpoints | None = Field(
        default=None,
        description=(
            "Base URLs of the Google APIs that `ray up`, `ray down` and the head's autoscaler "
            "call: an object with the optional keys compute, iam and cloudresourcemanager, "
            "each the API's whole base URL ending in '/' (Private Service Connect endpoints, "
            "or a fake API for offline tests). Unset: Google's public endpoints."
        ),
        **_allowed(
            api_endpoints.ALLOWED
            + "; set one with pulumi config set --path ray-gcp:apiEndpoints.compute URL"
        ),
    )
    cluster_name: str = Field(
        default=DEFAULT_CLUSTER_NAME,
        description=(
            "Ray cluster name and prefix of every resource name; lowercase letters, digits "
            f"and dashes, at most {CLUSTER_NAME_MAX_LEN} characters."
        ),
        **_allowed(
            "lowercase letters, digits and dashes, starting with a letter, "
            f"at most {CLUSTER_NAME_MAX_LEN} characters"
        ),
    )
    provider_machine_type: str = Field(
        default="e2-medium",
        description="Machine type of the provider VM that runs `ray up`.",
        **_allowed("a GCE machine type name such as e2-medium"),
    )
    head_machine_type: str = Field(
        default=DEFAULT_MACHINE_TYPE,
        description="Machine type of the Ray head node.",
        **_allowed("a GCE machine type name with its vCPU count, such as n2-standard-4"),
    )
    worker_machine_type: str = Field(
        default=DEFAULT_MACHINE_TYPE,
        description="Machine type of the autoscaled Ray worker nodes.",
        **_allowed("a GCE machine type name with its vCPU count, such as n2-standard-8"),
    )
    min_workers: int = Field(
        default=DEFAULT_MIN_WORKERS,
        description="Workers the autoscaler keeps running at all times.",
        **_allowed("an integer >= 0 and <= maxWorkers"),
    )
    max_workers: int = Field(
        default=DEFAULT_MAX_WORKERS,
        description="Upper bound on autoscaled workers (>= minWorkers, <= 1000).",
        **_allowed("an integer >= minWorkers and <= 1000"),
    )
    spot_workers: bool = Field(
        default=DEFAULT_SPOT_WORKERS,
        description="Run workers as Spot VMs (cheaper, may be preempted; Ray retries the tasks).",
        **_allowed("true or false"),
    )
    ssh_source_ranges: tuple[str, ...] = Field(
        default=(),
        description=(
            "Extra IPv4 CIDRs allowed to SSH (port 22 only) to the provider VM directly; "
            "empty means IAP only; 0.0.0.0/0 is refused. A range outside RFC 1918 also gives "
            "the provider VM an external IP (direct SSH needs one)."
        ),
        **_allowed("a list of IPv4 CIDRs such as 203.0.113.0/24, never 0.0.0.0/0"),
    )
    credential_mode: Literal["metadata", "key"] = Field(
        default="metadata",
        description=(
            "metadata: the provider VM uses its attached service account, no keys exist. "
            "key: also create a service-account key, kept in Secret Manager."
        ),
        **_allowed("metadata or key"),
    )
    custom_roles: bool = Field(
        default=True,
        description=(
            "true: the provider and head accounts get custom roles (launcher, autoscaler) "
            "holding exactly the permissions their recorded GCP calls need (infra/iam/). "
            "false: predefined roles (compute.instanceAdmin.v1...), for deployers without "
            "roles/iam.roleAdmin."
        ),
        **_allowed("true or false"),
    )
    operators: tuple[str, ...] = Field(
        default=(),
        description=(
            "People who may SSH to the provider VM and run `ray up`: IAM principals "
            "user:EMAIL or group:EMAIL. Each gets IAP tunnel access and OS Login on the "
            "provider VM only, and actAs on the provider account only; listed users join "
            "the ray-operators group on the VM at their first login."
        ),
        **_allowed("a list of user:EMAIL or group:EMAIL, e.g. user:alice@example.com"),
    )
    subnet_cidr: str = Field(
        default="10.10.0.0/20",
        description="Primary IPv4 range of the cluster subnet (RFC 1918, /8 to /29).",
        **_allowed("a private (RFC 1918) IPv4 CIDR between /8 and /29, e.g. 10.10.0.0/20"),
    )
    platform: Literal["vm", "gke"] = Field(
        default="vm",
        description=(
            "Where Ray runs. vm: Compute Engine VMs started by `ray up` from the provider VM. "
            "gke: a private GKE Standard cluster with the KubeRay operator."
        ),
        **_allowed("vm or gke"),
    )
    gke_pods_cidr: str = Field(
        default="10.64.0.0/14",
        description=(
            "gke only: secondary subnet range for Pod IPs (RFC 1918, /8 to /21, "
            "not overlapping subnetCidr or gkeServicesCidr)."
        ),
        **_allowed("a private (RFC 1918) IPv4 CIDR between /8 and /21, e.g. 10.64.0.0/14"),
    )
    gke_services_cidr: str = Field(
        default="10.68.0.0/20",
        description=(
            "gke only: secondary subnet range for Service IPs (RFC 1918, /16 to /27, "
            "not overlapping subnetCidr or gkePodsCidr)."
        ),
        **_allowed("a private (RFC 1918) IPv4 CIDR between /16 and /27, e.g. 10.68.0.0/20"),
    )
    gke_release_channel: Literal["RAPID", "REGULAR", "STABLE"] = Field(
        default="REGULAR",
        description="gke only: GKE release channel; Google upgrades the control plane and nodes.",
        **_allowed("RAPID, REGULAR or STABLE"),
    )
    gke_deletion_protection: bool = Field(
        default=True,
        description=(
            "gke only: GKE refuses to delete the cluster while true; set false before "
            "`pulumi destroy`."
        ),
        **_allowed("true or false"),
    )
    gke_gpu_type: str = Field(
        default="",
        description=(
            "gke only: accelerator of an optional GPU node pool (tainted, drivers installed "
            "by GKE), e.g. nvidia-l4; empty means no GPU pool."
        ),
        **_allowed("empty or one of " + ", ".join(GKE_GPU_TYPES)),
    )
    gke_gpu_count: int = Field(
        default=1,
        description="gke only: GPUs per node of the GPU pool (1, 2, 4 or 8).",
        **_allowed("1, 2, 4 or 8"),
    )
    gke_gpu_machine_type: str = Field(
        default="g2-standard-8",
        description="gke only: machine type of the GPU pool; must accept gkeGpuType.",
        **_allowed("a GCE machine type name such as g2-standard-8"),
    )
    gke_gpu_max_nodes: int = Field(
        default=2,
        description="gke only: upper bound of the GPU pool, autoscaled from 0 (1 to 100).",
        **_allowed("an integer from 1 to 100"),
    )

    # ---- field checks (in declaration order; later ones may read earlier ones) ----

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        if not _PROJECT_RE.match(v):
            raise ValueError("not a GCP project ID")
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if v not in REGION_ZONES:
            raise ValueError("unknown region")
        return v

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str, info: ValidationInfo) -> str:
        region = info.data.get("region")
        if region is None:  # the region itself was refused; that error says enough
            return v
        if v not in zones_of(region):
            raise ValueError(
                f"zone is not in region {region!r}; allowed: {', '.join(zones_of(region))}"
            )
        return v

    @field_validator("fallback_zones", mode="before")
    @classmethod
    def _fallback_list(cls, v: Any, info: ValidationInfo) -> Any:
        return _as_list(v, info, what="zone names")

    @field_validator("fallback_zones")
    @classmethod
    def _fallback_zones(
        cls, v: tuple[str, ...] | None, info: ValidationInfo
    ) -> tuple[str, ...] | None:
        region, zone = info.data.get("region"), info.data.get("zone")
        if v is None or region is None or zone is None:  # those errors say enough
            return v
        others = [z for z in zones_of(region) if z != zone]
        seen: list[str] = []
        for z in v:
            if z not in zones_of(region):
                raise ValueError(
                    f"zone {z!r} is not in region {region!r}; allowed: {', '.join(others)}"
                )
            if z == zone:
                raise ValueError(f"{z!r} is `zone` itself; allowed: {', '.join(others)}")
            if z in seen:
                raise ValueError(f"{z!r} is listed twice")
            seen.append(z)
        return tuple(seen)

    @field_validator("api_endpoints", mode="before")
    @classmethod
    def _api_endpoints_object(cls, v: Any) -> Any:
        # Pulumi hands an object value to the program as JSON text.
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else {}
            except json.JSONDecodeError:
                raise ValueError("not a JSON object") from None
        if isinstance(v, Mapping) and not v:
            return None  # {} is the same as unset
        if v is not None and not isinstance(v, Mapping | ApiEndpoints):
            raise ValueError("not an object")
        return v

    @field_validator("cluster_name")
    @classmethod
    def _cluster_name(cls, v: str) -> str:
        # The cluster spec owns the rule (Ray's VM names must fit GCE's 63 characters).
        try:
            ClusterSpec(cluster_name=v)
        except ValidationError as e:
            raise ValueError(_first_message(e)) from None
        return v

    @field_validator(
        "provider_machine_type", "head_machine_type", "worker_machine_type", "gke_gpu_machine_type"
    )
    @classmethod
    def _machine_type(cls, v: str) -> str:
        if not _MACHINE_TYPE_RE.match(v):
            raise ValueError("malformed machine type")
        return v

    @field_validator("min_workers")
    @classmethod
    def _min_workers(cls, v: int) -> int:
        if v < 0:
            raise ValueError("negative worker count")
        return v

    @field_validator("max_workers")
    @classmethod
    def _max_workers(cls, v: int, info: ValidationInfo) -> int:
        if v < 0 or v > 1000:
            raise ValueError("out of range")
        low = info.data.get("min_workers")
        if low is not None and v < low:
            raise ValueError(f"smaller than minWorkers ({low})")
        return v

    @field_validator("spot_workers", mode="before")
    @classmethod
    def _pulumi_boolean(cls, v: Any) -> Any:
        # pydantic would also take "yes", "on", "1"; Pulumi's own config
        # (pulumi.Config.get_bool) refuses them, so a stack must not depend on them.
        if isinstance(v, str) and v not in ("true", "True", "false", "False"):
            raise ValueError("not a boolean")
        return v

    @field_validator("ssh_source_ranges", mode="before")
    @classmethod
    def _ssh_list(cls, v: Any, info: ValidationInfo) -> Any:
        return _as_list(v, info, what="CIDRs")

    @field_validator("ssh_source_ranges")
    @classmethod
    def _ssh_source_ranges(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        seen: list[str] = []
        for item in v:
            net = _ipv4_network(item)
            if net.prefixlen < _MIN_SSH_PREFIX:
                raise ValueError(
                    f"{item!r} opens SSH to (nearly) the whole internet; "
                    f"use a prefix of /{_MIN_SSH_PREFIX} or longer"
                )
            if str(net) in seen:
                raise ValueError(f"{item!r} is listed twice")
            seen.append(str(net))
        return tuple(seen)

    @field_validator("operators", mode="before")
    @classmethod
    def _operator_list(cls, v: Any, info: ValidationInfo) -> Any:
        return _as_list(v, info, what="principals")

    @field_validator("operators")
    @classmethod
    def _operators(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        seen: list[str] = []
        for item in v:
            if not _OPERATOR_RE.match(item):
                raise ValueError(f"{item!r} is not user:EMAIL or group:EMAIL")
            if item.lower() in (s.lower() for s in seen):
                raise ValueError(f"{item!r} is listed twice")
            seen.append(item)
        return tuple(seen)

    @field_validator("subnet_cidr")
    @classmethod
    def _subnet_cidr(cls, v: str) -> str:
        net = _ipv4_network(v)
        if not _is_rfc1918(net):
            raise ValueError("not inside an RFC 1918 private range")
        if not 8 <= net.prefixlen <= 29:
            raise ValueError("GCE subnets are /8 to /29")
        return str(net)

    @field_validator("gke_pods_cidr")
    @classmethod
    def _gke_pods_cidr(cls, v: str) -> str:
        return _private_range(v, 8, 21)

    @field_validator("gke_services_cidr")
    @classmethod
    def _gke_services_cidr(cls, v: str) -> str:
        return _private_range(v, 16, 27)

    @field_validator("gke_gpu_type")
    @classmethod
    def _gke_gpu_type(cls, v: str) -> str:
        if v and v not in GKE_GPU_TYPES:
            raise ValueError("unknown accelerator type")
        return v

    @field_validator("gke_gpu_count")
    @classmethod
    def _gke_gpu_count(cls, v: int) -> int:
        if v not in (1, 2, 4, 8):
            raise ValueError("GPUs per node must be 1, 2, 4 or 8")
        return v

    @field_validator("gke_gpu_max_nodes")
    @classmethod
    def _gke_gpu_max_nodes(cls, v: int) -> int:
        if not 1 <= v <= 100:
            raise ValueError("out of range")
        return v

    # ---- derived values ----

    @property
    def ssh_needs_public_ip(self) -> bool:
        """Direct SSH from outside RFC 1918 (not VPN/peering) needs an external IP on the VM."""
        return any(not _is_rfc1918(ipaddress.IPv4Network(r)) for r in self.ssh_source_ranges)

    @property
    def node_fallback_zones(self) -> tuple[str, ...]:
        """The zones Ray nodes fall back to, in order (the default resolved)."""
        if self.fallback_zones is not None:
            return self.fallback_zones
        return default_fallback_zones(self.region, self.zone)

    @property
    def node_api_endpoints(self) -> dict[str, str]:
        """``provider.api_endpoints`` of the rendered cluster config ({} when unset)."""
        return self.api_endpoints.as_config() if self.api_endpoints else {}

    def cluster_spec(self) -> ClusterSpec:
        """The Ray cluster spec these settings describe (validated by cluster.spec)."""
        return ClusterSpec.from_settings(
            cluster_name=self.cluster_name,
            head_machine_type=self.head_machine_type,
            worker_machine_type=self.worker_machine_type,
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            spot_workers=self.spot_workers,
            **(
                {
                    "gpu_accelerator_type": self.gke_gpu_type,
                    "gpu_accelerator_count": self.gke_gpu_count,
                    "gpu_machine_type": self.gke_gpu_machine_type,
                    "gpu_max_workers": self.gke_gpu_max_nodes,
                }
                if self.gpu_pool
                else {}
            ),
        )

    @property
    def gpu_pool(self) -> bool:
        """gke: whether the optional GPU node pool exists."""
        return self.platform == "gke" and bool(self.gke_gpu_type)

    @classmethod
    def config_keys(cls) -> dict[str, str]:
        """Field name -> `ray-gcp:<key>` for every key this project declares."""
        return {
            name: f"{NAMESPACE}:{field.alias}"
            for name, field in cls.model_fields.items()
            if name != "project"
        }


# Settings that mean something on one platform only. Set on the other one (to a
# value other than the default, which is all the program can see: the engine
# hands it Pulumi.yaml's defaults too), they are an error, not silently ignored.
PLATFORM_ONLY: dict[str, tuple[str, ...]] = {
    # The provider VM and its SSH access exist only with `ray up` on VMs, and so do
    # the launcher/autoscaler accounts that customRoles narrows.
    "vm": (
        "provider_machine_type",
        "ssh_source_ranges",
        "credential_mode",
        "custom_roles",
        "operators",
        "fallback_zones",  # GKE's cluster is zonal; its pools do not move between zones
        "api_endpoints",  # the Ray launcher's and autoscaler's clients; KubeRay has none
    ),
    "gke": (
        "gke_pods_cidr",
        "gke_services_cidr",
        "gke_release_channel",
        "gke_deletion_protection",
        "gke_gpu_type",
        "gke_gpu_count",
        "gke_gpu_machine_type",
        "gke_gpu_max_nodes",
    ),
}


def _platform_problems(settings: Settings) -> list[str]:
    """Settings of the other platform that were changed, and GKE's range overlaps."""
    keys = Settings.config_keys()
    problems = []
    for platform, fields in PLATFORM_ONLY.items():
        if platform == settings.platform:
            continue
        for field in fields:
            value = getattr(settings, field)
            if value != Settings.model_fields[field].default:
                # As Pulumi config stores it: false, ["user:a@b.c"], 'e2-small'.
                if isinstance(value, BaseModel):
                    value = value.model_dump(exclude_none=True)
                shown = repr(value) if isinstance(value, str) else json.dumps(value)
                problems.append(
                    f"{keys[field]} = {shown}: applies only to {keys['platform']} {platform}, "
                    f"and this stack has {keys['platform']} {settings.platform!r} "
                    f"(remove it: pulumi config rm {keys[field]})"
                )
    if settings.gpu_pool:
        problems += _gpu_problems(settings)
    if settings.platform == "gke":
        ranges = {
            "subnet_cidr": settings.subnet_cidr,
            "gke_pods_cidr": settings.gke_pods_cidr,
            "gke_services_cidr": settings.gke_services_cidr,
        }
        names = list(ranges)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if ipaddress.IPv4Network(ranges[a]).overlaps(ipaddress.IPv4Network(ranges[b])):
                    problems.append(
                        f"{keys[b]} = {ranges[b]!r}: overlaps {keys[a]} ({ranges[a]}); "
                        "the subnet's primary and secondary ranges must be disjoint"
                    )
    return problems


def _gpu_problems(settings: Settings) -> list[str]:
    """The GPU pool's accelerator must fit its machine type (GKE refuses otherwise)."""
    keys = Settings.config_keys()
    family = GKE_GPU_MACHINE_FAMILY[settings.gke_gpu_type]
    machine = settings.gke_gpu_machine_type
    if machine.rpartition("-")[0] != family:
        problem = (
            f"{keys['gke_gpu_machine_type']} = {machine!r}: {settings.gke_gpu_type} needs a "
            f"{family}-<vCPUs> machine type"
        )
        return [problem]
    vcpus = machine.rpartition("-")[2]
    if family == "g2-standard" and vcpus.isdigit():
        built_in = G2_L4_PER_MACHINE.get(int(vcpus))
        if built_in is not None and built_in != settings.gke_gpu_count:
            problem = (
                f"{keys['gke_gpu_count']} = {settings.gke_gpu_count!r}: {machine} comes with "
                f"{built_in} L4 GPU(s); set {keys['gke_gpu_count']} {built_in}"
            )
            return [problem]
    return []


# Which setting a cluster-spec error is about, by the spec's error location.
_SPEC_LOC_TO_FIELD = {
    "cluster_name": "cluster_name",
    DEFAULT_HEAD_TYPE: "head_machine_type",
    DEFAULT_CPU_WORKER_TYPE: "worker_machine_type",
    DEFAULT_GPU_WORKER_TYPE: "gke_gpu_machine_type",
    "max_workers": "max_workers",
}


def _kuberay_problems(settings: Settings) -> list[str]:
    """gke: what only the KubeRay renderer knows (can a Ray Pod be sized for each
    machine type?), checked now rather than halfway through `pulumi up`."""
    from cluster.kuberay import example_kube_facts, render_raycluster

    try:
        render_raycluster(settings.cluster_spec(), example_kube_facts(settings.project, settings.cluster_name))
    except SpecError as e:
        message = str(e)
        field = next(
            (f for t, f in _SPEC_LOC_TO_FIELD.items() if f"node_types[{t!r}]" in message), None
        )
        if field is None:
            return [f"cluster spec: {message}"]
        return [f"{Settings.config_keys()[field]} = {getattr(settings, field)!r}: {message}"]
    return []


def parse_settings(raw: Mapping[str, Any], project: str | None) -> Settings:
    """Settings from raw config values (`ray-gcp:` keys without the prefix, strings as the
    Pulumi engine passes them). Raises SettingsError listing every bad key."""
    problems: list[str] = []
    known = {field.alias: name for name, field in Settings.model_fields.items()}
    for key in sorted(raw):
        if key not in known or key == "project":
            problems.append(
                f"{NAMESPACE}:{key} is not a setting of this project; allowed keys: "
                + ", ".join(sorted(Settings.config_keys().values()))
            )
    if project is None:
        problems.append(
            f"{PROJECT_KEY} is required: run `pulumi config set {PROJECT_KEY} <project-id>`"
        )
    if problems:
        raise SettingsError(_report(problems))

    values = {k: v for k, v in raw.items() if v is not None}
    values["project"] = project
    try:
        settings = Settings.model_validate(values)
    except ValidationError as e:
        raise SettingsError(_report([_describe(err) for err in e.errors()])) from None

    platform_problems = _platform_problems(settings)
    if platform_problems:
        raise SettingsError(_report(platform_problems))

    # The cluster spec checks what only it knows (vCPUs derivable from a machine type...).
    try:
        settings.cluster_spec()
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = next(
                (_SPEC_LOC_TO_FIELD[p] for p in err["loc"] if p in _SPEC_LOC_TO_FIELD), None
            )
            key = Settings.config_keys().get(field, "cluster spec") if field else "cluster spec"
            value = getattr(settings, field) if field else None
            lines.append(f"{key} = {value!r}: {_clean(err['msg'])}")
        raise SettingsError(_report(lines)) from None
    if settings.platform == "gke":
        kuberay_problems = _kuberay_problems(settings)
        if kuberay_problems:
            raise SettingsError(_report(kuberay_problems))
    return settings


def load_settings() -> Settings:
    """Settings of the running stack, read from Pulumi config (before any resource)."""
    config = pulumi.Config(NAMESPACE)
    raw = {key: config.get(key) for key in _present_keys()}
    return parse_settings(raw, pulumi.Config("gcp").get("project"))


def _present_keys() -> set[str]:
    """Every `ray-gcp:` key the stack sets, including misspelt ones."""
    from pulumi.runtime import config as runtime_config

    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = NAMESPACE + ":"
    present = {k[len(prefix) :] for k in keys if k.startswith(prefix)}
    # Declared keys are read even when absent, so their defaults apply.
    return present | {field.alias for name, field in Settings.model_fields.items() if name != "project"}


# ---- helpers ------------------------------------------------------------------


def _as_list(v: Any, info: ValidationInfo, *, what: str) -> Any:
    """A list setting as the engine passes it: JSON text (or, typed, a list).

    Any other string is what `pulumi config set KEY VALUE` without `--path` stores;
    it is refused, showing the command that stores a list (Pulumi's typed-config
    check refuses it at `pulumi up` too, with less to go on).
    """
    if not isinstance(v, str):
        return v
    text = v.strip()
    if not text.startswith("["):
        key = f"{NAMESPACE}:{to_camel(info.field_name or '')}"
        first = next((part.strip() for part in text.split(",") if part.strip()), "<item>")
        raise ValueError(
            "not a list; store one item per index: "
            f"pulumi config set --path '{key}[0]' {first} (then [1], ...)"
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"not a JSON list of {what}") from None


def _is_rfc1918(net: ipaddress.IPv4Network) -> bool:
    return any(net.subnet_of(private) for private in _RFC1918)


def _ipv4_network(text: str) -> ipaddress.IPv4Network:
    if "/" not in text:
        raise ValueError(f"{text!r} is not a CIDR (write e.g. {text}/32)")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid CIDR") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError(f"{text!r} is IPv6; the cluster network is IPv4 only")  # noqa: TRY004 (pydantic wants ValueError)
    if str(net) != text:
        raise ValueError(f"{text!r} has host bits set; did you mean {str(net)!r}?")
    return net


def _private_range(text: str, shortest: int, longest: int) -> str:
    net = _ipv4_network(text)
    if not _is_rfc1918(net):
        raise ValueError("not inside an RFC 1918 private range")
    if not shortest <= net.prefixlen <= longest:
        raise ValueError(f"prefix must be /{shortest} to /{longest}")
    return str(net)


def _clean(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def _first_message(e: ValidationError) -> str:
    return _clean(e.errors()[0]["msg"])


def _describe(err: Mapping[str, Any]) -> str:
    loc = str(err["loc"][0]) if err["loc"] else "?"
    # Errors are located by alias (the config key) when validated from config.
    name = next((n for n, f in Settings.model_fields.items() if loc in (n, f.alias)), loc)
    field = Settings.model_fields.get(name)
    key = PROJECT_KEY if name == "project" else Settings.config_keys().get(str(name), str(name))
    # Inside an object setting: name the member, as `pulumi config set --path` does.
    key += "".join(f".{part}" for part in err["loc"][1:] if isinstance(part, str))
    allowed = (field.json_schema_extra or {}).get("allowed") if field else None
    msg = _clean(err["msg"])
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    line = f"{key} = {err.get('input')!r}: {msg}"
    if allowed and "allowed:" not in line:
        line += f" (allowed: {allowed})"
    return line


def _report(lines: list[str]) -> str:
    return "invalid settings (nothing was created):\n  " + "\n  ".join(lines)
