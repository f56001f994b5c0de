"""``python -m cluster job check|submit``: a user's own job, checked, then run on a cluster.

    python -m cluster job check DIR
    python -m cluster job submit DIR [--address URL] [--env KEY=VALUE]... [--no-wait] -- COMMAND...

``check`` runs what ``submit`` runs before it submits, and nothing else: the
job's lock against the cluster's pins (``cluster.userjob.check``: Ray
``layout.RAY_VERSION``, Python ``layout.PYTHON_MINOR``, a virtual project)
and ``uv lock --check`` (the lock matches pyproject.toml and resolves).

``submit`` then connects to the cluster's Jobs API (``--address``, else
``RAY_API_SERVER_ADDRESS`` / ``RAY_ADDRESS`` as ``ray job submit`` reads
them, never Ray's search for a running cluster; the token from
``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN_PATH``), refuses a cluster that
reports another Ray, and submits ``uv run --frozen --no-dev COMMAND`` with
DIR as working_dir (``cluster.userjob.runtime_env``). It follows the job's
log to the end like ``ray job submit``; a failed job ends with one line,
``error: job ... failed: <where>: <what>`` (``cluster.userjob.failure_line``).

Exit status: 0 the job succeeded (or, with ``--no-wait``, was submitted), 1
the job failed or was stopped, 2 refused before anything was submitted, 3
the cluster could not be reached or did not take the job.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

from cluster import layout, userjob
from cluster.bundle import find_uv

EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_NO_CLUSTER = 3
ROOT = Path(__file__).resolve().parent.parent


def pinned_uv() -> str | None:
    """The uv for the checks: this checkout's pinned one, the provider VM's, or uv on PATH."""
    provider = Path(layout.PROVIDER_TOOLS) / "bin" / "uv"
    for candidate in (find_uv(ROOT), str(provider) if provider.is_file() else None):
        if candidate:
            return candidate
    return shutil.which("uv")


def refuse(problems: list[str]) -> int:
    print("refused (nothing was submitted):\n  " + "\n  ".join(problems), file=sys.stderr)
    return EXIT_REFUSED


def checked_job(folder: Path) -> tuple[userjob.JobProject | None, list[str]]:
    """The job and every problem the checks find, before any cluster is contacted."""
    try:
        job = userjob.load_job(folder)
    except userjob.JobError as e:
        return None, [str(e)]
    problems = userjob.check(job)
    if problems:  # ours first: offline, and each says how to fix it
        return job, problems
    uv = pinned_uv()
    if uv is None:
        return job, problems + [f"uv not found: run `make setup` (installs uv {layout.UV_VERSION})"]
    stale = userjob.uv_lock_check(folder, uv)
    if stale:
        problems.append(
            f"{job.where}/uv.lock: `uv lock --check` fails: {stale} (run `uv lock` in "
            f"{job.where} and fix what it says)"
        )
    return job, problems


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise userjob.JobError(f"--env {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def cluster_address(flag: str | None) -> str | None:
    """--address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS (`ray job`'s order), else None.

    Never Ray's auto-detection: with no address it picks a Ray it finds running on this
    machine, which may be anybody's.
    """
    for value in (flag, os.environ.get("RAY_API_SERVER_ADDRESS"), os.environ.get("RAY_ADDRESS")):
        if value:
            return value
    return None


def connect(address: str):
    """A JobSubmissionClient, or SystemExit(3) after one line saying why not."""
    from ray.exceptions import RayError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    # What the SDK raises: ConnectionError (nothing answers), RuntimeError (a bad
    # answer), ValueError (a bad address), AuthenticationError (a RayError: no token).
    except (OSError, RuntimeError, ValueError, RayError) as e:
        shown = address
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(
            f"error: cannot reach the Jobs API at {shown}: {first}. Is the cluster up and the "
            "dashboard reachable (local: `python -m cluster local up` and its exports; VMs: "
            "`ray dashboard`)? Is the token exported (RAY_AUTH_MODE=token, "
            "RAY_AUTH_TOKEN_PATH)? Nothing was submitted.",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_NO_CLUSTER) from None


async def _follow(client, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def follow(client, job_id: str, timeout: float | None = None) -> str:
    """Print the job's log as it comes; return its final status (a string)."""
    try:
        asyncio.run(_follow(client, job_id))
    except RuntimeError as e:  # the log stream broke; the job's status still tells
        print(f"(log stream ended: {e})", file=sys.stderr)
    deadline = time.monotonic() + (timeout or 60)
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED") or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def cmd_check(args: argparse.Namespace) -> int:
    job, problems = checked_job(args.dir)
    if problems:
        print("not runnable on the cluster:\n  " + "\n  ".join(problems), file=sys.stderr)
        return EXIT_REFUSED
    assert job is not None
    print(
        f"{job.where}: ok for the cluster (ray {layout.RAY_VERSION}, Python "
        f"{layout.PYTHON_MINOR}); its environment on each node: "
        f"${userjob.JOB_ENVS_VAR}/{userjob.env_dir(job)}"
    )
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    command = args.argv
    job, problems = checked_job(args.dir)
    try:
        env = _env_pairs(args.env)
        entry = userjob.entrypoint(command)
        if job is not None:
            renv = userjob.runtime_env(job, str(args.dir), env)
    except userjob.JobError as e:
        problems.append(str(e))
    address = cluster_address(args.address)
    if address is None:
        problems.append(
            "no cluster address: give --address http://127.0.0.1:8265 (the dashboard), or "
            "export RAY_API_SERVER_ADDRESS (`python -m cluster local up` prints it)"
        )
    if problems:
        return refuse(problems)
    assert job is not None and address is not None
    client = connect(address)
    cluster_ray = getattr(client, "_server_ray_version", None)
    if cluster_ray and cluster_ray != layout.RAY_VERSION:
        return refuse(
            [
                (f"the cluster at {client.get_address()} runs ray {cluster_ray}, but this "
                f"checkout and {job.where}/uv.lock pin ray {layout.RAY_VERSION}: submit to a "
                "cluster built from this checkout")
            ]
        )
    from ray.exceptions import RayError

    started = time.monotonic()
    try:
        job_id = client.submit_job(
            entrypoint=entry,
            runtime_env=renv,
            metadata={"ray-gcp-job": job.name, "ray-gcp-env": userjob.env_dir(job)},
        )
    except (OSError, RuntimeError, ValueError, RayError) as e:  # upload or submission refused
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: the Jobs API at {address} did not take the job: {first}", file=sys.stderr)
        return EXIT_NO_CLUSTER
    print(
        f"submitted {job_id}: {entry} (in {job.where}; environment "
        f"${userjob.JOB_ENVS_VAR}/{userjob.env_dir(job)})",
        flush=True,
    )
    if args.no_wait:
        print(f"follow it: ray job logs --follow {job_id}; stop it: ray job stop {job_id}")
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; the job keeps running (ray job logs --follow {job_id}, "
            f"ray job stop {job_id})",
            file=sys.stderr,
        )
        return 130
    seconds = time.monotonic() - started
    if status == "SUCCEEDED":
        print(f"job {job_id} succeeded in {seconds:.1f} s")
        return 0
    info = client.get_job_info(job_id)
    line = userjob.failure_line(job_id, status, info.message, client.get_job_logs(job_id))
    print(f"error: {line}", file=sys.stderr)
    return EXIT_FAILED


def add_parser(sub, formatter_class=argparse.HelpFormatter) -> None:
    job = sub.add_parser(
        "job", help="check and run your own job (its folder, its uv.lock) on a cluster",
        description="Your own job: a folder with pyproject.toml and uv.lock (examples/my-job is\n"
        "a template). `check` compares its lock with the cluster's pins; `submit` checks,\n"
        "then runs it on a cluster through the Jobs API and follows its log.",
        epilog="examples:\n  python -m cluster job check examples/my-job\n"
        "  python -m cluster job submit examples/my-job -- python driver.py --limit 1000000",
        formatter_class=formatter_class,
    )
    actions = job.add_subparsers(dest="action", required=True, title="actions", metavar="ACTION")
    check = actions.add_parser(
        "check", help="check DIR's lock against the cluster's pins",
        description=f"Check DIR's uv.lock against the cluster (ray {layout.RAY_VERSION}, "
        f"Python {layout.PYTHON_MINOR}) and\nwith `uv lock --check`; nothing is contacted. "
        "Exit 2 with what to fix.",
        formatter_class=formatter_class,
    )
    check.add_argument("dir", type=Path, metavar="DIR", help="the job folder (pyproject.toml, uv.lock)")
    submit = actions.add_parser(
        "submit",
        usage="python -m cluster job submit DIR [--address URL] [--env KEY=VALUE]... "
        "[--no-wait] -- COMMAND...",
        help="check, then run `uv run --frozen --no-dev COMMAND` in DIR on the cluster",
        description="Check DIR's lock against the cluster, then run COMMAND (everything "
        "after `--`,\ne.g. -- python driver.py --limit 1000) as `uv run --frozen --no-dev "
        "COMMAND`\nin DIR on the cluster, and follow its log. Exit 0 succeeded, 1 the job "
        "failed,\n2 refused before submitting, 3 the cluster could not be reached.",
        formatter_class=formatter_class,
    )
    submit.add_argument("dir", type=Path, metavar="DIR", help="the job folder (pyproject.toml, uv.lock)")
    submit.add_argument(
        "--address",
        help="the cluster's dashboard, e.g. http://127.0.0.1:8265 (default: "
        "RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, as `ray job submit`)",
    )
    submit.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="an environment variable for the driver and every task (repeatable)",
    )
    submit.add_argument("--no-wait", action="store_true", help="submit and return the job id")


def main(args: argparse.Namespace) -> int:
    if args.action == "check":
        return cmd_check(args)
    return cmd_submit(args)
