"""Command line for the cluster package.

    python -m cluster local up|down|status [--state-dir DIR] [--autoscaler-v2]
    python -m cluster render --target gcp|local [--spec SPEC.yaml] [--facts FACTS.json]
                             [--project P] [--region R]
    python -m cluster render --target kuberay --kind raycluster|rayjob|rayservice|core
                             [--spec SPEC.yaml] [--facts KUBEFACTS.json] [--project P]
    python -m cluster requirements [--check]

``render --target gcp`` without ``--facts`` uses example facts (project
``my-ray-project`` or ``--project``): a preview of what ``pulumi up`` puts on
the provider VM. ``--facts`` takes a JSON (or YAML) object with GcpFacts'
fields; ``--spec`` a ClusterSpec as YAML/JSON (default: the default spec).
``--target kuberay`` prints KubeRay manifests for ``kubectl apply -f -``
(``--kind core``: Namespace, ServiceAccount, NetworkPolicy and the workloads
ConfigMap, as a multi-document stream); ``--facts`` then takes KubeFacts'
fields (default: example facts with bucket ``<project>-ray-workloads``).
``requirements`` rewrites cluster/requirements-node.txt from uv.lock
(``--check`` only compares and exits 1 on drift).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_STATE_DIR = Path(".ray-local")


def _local(args: argparse.Namespace) -> int:
    from cluster.local import LocalCluster

    lc = LocalCluster(args.state_dir, autoscaler_v2=args.autoscaler_v2)
    if args.action == "up":
        print(f"starting local Ray cluster (state in {lc.state_dir}) ...", flush=True)
        lc.up()
        print(f"up: GCS {lc.address}, dashboard {lc.dashboard_url}")
        print("driver environment:")
        for k, v in sorted(lc.driver_env().items()):
            print(f"  export {k}={v}")
    elif args.action == "down":
        pids = lc.down()
        print(f"down: stopped {len(pids)} processes started from {lc.state_dir}")
    else:
        if not lc.is_up():
            print(f"no local cluster running from {lc.state_dir}")
            return 1
        print(f"GCS {lc.address}, dashboard {lc.dashboard_url}")
        print(lc.status().summary())
    return 0


def _load_mapping(path: Path) -> dict:
    import yaml

    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping of field: value")
    return data


def _render(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cluster.render import example_facts, render_gcp, render_local, to_yaml
    from cluster.spec import ClusterSpec, GcpFacts, local_default_spec

    try:
        if args.spec:
            spec = ClusterSpec.model_validate(_load_mapping(args.spec))
        else:
            spec = ClusterSpec() if args.target != "local" else local_default_spec()
        if args.target == "kuberay":
            return _render_kuberay(args, spec)
        if args.target == "local":
            cfg = render_local(spec, gcs_port=args.gcs_port)
        else:
            if args.facts:
                facts = GcpFacts.model_validate(_load_mapping(args.facts))
            else:
                facts = example_facts(project=args.project, region=args.region)
            cfg = render_gcp(spec, facts)
    except ValidationError as e:
        print(f"invalid input:\n{e}", file=sys.stderr)
        return 2
    sys.stdout.write(to_yaml(cfg))
    return 0


def _render_kuberay(args: argparse.Namespace, spec) -> int:
    from cluster import kuberay
    from cluster.spec import SpecError

    if args.facts:
        facts = kuberay.KubeFacts.model_validate(_load_mapping(args.facts))
    else:
        facts = kuberay.example_kube_facts(project=args.project)
    try:
        if args.kind == "raycluster":
            objs = [kuberay.render_raycluster(spec, facts)]
        elif args.kind == "rayjob":
            objs = [kuberay.render_rayjob(spec, facts)]
        elif args.kind == "rayservice":
            objs = [kuberay.render_rayservice(spec, facts)]
        else:
            objs = kuberay.render_core_objects(spec, facts, kuberay.read_workloads())
    except SpecError as e:
        print(f"invalid input: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(kuberay.to_yaml_documents(objs))
    return 0


def _requirements(args: argparse.Namespace) -> int:
    from cluster.bundle import REQUIREMENTS_PATH, export_requirements

    root = Path.cwd()
    want = export_requirements(root)
    path = root / REQUIREMENTS_PATH
    have = path.read_text() if path.exists() else ""
    if args.check:
        if have != want:
            print(f"{REQUIREMENTS_PATH} differs from uv.lock: run `python -m cluster requirements`")
            return 1
        print(f"{REQUIREMENTS_PATH} matches uv.lock")
        return 0
    path.write_text(want)
    print(f"wrote {REQUIREMENTS_PATH} ({want.count('==')} pinned packages)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    local = sub.add_parser("local", help="a local autoscaling Ray cluster with fake nodes")
    local.add_argument("action", choices=["up", "down", "status"])
    local.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where pids, ports, token and config live (default: .ray-local/)",
    )
    local.add_argument(
        "--autoscaler-v2", action="store_true", help="up: run Ray's v2 autoscaler (as `ray up`)"
    )
    render = sub.add_parser(
        "render", help="print a Ray autoscaler config or KubeRay manifests as YAML"
    )
    render.add_argument("--target", choices=["gcp", "local", "kuberay"], required=True)
    render.add_argument(
        "--kind",
        choices=["raycluster", "rayjob", "rayservice", "core"],
        default="raycluster",
        help="kuberay target: which manifest (core = Namespace, KSA, NetworkPolicy, ConfigMap)",
    )
    render.add_argument("--spec", type=Path, help="ClusterSpec as YAML/JSON")
    render.add_argument(
        "--facts", type=Path, help="GcpFacts (gcp) or KubeFacts (kuberay) as JSON/YAML"
    )
    render.add_argument("--project", default="my-ray-project", help="example facts' project")
    render.add_argument("--region", default="asia-northeast3", help="example facts' region")
    render.add_argument("--gcs-port", type=int, default=6379, help="local target's GCS port")
    reqs = sub.add_parser("requirements", help="regenerate cluster/requirements-node.txt")
    reqs.add_argument("--check", action="store_true", help="only compare with uv.lock")
    args = parser.parse_args(argv)
    if args.command == "local":
        return _local(args)
    if args.command == "render":
        return _render(args)
    if args.command == "requirements":
        return _requirements(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
