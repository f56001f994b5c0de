"""What the Ray cluster consists of: nodes, CPUs, GPUs, and each node's resources.

Lists the alive nodes (head first) with their address, role and total
resources, the cluster totals and what is free right now. On an autoscaling
cluster the answer changes as workers come and go: an idle cluster may be
just the head (which runs no tasks: CPU 0).

Examples:
  python workloads/cluster_info.py
  python workloads/cluster_info.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

try:
    from workloads import common
except ImportError:  # run as a file from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from workloads import common

HEAD_MARKER = "node:__internal_head__"
GIB = 1024**3


def describe(nodes: list[dict], available: dict) -> dict:
    """The report from ray.nodes() and ray.available_resources() (pure)."""
    out_nodes = []
    for n in nodes:
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        public = {k: v for k, v in res.items() if not k.startswith("node:")}
        out_nodes.append({
            "node_id": n["NodeID"],
            "address": n.get("NodeManagerAddress"),
            "hostname": n.get("NodeManagerHostname"),
            "head": HEAD_MARKER in res,
            "cpus": res.get("CPU", 0.0),
            "gpus": res.get("GPU", 0.0),
            "memory_gib": round(res.get("memory", 0.0) / GIB, 2),
            "object_store_gib": round(res.get("object_store_memory", 0.0) / GIB, 2),
            "resources": dict(sorted(public.items())),
        })
    out_nodes.sort(key=lambda x: (not x["head"], x["address"] or "", x["node_id"]))
    totals = {
        "nodes": len(out_nodes),
        "cpus": sum(x["cpus"] for x in out_nodes),
        "gpus": sum(x["gpus"] for x in out_nodes),
    }
    free = {k: v for k, v in sorted(available.items()) if not k.startswith("node:")}
    return {"totals": totals, "available": free, "nodes": out_nodes}


def render_text(report: dict) -> str:
    t = report["totals"]
    shape = common.ClusterShape(t["nodes"], t["cpus"], t["gpus"])
    title = (f"This cluster consists of {shape.describe()} "
             f"(Ray {report['ray_version']}, Python {report['python']})")
    lines = [title]
    for x in report["nodes"]:
        role = "head  " if x["head"] else "worker"
        extra = {k: v for k, v in x["resources"].items()
                 if k not in ("CPU", "GPU", "memory", "object_store_memory")}
        line = (
            f"  {role} {x['address']:<15} {x['node_id'][:12]}  CPU {common._num(x['cpus'])}"
            f"  GPU {common._num(x['gpus'])}  memory {x['memory_gib']} GiB"
            f"  object store {x['object_store_gib']} GiB"
        )
        lines.append(line + (f"  {json.dumps(extra)}" if extra else ""))
    a = report["available"]
    lines.append(f"available now: CPU {common._num(a.get('CPU', 0))}, GPU {common._num(a.get('GPU', 0))}")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(
        prog="cluster_info.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    common.add_connect_arguments(p)
    return p


def main(argv=None) -> int:
    import ray

    args = build_parser().parse_args(argv)
    common.connect(args.address, connect_timeout=args.connect_timeout, log_to_driver=False)
    report = describe(ray.nodes(), ray.available_resources())
    report = {"ray_version": ray.__version__, "python": platform.python_version(), **report}
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
