"""What `python -m infra.offline` reads from `--set` and prints after the resources.

`parse_set_items` takes `--set KEY=VALUE` items the way `pulumi config set` stores
them: a plain `KEY=VALUE` as the string VALUE (a list setting may also be given as
the JSON list its stack file holds), and `KEY[N]=VALUE` the way
`pulumi config set --path 'KEY[N]' VALUE` does (an index at most the list's length,
`true`/`false` and integers typed). `check_overrides` refuses, before anything
runs, what the stack could not hold or the program would never read.
`summary_lines` prints the effective settings and the cluster they render, read
back from the stack outputs, in the same form on both platforms.

Pure functions (no Pulumi import): the harness in infra/offline.py runs the program.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from cluster.spec import ClusterSpec
from infra.offline import pulumi_yaml

NAMESPACE = "ray-gcp"
PROJECT_KEY = "gcp:project"
# What Pulumi's Python SDK accepts for a typed config value (pulumi.Config.get_bool /
# get_int); anything else it refuses with ConfigTypeError, so we refuse it too.
PULUMI_BOOLEANS = ("true", "True", "false", "False")
# What a declared setting without a default means when the stack leaves it unset.
UNSET_MEANING = {f"{NAMESPACE}:fallbackZones": "the region's other zones, after zone"}
_INDEXED = re.compile(r"^(?P<key>[^\[\].]+)\[(?P<index>\d+)\]$")


def declared_settings() -> dict[str, dict[str, Any]]:
    """Pulumi.yaml's `config:` block: every setting with its type (and default)."""
    return pulumi_yaml()["config"]


# ---- --set ----------------------------------------------------------------------


def parse_set_items(items: list[tuple[str, str]]) -> tuple[dict[str, Any], list[str]]:
    """`--set` (key, value) pairs, in order, as the stack would store them.

    Returns the overrides (key -> string, or list for an indexed key) and the
    problems of items Pulumi would refuse to store.
    """
    declared = declared_settings()
    overrides: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in items:
        base = re.split(r"[\[.]", key, maxsplit=1)[0]
        if base == key or ":" not in base:  # a plain key (check_overrides checks the namespace)
            overrides[key] = value
            continue
        is_list = declared.get(base, {}).get("type") == "array"
        indexed = _INDEXED.match(key)
        where = f"--set {key}={value}"
        if not is_list:
            kind = "is not a list" if base in declared else "is not a list setting of this project"
            problems.append(f"{where}: {base} {kind}")
            continue
        if indexed is None:
            problems.append(f"{where}: {base} is a list: give an index, e.g. --set '{base}[0]=...'")
            continue
        current = _as_list(overrides.get(base, []))
        if current is None:
            problems.append(f"{where}: {base} was set to a plain value before; give the list "
                            f"as JSON or index it from [0]")
            continue
        index = int(indexed["index"])
        if index > len(current):
            problems.append(f"{where}: index {index} is past the end of the list "
                            f"({len(current)} items): set [{len(current)}] first")
            continue
        item = _pulumi_path_value(value)
        overrides[base] = [*current[:index], item, *current[index + 1:]]
    return overrides, problems


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return None
    return parsed if isinstance(parsed, list) else None


def _pulumi_path_value(value: str) -> Any:
    """How `pulumi config set --path` types a value inside a list (config/map.go)."""
    if value in ("true", "false"):
        return value == "true"
    if re.fullmatch(r"-?[1-9]\d*|0", value):
        return int(value)
    return value


def check_overrides(overrides: dict[str, Any]) -> list[str]:
    """Problems with `--set` items, before anything runs: a key without its namespace
    (Pulumi files a bare key under the project's namespace only via `pulumi config
    set`; the program would never see it), a key of a namespace the program never
    reads, and a value of the wrong type for the key Pulumi.yaml declares."""
    declared = declared_settings()
    problems = []
    for key, value in overrides.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        where = f"--set {key}={shown}"
        namespace, sep, name = key.partition(":")
        if not sep or not namespace or not name:
            hint = f"{NAMESPACE}:{key}" if f"{NAMESPACE}:{key}" in declared else f"{NAMESPACE}:<setting>"
            problems.append(f"{where}: a key needs its namespace (allowed: {hint}, or "
                            f"{PROJECT_KEY} for the project)")
            continue
        if namespace != NAMESPACE and key != PROJECT_KEY:
            problems.append(
                f"{where}: not read by this program: it reads only {NAMESPACE}:* settings and "
                f"{PROJECT_KEY} (every resource's region and zone come from "
                f"{NAMESPACE}:region and {NAMESPACE}:zone)"
            )
            continue
        typ = declared.get(key, {}).get("type")
        if typ == "boolean" and value not in PULUMI_BOOLEANS:
            problems.append(f"{where}: not a boolean (allowed: true or false)")
        elif typ == "integer":
            try:
                int(value)
            except ValueError:
                problems.append(f"{where}: not an integer (allowed: e.g. 0, 6, 10)")
        elif typ == "array":
            items = _as_list(value)
            if items is None:
                parts = [p.strip() for p in str(value).split(",") if p.strip()] or ["<item>"]
                problems.append(
                    f"{where}: not a list (allowed: a JSON list, --set '{key}={json.dumps(parts)}', "
                    f"or one item per index as `pulumi config set --path` takes it, "
                    f"--set '{key}[0]={parts[0]}')"
                )
            elif not all(isinstance(item, str) for item in items):
                problems.append(f"{where}: not a list of strings (Pulumi stores true, false "
                                "and integers inside a list as such)")
    return problems


# ---- the summary ------------------------------------------------------------------


def settings_lines(config: dict[str, str], changed: set[str]) -> list[str]:
    """The effective settings, `*` marking those --set changed."""
    lines = [
        ("settings (* = set with --set; others are Pulumi.yaml's defaults, and gcp:project "
         "is this harness's mock project unless --set):")
    ]
    keys = {k for k in config if k.startswith(f"{NAMESPACE}:") or k == PROJECT_KEY}
    for key in sorted(keys | set(declared_settings())):
        mark = "*" if key in changed else " "
        value = config.get(key)
        if value is None:
            value = f"(unset: {UNSET_MEANING[key]})" if key in UNSET_MEANING else "(unset)"
        lines.append(f" {mark} {key} = {value}")
    return lines


@dataclass(frozen=True)
class NodeGroup:
    """One node type of the rendered cluster, as both platforms describe it."""

    name: str
    role: str  # "head" or "workers"
    count: str  # "1" or "min-max"
    machine_type: str
    accelerators: str  # "" or ", <count> x <type>"
    scheduling: str  # SPOT or STANDARD
    resources: dict[str, Any]  # what Ray schedules with

    def line(self) -> str:
        return (f"  {self.name}: {self.role} {self.count}, {self.machine_type}{self.accelerators}, "
                f"{self.scheduling}, resources {self.resources}")


@dataclass(frozen=True)
class ClusterView:
    title: str
    max_workers: int
    idle_timeout_minutes: float
    zones: str
    bucket: str
    groups: tuple[NodeGroup, ...]

    def lines(self) -> list[str]:
        return [
            (f"{self.title}: at most {self.max_workers} workers in all, "
             f"idle timeout {self.idle_timeout_minutes:g} min"),
            f"  {self.zones}",
            f"  workload bucket {self.bucket}",
            *(g.line() for g in sorted(self.groups, key=lambda g: g.name)),
        ]


def cluster_view(outputs: dict[str, Any]) -> ClusterView:
    """The cluster the stack renders, from its outputs: the `ray up` config (vm) or
    the spec the KubeRay objects render (gke)."""
    if "clusterConfig" in outputs:
        return _vm_view(yaml.safe_load(outputs["clusterConfig"]), outputs["bucket"])
    return _gke_view(outputs["clusterSpec"], outputs["gkeLocation"], outputs["bucket"])


def _vm_view(cluster: dict[str, Any], bucket: str) -> ClusterView:
    provider = cluster["provider"]
    zone, fallback = provider["availability_zone"], provider.get("fallback_zones") or []
    zones = (f"zones: {zone}, then {', '.join(fallback)} when it has no capacity"
             if fallback else f"zones: {zone} only (zone fallback off)")
    groups = []
    for name, node_type in cluster["available_node_types"].items():
        node = node_type["node_config"]
        head = name == cluster["head_node_type"]
        guests = node.get("guestAccelerators") or []
        groups.append(NodeGroup(
            name=name,
            role="head" if head else "workers",
            count="1" if head else f"{node_type['min_workers']}-{node_type['max_workers']}",
            machine_type=node["machineType"].rsplit("/", 1)[-1],
            accelerators="".join(
                f", {g['acceleratorCount']} x {g['acceleratorType'].rsplit('/', 1)[-1]}"
                for g in guests),
            scheduling=node.get("scheduling", {}).get("provisioningModel", "STANDARD"),
            resources=node_type["resources"],
        ))
    return ClusterView(
        title=f"cluster {cluster['cluster_name']!r}",
        max_workers=cluster["max_workers"],
        idle_timeout_minutes=cluster["idle_timeout_minutes"],
        zones=zones,
        bucket=bucket,
        groups=tuple(groups),
    )


def _gke_view(spec_output: dict[str, Any], location: str, bucket: str) -> ClusterView:
    spec = ClusterSpec.model_validate(spec_output)
    groups = []
    for name, t in spec.node_types.items():
        head = name == spec.head_node_type
        groups.append(NodeGroup(
            name=name,
            role="head" if head else "workers",
            count="1" if head else f"{t.min_workers}-{t.max_workers}",
            machine_type=t.machine_type,
            accelerators=f", {t.accelerator_count} x {t.accelerator_type}" if t.is_gpu else "",
            scheduling="SPOT" if t.spot else "STANDARD",
            # What each Pod's `ray start` gets (cluster/ray_start.py), as on VMs.
            resources=t.ray_resources(),
        ))
    return ClusterView(
        title=f"cluster {spec.cluster_name!r} (KubeRay)",
        max_workers=spec.max_workers,
        idle_timeout_minutes=spec.idle_timeout_minutes,
        zones=f"zone: {location} (GKE: one zonal cluster, no zone fallback)",
        bucket=bucket,
        groups=tuple(groups),
    )


def summary_lines(result: dict[str, Any], config: dict[str, str], changed: set[str]) -> list[str]:
    """The effective settings, then the cluster they render (read back from the outputs)."""
    outputs = {key: out["value"] for key, out in result["outputs"].items()}
    return settings_lines(config, changed) + cluster_view(outputs).lines()
