"""Command line for the cluster package: ``python -m cluster --help``.

The parser below is the reference: each command's ``--help`` says what it does,
every flag and an example. A flag that does not apply to the chosen target or
action is refused (exit status 2) rather than ignored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_STATE_DIR = Path(".ray-local")
DEFAULT_GCS_PORT = 6379

DESCRIPTION = """\
The Ray cluster from one typed spec (cluster/spec.py): its config for `ray up` on
GCP, KubeRay manifests for GKE, or a local autoscaling cluster of fake nodes."""
EXAMPLES = """\
examples:
  python -m cluster local up
  python -m cluster render --target gcp --project my-project-id
  python -m cluster render --target kuberay --kind rayjob --spec spec.json --facts kubefacts.json
  python -m cluster job check examples/my-job
  python -m cluster job submit examples/my-job -- python driver.py
  python -m cluster requirements --check
  python -m cluster logs runs --bucket my-project-id-ray-gcp-io --cluster ray-gcp
  python -m cluster render --help"""
RENDER_DESCRIPTION = """\
Print a Ray autoscaler config (--target gcp, local) or KubeRay manifests
(--target kuberay) as YAML.

--target gcp without --facts renders the spec with the facts `pulumi up` would
produce for --project and --region: the same names, subnet, bucket and zone;
only the pinned image and the launcher key are placeholders (a test compares it
with the stack's clusterConfig). --facts takes GcpFacts (gcp) or KubeFacts
(kuberay) as JSON/YAML, e.g. `pulumi stack output --json kubeFacts`; --spec a
ClusterSpec (default: the stack's default spec). --api-endpoint API=URL
(repeatable; gcp only) sets provider.api_endpoints as ray-gcp:apiEndpoints does
for the stack; with --facts it adds to the facts file's api_endpoints.
--kind core prints the
Namespace, ServiceAccount, NetworkPolicy and workloads ConfigMap as one stream;
--kind autostop the watcher that suspends the idle RayCluster
(--idle-timeout-minutes, default 60; 0 = off, and the NetworkPolicy of --kind
core then admits no watcher). --kind rayjob --job-dir DIR -- COMMAND runs a
user's own job (DIR's files and uv.lock, cluster/userjob.py) instead of
annotate.py and comes with the ConfigMap of its files; the job is checked
first, as by `job check`.
A bad value is reported as `field = value: problem (allowed: ...)`, exit 2;
so is a flag the target does not use."""
RENDER_EXAMPLES = """\
examples:
  python -m cluster render --target gcp --region us-central1
  python -m cluster render --target local --gcs-port 41000
  pulumi stack output --json clusterSpec > spec.json
  pulumi stack output --json kubeFacts > kubefacts.json
  python -m cluster render --target kuberay --kind rayjob --spec spec.json --facts kubefacts.json \\
      | kubectl apply -f -
  python -m cluster render --target kuberay --kind rayjob --job-dir examples/my-job \\
      -- python driver.py | kubectl apply -f -"""


def _local(args: argparse.Namespace) -> int:
    import os

    from cluster.errors import report

    try:
        from cluster.local import LocalCluster
    except ModuleNotFoundError:  # the VM bundle leaves it out (cluster/bundle.py NOT_ON_VMS)
        print("python -m cluster local: the local fake cluster is not part of this copy (the "
              "provider VM's bundle); run it from a clone of the repository", file=sys.stderr)
        return 2

    problems = [
        f"{flag}: applies to `local up` only (not `local {args.action}`)"
        for flag, given in (("--autoscaler-v2", args.autoscaler_v2),
                            ("--log-bucket", args.log_bucket))
        if given and args.action != "up"
    ]
    endpoint = os.environ.get("STORAGE_EMULATOR_HOST") if args.log_bucket else None
    if args.log_bucket and args.action == "up" and not endpoint:
        problems.append("--log-bucket: the local cluster ships to a Cloud Storage emulator; set "
                        "STORAGE_EMULATOR_HOST (e.g. http://127.0.0.1:9023)")
    if problems:
        print(report(problems), file=sys.stderr)
        return 2

    lc = LocalCluster(args.state_dir, autoscaler_v2=args.autoscaler_v2,
                      log_bucket=args.log_bucket, log_endpoint=endpoint)
    if args.action == "up":
        if lc.is_up():
            print(f"already running (state in {lc.state_dir}); nothing started", flush=True)
        else:
            print(f"starting local Ray cluster (state in {lc.state_dir}) ...", flush=True)
        lc.up()
        print(f"up: GCS {lc.address}, dashboard {lc.dashboard_url}")
        if lc.shipping:
            print(f"logs: every node ships to gs://{args.log_bucket}/logs/ ({endpoint}); "
                  "read them with `python -m cluster logs --bucket ... --cluster ...`")
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


def _parse_api_endpoints(items: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--api-endpoint API=URL`` flags as a mapping, and what is wrong with them."""
    from cluster import api_endpoints

    out: dict[str, str] = {}
    problems: list[str] = []
    for item in items:
        api, sep, url = item.partition("=")
        if not sep:
            problems.append(
                f"--api-endpoint = {item!r}: write API=URL, e.g. "
                f"compute={api_endpoints.DEFAULT_ENDPOINTS['compute']}"
            )
        elif api in out:
            problems.append(f"--api-endpoint {api}: given twice")
        else:
            out[api] = url
    problems += api_endpoints.problems(out, where="--api-endpoint", sep=" ")
    return out, problems


def _render(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cluster.errors import describe_all, report
    from cluster.regions import DEFAULT_REGION
    from cluster.render import example_gcp_facts, render_gcp, render_local, to_yaml
    from cluster.spec import ClusterSpec, GcpFacts, local_default_spec

    problems = _unused_flags(args)
    endpoints: dict[str, str] = {}
    if args.target == "gcp":
        endpoints, endpoint_problems = _parse_api_endpoints(args.api_endpoint or [])
        problems.extend(endpoint_problems)
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
                raw = _load_mapping(args.facts)
                if endpoints:
                    raw["api_endpoints"] = {**(raw.get("api_endpoints") or {}), **endpoints}
                facts = GcpFacts.model_validate(raw)
            except ValidationError as e:
                problems.extend(describe_all(e, GcpFacts, prefix=f"{args.facts}: "))
        else:
            facts = example_gcp_facts(project=project, region=region, cluster_name=spec.cluster_name)
            if endpoints:
                facts = GcpFacts.model_validate({**facts.model_dump(), "api_endpoints": endpoints})
    if problems:
        print(report(problems), file=sys.stderr)
        return 2
    if args.target == "local":
        cfg = render_local(spec, gcs_port=args.gcs_port or DEFAULT_GCS_PORT)
    else:
        cfg = render_gcp(spec, facts)
    sys.stdout.write(to_yaml(cfg))
    return 0


def _unused_flags(args: argparse.Namespace) -> list[str]:
    """`render` flags the chosen target (or --facts) does not use: refused, not ignored."""
    problems = []
    if args.kind is not None and args.target != "kuberay":
        problems.append(f"--kind: applies to --target kuberay only (not --target {args.target})")
    if args.gcs_port is not None and args.target != "local":
        problems.append(f"--gcs-port: applies to --target local only (not --target {args.target})")
    place_flags = [f for f in ("project", "region") if getattr(args, f) is not None]
    if args.target == "kuberay" and args.region is not None:
        problems.append("--region: not used with --target kuberay (the pods have no zone)")
        place_flags.remove("region")
    if place_flags and (args.target == "local" or args.facts):
        used = "--target local" if args.target == "local" else "--facts"
        problems.append(
            f"{', '.join('--' + f for f in place_flags)}: not used with {used} "
            "(the example facts only; a --facts file has its own)"
        )
    if args.target == "local" and args.facts:
        problems.append("--facts: not used with --target local (GCP facts)")
    if args.idle_timeout_minutes is not None and args.kind not in ("core", "autostop"):
        problems.append("--idle-timeout-minutes: applies to --target kuberay --kind core or "
                        "autostop only")
    if args.api_endpoint and args.target != "gcp":
        problems.append(
            f"--api-endpoint: applies to --target gcp only (not --target {args.target}): "
            "the VM path's Google API clients"
        )
    if args.job_dir is not None and (args.target, args.kind) != ("kuberay", "rayjob"):
        problems.append("--job-dir: applies to --target kuberay --kind rayjob only")
    if args.job_dir is None and (args.argv or args.job_name):
        what = "--job-name" if args.job_name else f"command {' '.join(args.argv)!r}"
        problems.append(f"{what}: only with --job-dir (a user's job)")
    return problems


def _render_kuberay(args: argparse.Namespace, spec, project: str) -> int:
    from pydantic import ValidationError

    try:
        from cluster import kuberay
    except ImportError:  # the VM bundle leaves it out (cluster/bundle.py NOT_ON_VMS)
        print("render --target kuberay: the KubeRay renderer is not part of this copy (the "
              "provider VM's bundle); run it from a clone of the repository", file=sys.stderr)
        return 2
    from cluster.errors import describe_all, report
    from cluster.spec import SpecError

    try:
        if args.facts:
            facts = kuberay.KubeFacts.model_validate(_load_mapping(args.facts))
        else:
            facts = kuberay.example_kube_facts(project=project, cluster_name=spec.cluster_name)
    except ValidationError as e:
        print(report(describe_all(e, kuberay.KubeFacts, prefix=f"{args.facts}: ")), file=sys.stderr)
        return 2
    minutes = 60 if args.idle_timeout_minutes is None else args.idle_timeout_minutes
    try:
        if args.kind in (None, "raycluster"):
            objs = [kuberay.render_raycluster(spec, facts)]
        elif args.kind == "rayjob" and args.job_dir is not None:
            objs = _render_user_job(args, spec, facts)
            if objs is None:
                return 2
        elif args.kind == "rayjob":
            objs = [kuberay.render_rayjob(spec, facts)]
        elif args.kind == "rayservice":
            objs = [kuberay.render_rayservice(spec, facts)]
        elif args.kind == "autostop":
            from cluster import kuberay_autostop

            objs = kuberay_autostop.render_autostop_objects(
                spec, facts, minutes, kuberay_autostop.read_autostop_sources()
            )
        else:
            objs = kuberay.render_core_objects(
                spec, facts, kuberay.read_workloads(), autostop=minutes > 0
            )
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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps our own line breaks, and puts each command on one line with its help:
    argparse sizes the help column before it indents the commands, so the longest
    one (`requirements`) would otherwise get a line of its own."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=24, width=100)
        self._action_max_length = 20


def build_parser() -> argparse.ArgumentParser:
    raw = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m cluster", description=DESCRIPTION, epilog=EXAMPLES, formatter_class=raw
    )
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    local = sub.add_parser(
        "local", help="start, stop or inspect a local autoscaling Ray cluster of fake nodes",
        description="A local autoscaling Ray cluster whose autoscaler starts fake worker nodes,\n"
        "token auth on. `up` prints the environment drivers and `ray job` need.",
        epilog="examples:\n  python -m cluster local up --autoscaler-v2\n"
        "  python -m cluster local status\n  python -m cluster local down",
        formatter_class=raw,
    )
    local.add_argument("action", choices=["up", "down", "status"])
    local.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where pids, ports, token and config live (default: .ray-local/)",
    )
    local.add_argument(
        "--autoscaler-v2", action="store_true", help="up only: run Ray's v2 autoscaler (as `ray up`)"
    )
    local.add_argument(
        "--log-bucket", default=None,
        help="up only: ship every node's Ray logs to this bucket of the emulator "
        "STORAGE_EMULATOR_HOST",
    )
    render = sub.add_parser(
        "render", help="print the Ray autoscaler config (gcp, local) or KubeRay manifests (YAML)",
        description=RENDER_DESCRIPTION, epilog=RENDER_EXAMPLES, formatter_class=raw,
    )
    render.add_argument("--target", choices=["gcp", "local", "kuberay"], required=True)
    render.add_argument(
        "--kind",
        choices=["raycluster", "rayjob", "rayservice", "core", "autostop"],
        default=None,
        help="kuberay only: which manifest (default raycluster; core = Namespace, KSA, "
        "NetworkPolicy, ConfigMap; autostop = the watcher that suspends the idle RayCluster)",
    )
    render.add_argument(
        "--idle-timeout-minutes", type=int, default=None,
        help="kuberay --kind core or autostop: autostop after this many idle minutes "
        "(default 60; 0 = off)",
    )
    render.add_argument("--spec", type=Path, help="ClusterSpec as YAML/JSON")
    render.add_argument(
        "--facts", type=Path, help="GcpFacts (gcp) or KubeFacts (kuberay) as JSON/YAML"
    )
    render.add_argument(
        "--project", default=None,
        help="gcp/kuberay without --facts: the project of the example facts (default my-ray-project)",
    )
    render.add_argument(
        "--region", default=None,
        help="gcp without --facts: the region of the example facts (default asia-northeast3, "
        "the stack's default); the zone is its first",
    )
    render.add_argument(
        "--api-endpoint", action="append", metavar="API=URL",
        help="gcp only: a provider.api_endpoints entry (repeatable); API is compute, iam or "
        "cloudresourcemanager, URL the API's whole base URL ending in '/', e.g. "
        "compute=https://compute.googleapis.com/compute/v1/ (ray-gcp:apiEndpoints)",
    )
    render.add_argument(
        "--gcs-port", type=int, default=None,
        help=f"local only: the GCS port (default {DEFAULT_GCS_PORT})",
    )
    render.add_argument(
        "--job-dir", type=Path,
        help="kuberay rayjob only: a user's job folder (pyproject.toml, uv.lock) to run instead "
        "of annotate.py; its command follows `--`",
    )
    render.add_argument("--job-name", help="with --job-dir: the RayJob's name")
    from cluster import job_cli

    job_cli.add_parser(sub, formatter_class=raw)
    reqs = sub.add_parser(
        "requirements", help="regenerate cluster/requirements-node.txt from uv.lock",
        description="Rewrite cluster/requirements-node.txt (the nodes' exact packages, with\n"
        "hashes) from uv.lock, with the pinned uv.", formatter_class=raw,
    )
    reqs.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    from cluster import logs

    logs_cmd = sub.add_parser(
        "logs", help="read the shipped Ray logs (runs, a job, a node), also after `ray down`",
        description=logs.__doc__, formatter_class=raw,
    )
    logs.add_arguments(logs_cmd)
    return parser


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """Our flags, and the job's command line: everything after the first `--`
    (render --job-dir, job submit)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ours, tail = split_command(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(ours)
    args.argv = tail
    if args.command == "local":
        return _local(args)
    if args.command == "render":
        return _render(args)
    if args.command == "requirements":
        return _requirements(args)
    if args.command == "logs":
        from cluster import logs

        return logs.main(args)
    if args.command == "job":
        from cluster import job_cli

        return job_cli.main(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
