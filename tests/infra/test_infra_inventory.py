"""Reviewed inventory snapshots: every resource of each scenario, compared exactly.

tests/infra/inventory/<scenario>.yaml lists each resource's type, name,
parent and inputs (secrets masked). The three large metadata values of the
provider VM (startup script, bundle, cluster YAML) appear as their sha256 and
size, the bundle also with the sha256 of every file in it, so a change to any
byte the VM boots from shows up in the reviewed diff (and a value that changes
from one process to the next fails here and in test_vm_inputs_reproducible.py).
On GKE the workloads ConfigMap's files appear as sha256 digests the same
way; the RayCluster is listed in full. Settings of the other platform
(infra.settings.PLATFORM_ONLY) are left out of the settings shown: the program
cannot read them. Any change to what `pulumi up` would create shows up as a
diff of these files.
After reviewing a change, regenerate with (it prints the diff it writes):

    UPDATE_INVENTORY=1 .venv/bin/python -m pytest tests/infra -q
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import yaml

from cluster import layout
from infra import offline as harness
from infra.settings import NAMESPACE, PLATFORM_ONLY, Settings

# Overridable so a test can run the update against a copy (test_update_prints_the_diff...).
INVENTORY_DIR = Path(os.environ.get("RAY_GCP_INVENTORY_DIR") or Path(__file__).parent / "inventory")
# The provider VM's metadata values too large to list: snapshotted as digests.
LARGE_VM_INPUTS = ("startup-script", layout.META_BUNDLE, layout.META_CLUSTER_CONFIG)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def large_value_digest(key: str, value: str) -> dict[str, Any]:
    """sha256 and size of a metadata value; for the bundle also of each file in it."""
    digest: dict[str, Any] = {"sha256": sha256(value.encode()), "bytes": len(value.encode())}
    if key == layout.META_BUNDLE:
        raw = base64.b64decode(value)
        files = {}
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read() if member.isfile() else b""
                files[member.name] = f"{oct(member.mode)} {sha256(data)}"
        digest["files"] = files
    return digest


def vm_input_digests(metadata: dict[str, Any]) -> dict[str, Any]:
    return {key: large_value_digest(key, metadata[key]) for key in LARGE_VM_INPUTS}


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
            digests = vm_input_digests(props["metadata"])
            props["metadata"] = {k: digests.get(k, v) for k, v in props["metadata"].items()}
        elif r["type"] == "kubernetes:core/v1:ConfigMap":
            props["data"] = {
                name: {"sha256": sha256(text.encode())} for name, text in props["data"].items()
            }
        entries.append(
            {"type": r["type"], "name": r["name"], "parent": rec.parent_name(r), "inputs": props}
        )
    entries.sort(key=lambda e: (e["parent"] != "<stack>", e["parent"], e["type"], e["name"]))
    settings = harness.engine_config(__import__("conftest").ALL_SCENARIOS[rec.scenario])
    platform = settings[f"{NAMESPACE}:platform"]
    unread = {
        Settings.config_keys()[field]
        for other, fields in PLATFORM_ONLY.items()
        if other != platform
        for field in fields
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


def test_inventory_matches_the_reviewed_snapshot(any_scenario, capsys):
    path = INVENTORY_DIR / f"{any_scenario.scenario}.yaml"
    text = _dump(inventory(any_scenario))
    if os.environ.get("UPDATE_INVENTORY") == "1":
        old = path.read_text() if path.exists() else ""
        INVENTORY_DIR.mkdir(exist_ok=True)
        path.write_text(text)
        with capsys.disabled():  # on the terminal even though pytest captures output
            print("\n" + describe_update(path, old, text))
    assert path.exists(), f"no snapshot {path}: run with UPDATE_INVENTORY=1 and review it"
    assert path.read_text() == text, (
        f"{path.name} differs from what the program declares now; review the change, then "
        "regenerate with UPDATE_INVENTORY=1 .venv/bin/python -m pytest tests/infra"
    )


def describe_update(path: Path, old: str, new: str) -> str:
    """The unified diff UPDATE_INVENTORY=1 writes into `path` (or that nothing changed)."""
    diff = "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"a/{path.name}",
            tofile=f"b/{path.name}",
        )
    )
    return f"UPDATE_INVENTORY: {path.name}: " + (f"rewritten:\n{diff}" if diff else "unchanged")


def test_update_prints_the_diff_it_writes(tmp_path, default):
    """UPDATE_INVENTORY=1 against a directory whose default.yaml is stale by one
    line: the run rewrites it and prints exactly the lines it changed."""
    import subprocess
    import sys

    stale = tmp_path / "default.yaml"
    current = _dump(inventory(default))  # what the program declares now
    assert "  cluster_name: ray-gcp\n" in current
    stale.write_text(current.replace("  cluster_name: ray-gcp\n", "  cluster_name: stale-name\n"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "test_inventory_matches_the_reviewed_snapshot and default",
        ],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "UPDATE_INVENTORY": "1", "RAY_GCP_INVENTORY_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert stale.read_text() == current
    out = proc.stdout
    assert "UPDATE_INVENTORY: default.yaml: rewritten:" in out, out
    assert "--- a/default.yaml\n+++ b/default.yaml\n" in out
    assert "-  cluster_name: stale-name\n+  cluster_name: ray-gcp\n" in out
    changed = [line for line in out.splitlines() if line[:1] in "+-" and line[:3] not in "+++---"]
    assert changed == ["-  cluster_name: stale-name", "+  cluster_name: ray-gcp"], out
