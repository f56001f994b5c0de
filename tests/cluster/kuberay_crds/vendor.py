"""Re-vendor the KubeRay CRD schemas from a ray-project/kuberay git checkout.

    python tests/cluster/kuberay_crds/vendor.py /path/to/kuberay/.git v1.7.0

For each of RayCluster, RayJob, RayService: the ``openAPIV3Schema`` of the
``v1`` version (the one cluster.kuberay renders; v1alpha1 is left out) in ``ray-operator/config/crd/bases/ray.io_<plural>.yaml`` at the tag,
with the prose ``description`` strings and the ``status`` subtree removed
(neither constrains what we create; together they are ~95% of the 0.9-1.4 MB
files). Everything that validates (types, required, enums, patterns,
formats, x-kubernetes-* markers, defaults) is kept verbatim. Written as
sorted, compact JSON plus SOURCE.json (tag, commit, file blob ids).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}


def strip(node):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                continue
            out[key] = strip(value)
        return out
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(git_dir: str, tag: str) -> None:
    import yaml

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True, text=True
        ).stdout

    commit = git("rev-parse", f"{tag}^{{commit}}").strip()
    source = {
        "repository": "https://github.com/ray-project/kuberay",
        "tag": tag,
        "commit": commit,
        "license": "Apache-2.0",
        "files": {},
    }
    for kind, plural in KINDS.items():
        path = f"ray-operator/config/crd/bases/ray.io_{plural}.yaml"
        crd = yaml.safe_load(git("show", f"{tag}:{path}"))
        assert crd["spec"]["names"]["kind"] == kind, path
        versions = {}
        for v in crd["spec"]["versions"]:
            if v["name"] != "v1":
                continue
            schema = strip(v["schema"]["openAPIV3Schema"])
            schema.get("properties", {}).pop("status", None)
            versions[v["name"]] = {
                "served": v["served"],
                "storage": v["storage"],
                "openAPIV3Schema": schema,
            }
        out = {"group": crd["spec"]["group"], "kind": kind, "versions": versions}
        (HERE / f"{plural}.schema.json").write_text(
            json.dumps(out, sort_keys=True, separators=(",", ":")) + "\n"
        )
        source["files"][f"{plural}.schema.json"] = {
            "path": path,
            "blob": git("rev-parse", f"{tag}:{path}").strip(),
        }
    (HERE / "SOURCE.json").write_text(json.dumps(source, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
