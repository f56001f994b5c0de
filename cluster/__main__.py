"""Command line for the cluster package.

    python -m cluster local up|down|status [--state-dir DIR] [--autoscaler-v2]
    python -m cluster render --target gcp|local [--spec SPEC.yaml] [--facts FACTS.json]
                             [--project P] [--region R]
    python -m cluster render --target kuberay --kind raycluster|rayjob|rayservice|core
                             [--spec SPEC.yaml] [--facts KUBEFACTS.json] [--project P]
    python -m cluster render --target kuberay --kind rayjob --job-dir DIR [--job-name N]
                             [--spec ...] [--facts ...] -- COMMAND...
    python -m cluster job check DIR
    python -m cluster job submit DIR [--address URL] [--env K=V]... [--no-wait] -- COMMAND...
    python -m cluster requirements [--check]

``render --target gcp`` without ``--facts`` renders the default ClusterSpec
(the stack's default settings) with the facts ``pulumi up`` would produce
for ``--project`` (default ``my-ray-project``) and ``--region``: the same
names, subnet, bucket and zone; only the pinned image and the launcher key
are placeholders. So it is what ``pulumi up`` with default settings puts on
the provider VM (a test compares it with the stack's ``clusterConfig``).
``--facts`` takes a JSON (or YAML) object with GcpFacts' fields; ``--spec`` a
ClusterSpec as YAML/JSON (default: the default spec). A bad value is reported
as ``field = value: problem (allowed: ...)``, exit status 2.
``--target kuberay`` prints KubeRay manifests for ``kubectl apply -f -``
(``--kind core``: Namespace, ServiceAccount, NetworkPolicy and the workloads
ConfigMap, as a multi-document stream); ``--facts`` then takes KubeFacts'
fields (default: example facts for ``--project``). With ``--job-dir`` the
RayJob runs a user's own job (its folder and uv.lock, ``cluster/userjob.py``)
and comes with the ConfigMap of its files; the job is checked first, as by
``job check``.
``job`` checks a user's job folder against the cluster and submits it
(``cluster/job_cli.py``).
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
        if lc.is_up():
            print(f"already running (state in {lc.state_dir}); nothing started", flush=True)
        else:
            print(f"starting local Ray cluster (state in {lc.state_dir}) ...", flush=True)
        lc.up()
        print(f"up: GCS {lc.address}, dashboard {lc.dashboard_url}")
        print("driver environment (RAY_ADDRESS for drivers, RAY_API_SERVER_ADDRESS for `ray job`):")
        for k, v in sorted(lc.driver_env().items()):
            print(f"  export {k}={v}")
    elif args.action == "down":
        pids = lc.down()
        print(f"down: stopped {len(pids)} processes started from {lc.state_dir}")
        # The token protected only this cluster; the next `up` makes a new one.
        if lc.token_path.exists():
            lc.token_path.unlink()
            print(f"down: removed the auth token {lc.token_path} (the next `up` makes a new one)")
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


def _check_place(project: str, region: str) -> list[str]:
    """--project and --region, checked as the stack checks gcp:project and ray-gcp:region."""
    import difflib
    import re

    from cluster.regions import REGION_ZONES
    from cluster.spec import GcpFacts

    problems = []
    # GcpFacts.project's own rule, so the flag and a --facts file agree.
    project_rule = next(
        m.pattern for m in GcpFacts.model_fields["project"].metadata if hasattr(m, "pattern")
    )
    if not re.match(project_rule, project):
        problems.append(
            f"--project = {project!r}: not a GCP project ID "
            "(allowed: 6-30 of [a-z0-9-], starting with a letter, not ending with a dash)"
        )
    if region not in REGION_ZONES:
        near = difflib.get_close_matches(region, REGION_ZONES, n=3)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        problems.append(
            f"--region = {region!r}: unknown region{hint} (allowed: one of the regions in "
            "cluster/regions.py, e.g. asia-northeast3, us-central1)"
        )
    return problems


def _render(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cluster.errors import describe_all, report
    from cluster.regions import DEFAULT_REGION
    from cluster.render import example_gcp_facts, render_gcp, render_local, to_yaml
    from cluster.spec import ClusterSpec, GcpFacts, local_default_spec

    problems: list[str] = []
    place_flags = [f for f in ("project", "region") if getattr(args, f) is not None]
    if place_flags and (args.target == "local" or (args.facts and args.target == "gcp")):
        used = "--target local" if args.target == "local" else "--facts"
        problems.append(
            f"{', '.join('--' + f for f in place_flags)}: not used with {used} "
            "(the example facts of --target gcp only; a --facts file has its own)"
        )
    if args.target == "local" and args.facts:
        problems.append("--facts: not used with --target local (GCP facts)")
    if args.target == "kuberay" and args.region is not None:
        problems.append("--region: not used with --target kuberay (the pods have no zone)")
    command = args.argv
    if args.job_dir is not None and (args.target, args.kind) != ("kuberay", "rayjob"):
        problems.append("--job-dir: only with --target kuberay --kind rayjob")
    if args.job_dir is None and (command or args.job_name):
        what = "--job-name" if args.job_name else f"command {' '.join(command)!r}"
        problems.append(f"{what}: only with --job-dir (a user's job)")
    project = args.project or "my-ray-project"
    region = args.region or DEFAULT_REGION
    if args.target == "gcp" and not args.facts:
        problems.extend(_check_place(project, region))

    spec = None
    try:
        if args.spec:
            spec = ClusterSpec.model_validate(_load_mapping(args.spec))
        else:
            spec = ClusterSpec() if args.target != "local" else local_default_spec()
    except ValidationError as e:
        problems.extend(describe_all(e, ClusterSpec, prefix=f"{args.spec}: "))
    if args.target == "kuberay":
        if problems:
            print(report(problems), file=sys.stderr)
            return 2
        return _render_kuberay(args, spec, project)

    facts = None
    if args.target == "gcp" and not problems:
        if args.facts:
            try:
                facts = GcpFacts.model_validate(_load_mapping(args.facts))
            except ValidationError as e:
                problems.extend(describe_all(e, GcpFacts, prefix=f"{args.facts}: "))
        else:
            facts = example_gcp_facts(project=project, region=region, cluster_name=spec.cluster_name)
    if problems:
        print(report(problems), file=sys.stderr)
        return 2
    if args.target == "local":
        cfg = render_local(spec, gcs_port=args.gcs_port)
    else:
        cfg = render_gcp(spec, facts)
    sys.stdout.write(to_yaml(cfg))
    return 0


def _render_kuberay(args: argparse.Namespace, spec, project: str) -> int:
    from pydantic import ValidationError

    from cluster import kuberay
    from cluster.errors import describe_all, report
    from cluster.spec import SpecError

    try:
        if args.facts:
            facts = kuberay.KubeFacts.model_validate(_load_mapping(args.facts))
        else:
            facts = kuberay.example_kube_facts(project=project)
    except ValidationError as e:
        print(report(describe_all(e, kuberay.KubeFacts, prefix=f"{args.facts}: ")), file=sys.stderr)
        return 2
    try:
        if args.kind == "raycluster":
            objs = [kuberay.render_raycluster(spec, facts)]
        elif args.kind == "rayjob" and args.job_dir is not None:
            objs = _render_user_job(args, spec, facts)
            if objs is None:
                return 2
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


def _render_user_job(args: argparse.Namespace, spec, facts) -> list[dict] | None:
    """ConfigMap + RayJob for the job in --job-dir, after the same checks as `job submit`."""
    from cluster import job_cli, userjob
    from cluster.errors import report

    command = args.argv
    job, problems = job_cli.checked_job(args.job_dir)
    objs = None
    if job is not None and not problems:
        try:
            files = userjob.job_files(args.job_dir)
            objs = userjob.render_kuberay(
                job, files, spec, facts, command, name=args.job_name
            )
        except userjob.JobError as e:
            problems.append(str(e))
    if problems:
        print(report(problems, "nothing was rendered"), file=sys.stderr)
        return None
    return objs


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
    render.add_argument(
        "--project", default=None,
        help="gcp/kuberay targets: the project of the example facts (default my-ray-project)",
    )
    render.add_argument(
        "--region", default=None,
        help="gcp target: the region of the example facts (default asia-northeast3, "
        "the stack's default); the zone is its first",
    )
    render.add_argument("--gcs-port", type=int, default=6379, help="local target's GCS port")
    render.add_argument(
        "--job-dir", type=Path,
        help="kuberay rayjob: a user's job folder (pyproject.toml, uv.lock) to run instead of "
        "annotate.py; the command follows `--`",
    )
    render.add_argument("--job-name", help="with --job-dir: the RayJob's name")
    from cluster import job_cli

    job_cli.add_parser(sub)
    reqs = sub.add_parser("requirements", help="regenerate cluster/requirements-node.txt")
    reqs.add_argument("--check", action="store_true", help="only compare with uv.lock")
    # Everything after the first `--` is a job's command line (render --job-dir, job submit).
    argv = list(sys.argv[1:] if argv is None else argv)
    tail: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    args.argv = tail
    if args.command == "local":
        return _local(args)
    if args.command == "render":
        return _render(args)
    if args.command == "requirements":
        return _requirements(args)
    if args.command == "job":
        from cluster import job_cli

        return job_cli.main(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
