"""Which GCP permissions each of our accounts needs, from recorded calls and Google's data.

Three inputs, all checked in next to this file:

- ``calls.yaml``: every GCP REST method each actor (provider VM, Ray head, Ray
  workers, GKE nodes) calls, *recorded* by tests/infra/iam/test_iam_calls.py
  from Ray's real code paths, the boot script, the workloads' GCS client, the
  log shipper and the log reader; plus ``AGENT_CALLS`` below, the calls of
  Google's own agents that run on our machines but not here (marked
  ``declared_by``). Never edited by hand (``UPDATE_CALLS=1`` regenerates it).
- ``data/``: a pinned subset of iann0036/iam-dataset (MIT): ``map.json`` maps
  each REST method to the permissions it checks, ``roles/*.json`` hold the
  predefined roles' ``includedPermissions``. See ``data/SOURCE.md``.
- ``RULES`` below: where the method map and what GCP checks for *our* requests
  differ, in both directions, each with the reason.

``needed(call)`` turns one recorded call into ``(permission, scope)`` pairs;
``custom_role_permissions(actor)`` is the project-level part of that, over all
of the actor's calls: exactly what the ``launcher`` and ``autoscaler`` custom
roles hold (infra/components/identity.py).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
CALLS_FILE = HERE / "calls.yaml"
DATA_DIR = HERE / "data"

ACTORS = ("provider", "head", "worker", "gke-node")
PROJECT = "project"
# The part of the bucket the shipped Ray logs live in (cluster/logpaths.py LOG_PREFIX).
LOGS = "bucket:logs/"
# customRoles: role name -> the actor whose recorded calls define it.
CUSTOM_ROLES = {"launcher": "provider", "autoscaler": "head"}


@dataclass(frozen=True)
class Call:
    """One recorded REST call, reduced to what decides its permissions.

    on: what it acts on: ``project``, ``account:<who>``, ``secret:<name>``,
    ``bucket``, ``bucket:logs/`` (only objects under ``logs/``).
    attaches: accounts named in the body (``serviceAccounts[].email``), as ``account:<who>``.
    params: request parameter names; ``name=value`` for the few enum-like ones
    whose value changes the permission check (projection, alt, uploadType).
    body_paths: every field path in the request body, ``$.a[].b`` (map values not entered).
    declared_by: empty for a recorded call; for one of ``AGENT_CALLS``, which
    Google agent makes it and where Google documents that.
    """

    method: str
    on: str
    attaches: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    body_paths: tuple[str, ...] = ()
    declared_by: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "on": self.on}
        for key in ("attaches", "params", "body_paths"):
            if getattr(self, key):
                out[key] = list(getattr(self, key))
        if self.declared_by:
            out["declared_by"] = self.declared_by
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Call:
        return cls(
            method=d["method"],
            on=d["on"],
            attaches=tuple(d.get("attaches", ())),
            params=tuple(d.get("params", ())),
            body_paths=tuple(d.get("body_paths", ())),
            declared_by=d.get("declared_by", ""),
        )


@dataclass(frozen=True)
class Rule:
    """A permission GCP checks (or does not) for a method, beyond the method map.

    when: a body path that must exist (``$.x``), or ``param=value`` that must be
    sent, for the rule to apply; None = always.
    grant: True adds the permission (the allow-list), False drops a map entry
    that does not apply to this request.
    """

    method: str
    permission: str
    when: str | None
    grant: bool
    why: str


# Short and commented on purpose: each entry is a place where Google's
# published method map and the permission GCP actually checks differ.
RULES: tuple[Rule, ...] = (
    # ---- allow-list: GCP checks these on instances.insert, the map omits them
    # ("Create a VM" docs: each optional part of the body has its own permission).
    Rule("compute.instances.insert", "compute.instances.setMetadata", "$.metadata", True,
         "a VM created with metadata (ssh-keys, startup settings)"),
    Rule("compute.instances.insert", "compute.instances.setLabels", "$.labels", True,
         "a VM created with labels (Ray's node tags are labels)"),
    Rule("compute.instances.insert", "compute.instances.setTags", "$.tags", True,
         "a VM created with network tags"),
    # Deleting a VM whose boot disk has autoDelete also deletes that disk.
    Rule("compute.instances.delete", "compute.disks.delete", None, True,
         "the auto-delete boot disk goes with the VM"),
    # ---- map entries that do not apply to our requests.
    Rule("compute.instances.insert", "compute.subnetworks.useExternalIp",
         "$.networkInterfaces[].accessConfigs", False,
         "only for an interface with an external IP; Ray nodes have none"),
    Rule("compute.instances.insert", "compute.instances.pscInterfaceCreate",
         "$.networkInterfaces[].networkAttachment", False,
         "only for a Private Service Connect interface; Ray nodes have none"),
    Rule("storage.objects.get", "storage.objects.getIamPolicy", "projection=full", False,
         "only to return object ACLs (projection=full); the bucket has uniform access"),
    Rule("storage.objects.list", "storage.objects.getIamPolicy", "projection=full", False,
         "only to return object ACLs (projection=full); the bucket has uniform access"),
    # ---- methods the map has no entry for (checked against Google's docs).
    Rule("logging.entries.write", "logging.logEntries.create", None, True,
         "the method map has no entry for it; Cloud Logging's access-control page names "
         "logging.logEntries.create (roles/logging.logWriter) for entries.write"),
)

# Calls of Google's own agents on our machines: they run on a real VM or GKE node,
# not here, so they are declared (with Google's documentation), not recorded.
AGENT_CALLS: dict[str, tuple[Call, ...]] = {
    "provider": (
        Call("logging.entries.write", PROJECT, declared_by=(
            "google-guest-agent's metadata script runner sends the boot script's output "
            "to Cloud Logging (log GCEMetadataScripts): cloud.google.com/compute/docs/"
            "instances/startup-scripts/linux#viewing-output")),
    ),
    "gke-node": (
        Call("logging.entries.write", PROJECT, declared_by=(
            "GKE's logging agent ships node and container logs (the Ray containers' "
            "stdout and stderr): cloud.google.com/kubernetes-engine/docs/how-to/"
            "service-accounts#default-gke-service-agent (minimum node account roles)")),
        Call("monitoring.projects.timeSeries.create", PROJECT, declared_by=(
            "GKE's metrics agent writes node and system metrics: same page, "
            "roles/monitoring.metricWriter")),
    ),
}


# Calls whose PERMISSION_DENIED the caller handles by itself: recorded, never granted.
BEST_EFFORT: dict[str, str] = {
    "storage.buckets.get": (
        "google-cloud-storage's bucket-metadata cache (observability) reads the bucket in a "
        "background thread and falls back to defaults on 403"
    ),
}


@functools.cache
def method_map() -> dict[str, Any]:
    """REST method id -> its entry in the snapshot's gcp/map.json."""
    return json.loads((DATA_DIR / "map.json").read_text())["methods"]


@functools.cache
def role_permissions(role: str) -> frozenset[str]:
    """includedPermissions of a predefined role (``roles/x.y``) from the snapshot."""
    path = DATA_DIR / "roles" / f"{role.removeprefix('roles/')}.json"
    if not path.is_file():
        raise KeyError(f"role {role} is not in the IAM snapshot {DATA_DIR}; refresh it")
    return frozenset(json.loads(path.read_text())["includedPermissions"])


def _applies(when: str | None, call: Call) -> bool:
    if when is None:
        return True
    if when.startswith("$."):
        return any(p == when or p.startswith((when + ".", when + "[]"))
                   for p in call.body_paths)
    return when in call.params


def _scope(permission: str, call: Call) -> list[str]:
    """Where a permission is checked for this call."""
    if permission == "iam.serviceAccounts.actAs":
        return list(call.attaches)
    service = permission.split(".", 1)[0]
    if service in ("iam", "secretmanager", "storage") and call.on != PROJECT:
        return [call.on]
    return [PROJECT]


def needed(call: Call) -> set[tuple[str, str]]:
    """(permission, scope) pairs GCP checks for one call (none for BEST_EFFORT calls)."""
    if call.method in BEST_EFFORT:
        return set()
    entry = method_map().get(call.method)
    if entry is None and any(r.method == call.method and r.grant for r in RULES):
        entry = {}  # a method the map lacks: its permissions come from RULES
    if entry is None:
        raise KeyError(
            f"{call.method} is not in the IAM snapshot's method map ({DATA_DIR}/map.json); "
            "refresh the snapshot (infra/README.md, 'IAM data')"
        )
    perms: set[str] = set()
    for p in entry.get("permissions", []):
        cond = p.get("condition", {}).get("bodyPathExists")
        if cond and not _applies(cond, call):
            continue
        # Permissions the map ties to an optional query parameter apply only when it is sent.
        if p.get("parameterType") == "query" and p.get("parameterName") not in {
            q.split("=", 1)[0] for q in call.params
        }:
            continue
        perms.add(p["name"])
    for rule in RULES:
        if rule.method != call.method:
            continue
        if rule.grant and _applies(rule.when, call):
            perms.add(rule.permission)
        if not rule.grant and not _applies(rule.when, call):
            perms.discard(rule.permission)
    return {(perm, scope) for perm in perms for scope in _scope(perm, call)}


def load_calls(path: Path = CALLS_FILE) -> dict[str, list[Call]]:
    """calls.yaml: actor -> recorded calls."""
    doc = yaml.safe_load(path.read_text())
    return {actor: [Call.from_dict(c) for c in doc.get(actor) or []] for actor in ACTORS}


def needed_by(calls: Iterable[Call]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for call in calls:
        out |= needed(call)
    return out


def custom_role_permissions(actor: str) -> list[str]:
    """The project-level permissions of one actor's recorded calls (sorted). Declared
    calls of Google's agents are not in it: their predefined role is granted as is."""
    recorded = [c for c in load_calls()[actor] if not c.declared_by]
    return sorted(perm for perm, scope in needed_by(recorded) if scope == PROJECT)


README_BEGIN = "<!-- generated by infra.iam.readme_section(): begin -->"
README_END = "<!-- generated by infra.iam.readme_section(): end -->"


def readme_section() -> str:
    """The custom-role table and the rules, as infra/README.md shows them (checked by a test)."""
    lines = [README_BEGIN, "", "| Custom role | Account | Permissions |", "|---|---|---|"]
    for role, actor in CUSTOM_ROLES.items():
        perms = ", ".join(f"`{p}`" for p in custom_role_permissions(actor))
        lines.append(f"| `{role}` | {actor} | {perms} |")
    lines += ["", "Where GCP checks more, or less, than the method map shows (`infra/iam` `RULES`):", ""]
    for r in RULES:
        sign = "adds" if r.grant else "drops"
        when = f"when the request has `{r.when}`" if r.grant else f"unless it has `{r.when}`"
        if r.when is None:
            when = "always"
        lines.append(f"- `{r.method}` {sign} `{r.permission}` {when}: {r.why}.")
    lines += ["", "Recorded but never granted (the caller handles PERMISSION_DENIED itself):", ""]
    for method, why in BEST_EFFORT.items():
        lines.append(f"- `{method}`: {why}.")
    lines += ["", README_END]
    return "\n".join(lines)
