"""A user's own Ray job with its own locked packages: checks, runtime env, failure line.

A job is a folder with a ``pyproject.toml`` and a ``uv.lock`` (the template is
``examples/my-job``). It runs with Ray's ``uv run`` integration (Ray >= 2.45,
on by default through ``RAY_ENABLE_UV_RUN_RUNTIME_ENV``): the job's entrypoint
is ``uv run --frozen --no-dev <command>`` in its working_dir, and when the
driver calls ``ray.init()`` under ``uv run``, Ray gives the job the runtime
env ``py_executable: "uv run --frozen --no-dev --python 3.11 python"``, so
every worker process of the job starts in the same environment, built from
the same lock, on whichever node it runs.

Where that environment lives is ours: ``UV_PROJECT_ENVIRONMENT`` points at
``$RAY_GCP_JOB_ENVS/<project>-<key>``, where every ray-gcp node exports
``RAY_GCP_JOB_ENVS`` (a VM ``~/ray-job-envs``, a KubeRay pod
``/home/ray/ray-job-envs``, the local cluster ``<state dir>/job-envs``) and
``key`` hashes the lock, the Python minor and the ``uv run`` flags. So a node
builds one environment per lock, the first time a job with that lock runs
there, and every later job with the same lock (any code, any arguments)
reuses it: ``uv run --frozen`` finds it in sync and installs nothing.

Pure here (files in, answers out): ``parse_job`` / ``check`` (what would not
work on the cluster, one line each, with the fix), ``runtime_env`` /
``entrypoint`` / ``env_dir``, ``failure_line`` (a failed job's log as one
line: what and where) and ``render_kuberay`` (ConfigMap + RayJob). The edges
that touch the disk or run uv: ``load_job``, ``job_files``, ``uv_lock_check``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import shlex
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from cluster import layout

# The entrypoint's prefix. --frozen: the packages are exactly uv.lock's (uv
# checks every file against the lock's sha256); nothing is re-resolved on
# the nodes. --no-dev: the dev group (pytest...) stays on the laptop. Ray's
# hook copies these flags into the workers' py_executable.
UV_RUN = ("uv", "run", "--frozen", "--no-dev")
# Every ray-gcp node exports this: where job environments live on that node.
JOB_ENVS_VAR = "RAY_GCP_JOB_ENVS"
# Set by the runtime env; a user's --env may not change them.
RESERVED_ENV = ("UV_PROJECT_ENVIRONMENT", "UV_PYTHON", "UV_PYTHON_DOWNLOADS")
# A ConfigMap holds at most 1 MiB (data and binaryData together).
CONFIGMAP_MAX_BYTES = 1024 * 1024 - 16 * 1024  # room for keys and metadata
_CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class JobError(ValueError):
    """A job folder that cannot be run: the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class JobProject:
    """A job folder's files, parsed. ``where`` names the folder in messages."""

    where: str
    pyproject: Mapping[str, Any]
    lock_text: str | None
    python_version_file: str | None = None

    @property
    def name(self) -> str:
        return canonicalize_name(str(self.pyproject["project"]["name"]))

    @property
    def lock(self) -> Mapping[str, Any]:
        if self.lock_text is None:
            return {}
        return tomllib.loads(self.lock_text)

    def locked(self, package: str) -> list[Mapping[str, Any]]:
        """The lock's entries for ``package`` (a forked lock may hold several versions)."""
        want = canonicalize_name(package)
        return [p for p in self.lock.get("package", []) if canonicalize_name(p["name"]) == want]


def parse_job(
    where: str, pyproject_text: str, lock_text: str | None, python_version: str | None = None
) -> JobProject:
    """The parsed project; JobError for a pyproject or lock that is not TOML or has no name."""
    try:
        pyproject = tomllib.loads(pyproject_text)
    except tomllib.TOMLDecodeError as e:
        raise JobError(f"{where}/pyproject.toml: not valid TOML ({e})") from e
    if not isinstance(pyproject.get("project"), dict) or "name" not in pyproject["project"]:
        raise JobError(
            f"{where}/pyproject.toml: no [project] name; a job is a uv project "
            f"(`uv init --app {where}`)"
        )
    if lock_text is not None:
        try:
            tomllib.loads(lock_text)
        except tomllib.TOMLDecodeError as e:
            raise JobError(f"{where}/uv.lock: not valid TOML ({e}); run `uv lock` in {where}") from e
    return JobProject(where, pyproject, lock_text, python_version)


def _admits_every_patch(spec: SpecifierSet, minor: str) -> bool:
    # An interval test: the first and a late patch release of the minor.
    return spec.contains(f"{minor}.0", prereleases=False) and spec.contains(f"{minor}.99")


def check(
    job: JobProject,
    *,
    ray_version: str = layout.RAY_VERSION,
    python_minor: str = layout.PYTHON_MINOR,
) -> list[str]:
    """What in the job's lock cannot work on the cluster; one line per problem, with the fix.

    The cluster runs Ray ``ray_version`` on Python ``python_minor`` on every
    node (cluster/layout.py; node_check refuses anything else). A driver with
    another Ray cannot talk to it, and workers with another Python minor
    cannot unpickle the driver's functions.
    """
    w = job.where
    if job.lock_text is None:
        return [
            (f"{w}/uv.lock: missing; run `uv lock` in {w} (the job's packages come "
            "only from its lock)")
        ]
    problems = []
    fix = f"then run `uv lock` in {w}"
    rays = job.locked("ray")
    if not rays:
        problems.append(
            f"{w}/uv.lock: ray is not locked, but the driver needs the cluster's Ray "
            f'{ray_version}: add "ray=={ray_version}" to [project] dependencies in '
            f"{w}/pyproject.toml, {fix}"
        )
    for entry in rays:
        if entry.get("version") != ray_version:
            problems.append(
                f"{w}/uv.lock: ray {entry.get('version')}, but the cluster runs ray "
                f'{ray_version} (cluster/layout.py): require "ray=={ray_version}" in '
                f"{w}/pyproject.toml, {fix}"
            )
    requires = job.lock.get("requires-python")
    if requires is not None:
        try:
            admits = _admits_every_patch(SpecifierSet(requires), python_minor)
        except InvalidSpecifier:
            admits = False
        if not admits:
            problems.append(
                f"{w}/uv.lock: requires-python {requires!r} does not admit Python "
                f"{python_minor}, which every node runs (cluster/layout.py): set "
                f'requires-python = ">={python_minor},<{_next_minor(python_minor)}" in '
                f"{w}/pyproject.toml, {fix}"
            )
    if job.python_version_file is not None:
        pinned = _first_line(job.python_version_file)
        if pinned != python_minor and not pinned.startswith(f"{python_minor}."):
            problems.append(
                f"{w}/.python-version: {pinned!r}, but every node runs Python "
                f"{python_minor}: write {python_minor} there (or delete the file)"
            )
    root = job.locked(job.name)
    source = root[0].get("source", {}) if root else {}
    if root and "virtual" not in source:
        problems.append(
            f"{w}/pyproject.toml: the project is a package ({_source_kind(source)} in "
            f"uv.lock), which `uv run` would install into the environment that every job "
            f"with this lock shares; the job's code travels as Ray's working_dir instead: "
            f"remove [build-system] (or set [tool.uv] package = false), {fix}"
        )
    return problems


def _next_minor(minor: str) -> str:
    major, m = minor.split(".")
    return f"{major}.{int(m) + 1}"


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    return ""


def _source_kind(source: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in sorted(source.items())) or "no source"


def env_dir(job: JobProject, python_minor: str = layout.PYTHON_MINOR) -> str:
    """The environment's folder name under $RAY_GCP_JOB_ENVS: one per lock, Python and flags."""
    h = hashlib.sha256()
    for part in (job.lock_text or "", python_minor, " ".join(UV_RUN)):
        h.update(part.encode())
        h.update(b"\0")
    return f"{job.name}-{h.hexdigest()[:16]}"


def runtime_env(
    job: JobProject,
    working_dir: str,
    env: Mapping[str, str] | None = None,
    *,
    job_envs: str = f"${{{JOB_ENVS_VAR}}}",
    python_minor: str = layout.PYTHON_MINOR,
) -> dict[str, Any]:
    """The job's Ray runtime env: its folder as working_dir, where uv builds its environment.

    ``job_envs``: the folder of job environments on the nodes; by default
    ``${RAY_GCP_JOB_ENVS}``, which Ray expands on each node from the node's
    own environment (``update_envs``) before it starts the driver or a worker.

    ``py_executable`` is not here: Ray's uv hook sets it when the driver
    calls ``ray.init()`` under ``uv run`` (and refuses ``pip``/``uv`` fields
    next to it). ``UV_PYTHON`` pins the nodes' minor for the driver and,
    through the hook, for every worker; ``UV_PYTHON_DOWNLOADS=never`` keeps
    uv from fetching an interpreter the node check never saw.
    """
    env = dict(env or {})
    clash = sorted(set(env) & set(RESERVED_ENV))
    if clash:
        raise JobError(
            f"--env {', '.join(clash)}: set by ray-gcp for every job (the job's environment "
            "and interpreter); remove it"
        )
    return {
        "working_dir": working_dir,
        "env_vars": {
            "UV_PROJECT_ENVIRONMENT": f"{job_envs}/{env_dir(job, python_minor)}",
            "UV_PYTHON": python_minor,
            "UV_PYTHON_DOWNLOADS": "never",
            **env,
        },
    }


def entrypoint(command: list[str]) -> str:
    """``uv run --frozen --no-dev <command>``, shell-quoted (Ray runs it with a shell)."""
    if not command:
        raise JobError("no command: give the driver's command line after `--`, e.g. -- python driver.py")
    if Path(command[0]).name in ("uv", "uvx"):
        raise JobError(
            f"command {shlex.join(command)!r}: give it without uv; ray-gcp runs it as "
            f"`{' '.join(UV_RUN)} <command>`"
        )
    return shlex.join([*UV_RUN, *command])


# ---- a failed job, in one line -------------------------------------------------

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:\([\w.]+\))?): ?(?P<msg>.*)$")
# Ray unpacks a job's working_dir here, on every node; a local:// dir is used in place.
_WORKING_DIR = re.compile(r"^.*/_ray_pkg_[0-9a-f]+/")


def _display_path(path: str, working_dir: str | None) -> str:
    if working_dir and path.startswith(working_dir.rstrip("/") + "/"):
        return path[len(working_dir.rstrip("/")) + 1 :]
    return _WORKING_DIR.sub("", path)


def _traceback_summary(lines: list[str], working_dir: str | None) -> str | None:
    """``file:line in func: Type: message`` of the log's last traceback, or None."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call")]
    if not starts:
        return None
    tail = lines[starts[-1] :]
    frames = [m for m in map(_FRAME.match, tail) if m]
    exc = None
    for line in tail[1:]:
        m = _EXCEPTION.match(line)
        if m and not line.startswith(" "):
            exc = line.strip()
    if exc is None:
        return None
    if not frames:
        return exc
    # The deepest frame in the job's own files, else the deepest frame at all.
    own = [f for f in frames if working_dir and f["file"].startswith(working_dir)] or [
        f for f in frames if _WORKING_DIR.match(f["file"])
    ]
    f = (own or frames)[-1]
    return f"{_display_path(f['file'], working_dir)}:{f['line']} in {f['func']}: {exc}"


# How uv's own failures start (uv 0.13); a driver's "error: ..." line is not one of them.
_UV_FAILURES = (
    "Failed to ",
    "No solution found",
    "No interpreter found",
    "The lockfile at",
    "Distribution not found",
    "Request failed",
)


def _uv_error(lines: list[str]) -> str | None:
    """uv's own ``error: ...`` with its ``cause:`` lines, joined (the last one in the log)."""
    starts = [
        i
        for i, line in enumerate(lines)
        if line.startswith("error: ")
        and (
            line.removeprefix("error: ").startswith(_UV_FAILURES)
            or lines[i + 1 : i + 2] and lines[i + 1].lstrip().startswith(("cause:", "Caused by:"))
        )
    ]
    if not starts:
        return None
    parts = [lines[starts[-1]].removeprefix("error: ").strip()]
    for line in lines[starts[-1] + 1 :]:
        s = line.strip()
        if s.startswith(("cause:", "Caused by:")):
            parts.append(s.split(":", 1)[1].strip())
        elif s.startswith("hint:") or (line and not line.startswith(" ")):
            break
    return ": ".join(p for p in parts if p)


def failure_line(
    job_id: str, status: str, message: str | None, logs: str, working_dir: str | None = None
) -> str:
    """What went wrong with a finished job and where, in one line, from its log and status.

    A Python traceback (the driver, or a task's re-raised in the driver) gives
    ``file:line in function: Type: message`` of its deepest frame in the
    job's files; uv's own error (the job's environment could not be built
    from its lock, so the driver never started) gives uv's error and causes;
    otherwise Ray's status message.
    """
    lines = logs.splitlines()
    if status == "STOPPED":
        return f"job {job_id} was stopped{': ' + message if message else ''}"
    tb = _traceback_summary(lines, working_dir)
    if tb:
        return f"job {job_id} failed: {tb}"
    uv = _uv_error(lines)
    if uv:
        return (
            f"job {job_id} failed before the driver started: uv could not build the job's "
            f"environment from its uv.lock on the cluster: {uv}"
        )
    # bash says "uv: command not found", dash (Debian's /bin/sh, Ray's shell) "uv: not found".
    missing = next((s for s in lines if re.search(r"\buv: (command )?not found", s)), None)
    if missing:
        return (
            f"job {job_id} failed before the driver started: the cluster's nodes have no `uv` "
            "on PATH (a ray-gcp node gets it from its setup; rerun `ray up`)"
        )
    detail = (message or "").strip().splitlines()
    last = next((s.strip() for s in reversed(lines) if s.strip()), "")
    exited = re.match(r"Job entrypoint command failed with exit code (-?\d+)", detail[0] if detail else "")
    if exited:
        said = f"; its last line: {last}" if last else "; it printed nothing"
        return f"job {job_id} failed: the command exited with status {exited[1]}{said}"
    return f"job {job_id} failed: {detail[0] if detail else last or 'no log, no message'}"


# ---- KubeRay: the job's files in a ConfigMap, run in place -------------------------------


def configmap_key(path: str) -> str:
    """The ConfigMap key of a file's relative path ('/' is not allowed in keys)."""
    key = path.replace("/", "--")
    if not _CONFIGMAP_KEY.match(key) or key.startswith(".."):
        raise JobError(
            f"{path}: a file name a ConfigMap cannot carry (allowed: letters, digits, '-', "
            "'_', '.'); rename it or keep it out of the job folder"
        )
    return key


def render_kuberay(
    job: JobProject,
    files: Mapping[str, bytes],
    spec,
    facts,
    command: list[str],
    *,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A ConfigMap with the job's files and a RayJob that runs ``command`` on them.

    The ConfigMap is mounted read-only on every pod of the RayJob's cluster
    at ``layout.KUBE_JOBS_DIR/<name>``, and that folder is the job's
    working_dir as a ``local://`` URI (Ray uses it in place: nothing is
    uploaded, so the submitter pod needs no copy). The runtime env is the
    one ``python -m cluster job submit`` sends, with that working_dir and the
    pods' job environments folder spelled out: KubeRay's submitter passes
    the runtime env to ``ray job submit`` inside a double-quoted shell word
    (``strconv.Quote`` in ray-operator/controllers/ray/common/job.go), where
    ``${RAY_GCP_JOB_ENVS}`` would be expanded, to nothing, in the submitter pod.
    """
    from cluster import kuberay

    name = name or f"{spec.cluster_name}-{job.name}"[: kuberay.MAX_RAYJOB_NAME].rstrip("-")
    mount = f"{layout.KUBE_JOBS_DIR}/{name}"
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    items = []
    total = 0
    for path in sorted(files):
        key = configmap_key(path)
        if key in data or key in binary:
            raise JobError(f"{path}: its ConfigMap key {key!r} is taken by another file; rename one")
        blob = files[path]
        total += len(blob)
        try:
            data[key] = blob.decode("utf-8")
        except UnicodeDecodeError:
            binary[key] = base64.b64encode(blob).decode()
        items.append({"key": key, "path": path})
    if total > CONFIGMAP_MAX_BYTES:
        raise JobError(
            f"{job.where}: {total} bytes of files, over the {CONFIGMAP_MAX_BYTES} a ConfigMap "
            "holds: keep data out of the job folder (read it from gs:// in the job)"
        )
    configmap_name = f"{name}-files"
    configmap: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name,
            "namespace": facts.namespace,
            "labels": {kuberay.CLUSTER_LABEL: spec.cluster_name, "ray-gcp/job": name},
        },
        "data": data,
    }
    if binary:
        configmap["binaryData"] = binary
    files_mount = kuberay.ConfigMapMount(
        volume="job-files", configmap=configmap_name, mount_path=mount, items=tuple(
            (i["key"], i["path"]) for i in items
        )
    )
    rayjob = kuberay.render_rayjob(
        spec,
        facts,
        entrypoint(command),
        name=name,
        runtime_env=runtime_env(job, f"local://{mount}", env, job_envs=layout.KUBE_JOB_ENVS),
        mounts=(files_mount,),
    )
    return [configmap, rayjob]


# ---- edges: the disk and uv ----------------------------------------------------------


def load_job(folder: Path | str) -> JobProject:
    """Read a job folder (pyproject.toml, uv.lock, .python-version)."""
    root = Path(folder)
    where = str(folder).rstrip("/") or "."
    if not root.is_dir():
        raise JobError(f"{where}: not a folder (give the job's folder: pyproject.toml and uv.lock)")
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise JobError(
            f"{where}/pyproject.toml: missing; a job is a uv project with its own lock "
            f"(`uv init --app {where}`, `uv add <package>`)"
        )
    lock = root / "uv.lock"
    pin = root / ".python-version"
    return parse_job(
        where,
        pyproject.read_text(),
        lock.read_text() if lock.is_file() else None,
        pin.read_text() if pin.is_file() else None,
    )


def job_files(folder: Path | str) -> dict[str, bytes]:
    """The files Ray would upload as the job's working_dir (relative path -> bytes).

    Ray's own walk: its default excludes (.git, .venv, venv, __pycache__) and
    the folder's .gitignore and .rayignore.
    """
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root = Path(folder).resolve()
    out: dict[str, bytes] = {}

    def take(p: Path) -> None:
        if p.is_file():
            out[p.relative_to(root).as_posix()] = p.read_bytes()

    defaults = _get_excludes(root, ray_constants.get_runtime_env_default_excludes())
    _dir_travel(root, [defaults], take, include_gitignore=True)
    return out


def uv_lock_check(folder: Path | str, uv: str) -> str | None:
    """None when ``uv lock --check`` accepts the folder's lock, else uv's error in one line.

    It fails on a lock that does not match pyproject.toml (stale), that does
    not parse, or whose requirements do not resolve (a package that does not
    exist). A fresh lock is accepted without the network.
    """
    proc = subprocess.run(
        [uv, "lock", "--check", "--quiet"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return None
    return _uv_error(proc.stderr.splitlines()) or (proc.stderr.strip() or f"exit {proc.returncode}")
