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

from cluster.spec import (
    CLUSTER_NAME_MAX_LEN,
    DEFAULT_CPU_WORKER_TYPE,
    DEFAULT_HEAD_TYPE,
    ClusterSpec,
)
from infra.regions import REGION_ZONES, zones_of

NAMESPACE = "ray-gcp"
PROJECT_KEY = "gcp:project"

# Google's IAP TCP forwarding connects from this range (documented, fixed).
IAP_SOURCE_RANGE = "35.235.240.0/20"

_MACHINE_TYPE_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")
_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_RFC1918 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
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
        default="asia-northeast3",
        description="GCP region of the network, bucket, secrets and every VM.",
        **_allowed("one of the regions in infra/regions.py, e.g. asia-northeast3, us-central1"),
    )
    zone: str = Field(
        default="asia-northeast3-a",
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
    cluster_name: str = Field(
        default="ray-gcp",
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
        default="n2-standard-4",
        description="Machine type of the Ray head node.",
        **_allowed("a GCE machine type name with its vCPU count, such as n2-standard-4"),
    )
    worker_machine_type: str = Field(
        default="n2-standard-4",
        description="Machine type of the autoscaled Ray worker nodes.",
        **_allowed("a GCE machine type name with its vCPU count, such as n2-standard-8"),
    )
    min_workers: int = Field(
        default=0,
        description="Workers the autoscaler keeps running at all times.",
        **_allowed("an integer >= 0 and <= maxWorkers"),
    )
    max_workers: int = Field(
        default=6,
        description="Upper bound on autoscaled workers (>= minWorkers, <= 1000).",
        **_allowed("an integer >= minWorkers and <= 1000"),
    )
    spot_workers: bool = Field(
        default=False,
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
    subnet_cidr: str = Field(
        default="10.10.0.0/20",
        description="Primary IPv4 range of the cluster subnet (RFC 1918, /8 to /29).",
        **_allowed("a private (RFC 1918) IPv4 CIDR between /8 and /29, e.g. 10.10.0.0/20"),
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
    def _fallback_list(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().startswith("["):
            try:
                return json.loads(v)
            except json.JSONDecodeError:
                raise ValueError("not a JSON list of zone names") from None
        return _as_list(v)

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

    @field_validator("cluster_name")
    @classmethod
    def _cluster_name(cls, v: str) -> str:
        # The cluster spec owns the rule (Ray's VM names must fit GCE's 63 characters).
        try:
            ClusterSpec(cluster_name=v)
        except ValidationError as e:
            raise ValueError(_first_message(e)) from None
        return v

    @field_validator("provider_machine_type", "head_machine_type", "worker_machine_type")
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

    @field_validator("ssh_source_ranges", mode="before")
    @classmethod
    def _ssh_list(cls, v: Any) -> Any:
        return _as_list(v)

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

    @field_validator("subnet_cidr")
    @classmethod
    def _subnet_cidr(cls, v: str) -> str:
        net = _ipv4_network(v)
        if not _is_rfc1918(net):
            raise ValueError("not inside an RFC 1918 private range")
        if not 8 <= net.prefixlen <= 29:
            raise ValueError("GCE subnets are /8 to /29")
        return str(net)

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
        zones = zones_of(self.region)
        i = zones.index(self.zone)
        return tuple(zones[i + 1 :] + zones[:i])

    def cluster_spec(self) -> ClusterSpec:
        """The Ray cluster spec these settings describe (validated by cluster.spec)."""
        return ClusterSpec.from_settings(
            cluster_name=self.cluster_name,
            head_machine_type=self.head_machine_type,
            worker_machine_type=self.worker_machine_type,
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            spot_workers=self.spot_workers,
        )

    @classmethod
    def config_keys(cls) -> dict[str, str]:
        """Field name -> `ray-gcp:<key>` for every key this project declares."""
        return {
            name: f"{NAMESPACE}:{field.alias}"
            for name, field in cls.model_fields.items()
            if name != "project"
        }


# Which setting a cluster-spec error is about, by the spec's error location.
_SPEC_LOC_TO_FIELD = {
    "cluster_name": "cluster_name",
    DEFAULT_HEAD_TYPE: "head_machine_type",
    DEFAULT_CPU_WORKER_TYPE: "worker_machine_type",
    "max_workers": "max_workers",
}


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


def _as_list(v: Any) -> Any:
    """Pulumi passes arrays as JSON text; also accept `a,b` from `pulumi config set`."""
    if isinstance(v, str):
        text = v.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("not a JSON list of CIDRs") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return v


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
    allowed = (field.json_schema_extra or {}).get("allowed") if field else None
    line = f"{key} = {err.get('input')!r}: {_clean(err['msg'])}"
    if allowed and "allowed:" not in line:
        line += f" (allowed: {allowed})"
    return line


def _report(lines: list[str]) -> str:
    return "invalid settings (nothing was created):\n  " + "\n  ".join(lines)
