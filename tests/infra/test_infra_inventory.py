"""Reviewed inventory snapshots: every resource of each scenario, compared exactly.

tests/infra/inventory/<scenario>.yaml lists each resource's type, name,
parent and inputs (secrets masked; the three large metadata values, the
RayCluster's spec and the workloads ConfigMap's files replaced by what
produces them, each of which has its own tests). Settings of the other
platform (infra.settings.PLATFORM_ONLY) are left out of the settings shown:
the program cannot read them. Any change to what
`pulumi up` would create shows up as a diff of these files. After reviewing a
change, regenerate with:

    UPDATE_INVENTORY=1 .venv/bin/python -m pytest tests/infra -q
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from cluster import layout
from infra import offline as harness
from infra.settings import NAMESPACE, PLATFORM_ONLY, Settings

INVENTORY_DIR = Path(__file__).parent / "inventory"
PLACEHOLDERS = {
    "startup-script": "<infra.boot.render_boot_script()>",
    layout.META_BUNDLE: "<base64 of cluster.bundle.build_bundle(project root)>",
    layout.META_CLUSTER_CONFIG: "<stack output clusterConfig>",
}
RAYCLUSTER_SPEC = "<cluster.kuberay.render_raycluster(spec, facts)['spec']>"
WORKLOAD_FILES = "<cluster.kuberay.read_workloads()>"


def _mask(value: Any) -> Any:
    if harness.is_secret(value):
        return "[secret]"
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def cluster_config_summary(text: str) -> dict[str, Any]:
    """What the settings decide in the cluster YAML (the rest is cluster/'s own snapshot)."""
    config = yaml.safe_load(text)
    types = {}
    for name, t in sorted(config["available_node_types"].items()):
        node = t["node_config"]
        types[name] = {
            "machineType": node["machineType"],
            "min_workers": t.get("min_workers", 0),
            "max_workers": t.get("max_workers", 0),
            "provisioningModel": node.get("scheduling", {}).get("provisioningModel"),
            "serviceAccount": node["serviceAccounts"][0]["email"],
            "subnetwork": node["networkInterfaces"][0]["subnetwork"],
            "image": node["disks"][0]["initializeParams"]["sourceImage"],
        }
    return {
        "cluster_name": config["cluster_name"],
        "max_workers": config["max_workers"],
        "provider": config["provider"],
        "node_types": types,
    }


def inventory(rec) -> dict[str, Any]:
    entries = []
    for r in rec.resources:
        props = _mask(r["inputs"])
        if r["type"] == "gcp:compute/instance:Instance":
            props["metadata"] = {
                k: PLACEHOLDERS.get(k, v) for k, v in props["metadata"].items()
            }
        elif r["type"] == "kubernetes:ray.io/v1:RayCluster":
            props["spec"] = RAYCLUSTER_SPEC
        elif r["type"] == "kubernetes:core/v1:ConfigMap":
            props["data"] = {name: WORKLOAD_FILES for name in props["data"]}
        entries.append(
            {"type": r["type"], "name": r["name"], "parent": rec.parent_name(r), "inputs": props}
        )
    entries.sort(key=lambda e: (e["parent"] != "<stack>", e["parent"], e["type"], e["name"]))
    settings = harness.engine_config(__import__("conftest").ALL_SCENARIOS[rec.scenario])
    platform = settings[f"{NAMESPACE}:platform"]
    unread = {
        Settings.config_keys()[field]
        for other, fields in PLATFORM_ONLY.items() if other != platform for field in fields
    }
    doc = {
        "scenario": rec.scenario,
        "settings": {k: v for k, v in settings.items() if k not in unread},
        "invokes": rec.data["invokes"],
        "outputs": {k: v for k, v in rec.outputs.items() if k != "clusterConfig"},
        "resource_count": len(entries),
        "resources": entries,
    }
    if "clusterConfig" in rec.outputs:
        doc["cluster_config_summary"] = cluster_config_summary(rec.outputs["clusterConfig"])
    return doc


def _dump(doc: dict[str, Any]) -> str:
    # Sorted keys: the engine hands inputs over as protobuf maps, whose order is arbitrary.
    return yaml.safe_dump(doc, sort_keys=True, width=100, default_flow_style=False)


def test_inventory_matches_the_reviewed_snapshot(any_scenario):
    path = INVENTORY_DIR / f"{any_scenario.scenario}.yaml"
    text = _dump(inventory(any_scenario))
    if os.environ.get("UPDATE_INVENTORY") == "1":
        INVENTORY_DIR.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no snapshot {path}: run with UPDATE_INVENTORY=1 and review it"
    assert path.read_text() == text, (
        f"{path.name} differs from what the program declares now; review the change, then "
        "regenerate with UPDATE_INVENTORY=1 .venv/bin/python -m pytest tests/infra"
    )
