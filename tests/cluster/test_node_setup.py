"""Run the rendered node commands for real, in a sandbox home on this (Debian 12) machine.

What `ray up` runs over SSH on each node: file_mounts are simulated by
unpacking the bundle and copying a token into the sandbox ``$HOME``;
``sudo``/``dpkg-query`` are shims that record what apt would do. Everything
else (the pinned-uv check, ``uv venv`` on /usr/bin/python3.11, ``uv pip sync
--require-hashes`` of requirements-node.txt, the .pth, the token chmod, the
.bashrc lines, the version check before ``ray start``) is the real command.

Like a fresh node, the first round downloads from PyPI into uv's default cache
under the sandbox ``$HOME`` (nothing of the user's caches or config is visible:
the environment is built from scratch); the second round runs offline
(``UV_OFFLINE=1``) and must find everything already in place.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cluster import layout
from cluster.bundle import build_bundle, find_uv
from cluster.render import example_gcp_facts, render_gcp
from cluster.spec import ClusterSpec

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path(f"/usr/bin/python{layout.PYTHON_MINOR}")
# How this machine reaches PyPI (a TLS-inspecting proxy's CA, an HTTP proxy);
# passed through so round 1 can download. Nothing else of the caller's
# environment (caches, uv or pip config) reaches the node commands.
NETWORK_ENV = (
    "SSL_CERT_FILE", "SSL_CERT_DIR",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "all_proxy", "no_proxy",
)


def real_uv() -> str:
    uv = find_uv(ROOT)
    if uv is None:
        pytest.fail(f"uv not found: `make setup` installs uv {layout.UV_VERSION}")
    if Path(uv).read_bytes()[:2] == b"#!" and shutil.which("pyenv"):  # a pyenv shim
        uv = subprocess.check_output(["pyenv", "which", "uv"], text=True).strip()
    version = subprocess.check_output([uv, "--version"], text=True).split()[1]
    if version != layout.UV_VERSION:
        pytest.fail(f"{uv} is uv {version}, the nodes pin {layout.UV_VERSION}: run `make setup`")
    return uv


def bash(cmd: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", cmd], env=env, cwd=cwd, capture_output=True, text=True, check=False
    )


def require_system_python() -> None:
    if not SYSTEM_PYTHON.exists():
        why = f"{SYSTEM_PYTHON} missing: this machine is not like the node image (Debian 12)"
        if os.environ.get("CI"):  # CI must run it: .ci/run installs Debian's python3.11
            pytest.fail(f"{why}; CI is set, so this test must run: `apt-get install python3.11`")
        pytest.skip(why)


def make_node_home(home: Path, bundle: bytes) -> Path:
    """A node's $HOME as `ray up` leaves it before setup: file_mounts done, uv installed."""
    src = home / layout.NODE_SRC.removeprefix("~/")
    src.mkdir(parents=True)
    # file_mounts: the bundle and the token (copied with a too-open mode on purpose).
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        tar.extractall(src, filter="data")
    token = home / layout.NODE_AUTH_TOKEN.removeprefix("~/")
    token.parent.mkdir()
    token.write_text("0" * 64)
    token.chmod(0o644)
    # The pinned uv is "already installed" (no PyPI here).
    tools = home / ".ray-gcp-tools/bin"
    tools.mkdir(parents=True)
    (tools / "uv").symlink_to(real_uv())
    (home / ".bashrc").write_text("# user's own line\n")
    return home


def node_env(home: Path) -> dict[str, str]:
    return {
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        **{k: os.environ[k] for k in NETWORK_ENV if k in os.environ},
    }


def run_setup(cfg: dict, env: dict[str, str], cwd: Path, rounds=((1, {}),)) -> None:
    for round_, extra in rounds:
        for cmd in cfg["setup_commands"]:
            done = bash(cmd, env | extra, cwd)
            assert done.returncode == 0, f"round {round_}: {cmd}\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def built_node(tmp_path_factory):
    """A node built by the rendered setup, twice (from PyPI, then offline); shared by the
    tests of this module and removed after them (the venv is large)."""
    require_system_python()
    tmp = tmp_path_factory.mktemp("node")
    home = make_node_home(tmp / "home", build_bundle(ROOT))
    cfg = render_gcp(ClusterSpec(), example_gcp_facts())
    env = node_env(home)
    # uv's cache is the node's own, under the sandbox home, and starts empty.
    cache = Path(bash("~/.ray-gcp-tools/bin/uv cache dir", env, tmp).stdout.strip())
    assert cache.is_relative_to(home), cache
    assert not cache.exists()
    # Round 1 as on a fresh node (from PyPI); `ray up` reruns setup, so round 2
    # must be idempotent, and it runs offline: everything is already there.
    run_setup(cfg, env, tmp, rounds=((1, {}), (2, {"UV_OFFLINE": "1"})))
    yield {"home": home, "cfg": cfg, "env": env, "cache": cache, "tmp": tmp}
    shutil.rmtree(tmp, ignore_errors=True)


def test_rendered_node_setup_builds_the_pinned_venv_and_passes_the_check(
    built_node, tmp_path, gcs_emulator
):
    node_home, cfg, env, cache = (built_node[k] for k in ("home", "cfg", "env", "cache"))
    assert any(cache.glob("wheels-v*/pypi/ray")), f"uv did not use the node's own cache {cache}"
    python = node_home / "ray-venv/bin/python"
    versions = subprocess.run(
        [
            str(python),
            "-c",
            (
                "import sys, ray, cluster, workloads, googleapiclient; "
                "print(ray.__version__, sys.version_info[:2], cluster.__file__)"
            ),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split(" ", 1)
    assert versions[0] == layout.RAY_VERSION
    assert str(node_home / "ray-gcp/cluster/__init__.py") in versions[1]

    token = node_home / ".ray/auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    bashrc = (node_home / ".bashrc").read_text()
    assert bashrc == "# user's own line\n. ~/.ray-gcp-env\n"  # appended once in two rounds
    shell = bash(
        "bash -i -c 'source ~/.bashrc; which python; which uv; uv --version; env'", env, tmp_path
    ).stdout
    assert f"{node_home}/ray-venv/bin/python" in shell
    assert "RAY_AUTH_MODE=token" in shell
    assert "RAY_GCP_BUCKET=my-ray-project-ray-gcp-io" in shell
    # Users' jobs (`uv run`, cluster/userjob.py): the pinned uv on PATH, by itself (the
    # tools venv's python and pip stay off PATH), and where job environments go.
    assert f"{node_home}/.ray-gcp-tools/path/uv\nuv {layout.UV_VERSION}" in shell
    assert sorted(p.name for p in (node_home / ".ray-gcp-tools/path").iterdir()) == ["uv"]
    assert f"RAY_GCP_JOB_ENVS={node_home}/ray-job-envs\n" in shell

    # The first start command on the head: versions and the provider import pass.
    check = bash(cfg["head_start_ray_commands"][0], env, tmp_path)
    assert check.returncode == 0, check.stderr
    assert f"node check ok: ray {layout.RAY_VERSION}, python {layout.PYTHON_MINOR}" in check.stdout

    # A node that somehow got another Ray is refused before `ray start`.
    other = bash(
        cfg["worker_start_ray_commands"][0].replace(layout.RAY_VERSION, "2.59.0"), env, tmp_path
    )
    assert other.returncode == 1
    assert "pinned to Ray 2.59.0" in other.stderr

    # Drivers' runtime-env hook (~/.ray-gcp-env) imports in the node's venv.
    (tmp_path / "hook.py").write_text(
        "import importlib, os\n"
        "module, _, name = os.environ['RAY_RUNTIME_ENV_HOOK'].rpartition('.')\n"
        "print('hook returns', getattr(importlib.import_module(module), name)({}))\n"
    )
    # (No Ray session here: RAY_GCP_DRIVER_LOG_DIR points nowhere, so it copies nothing.)
    hook = bash(f"bash -i -c 'source ~/.bashrc; python {tmp_path}/hook.py'",
                env | {"RAY_GCP_DRIVER_LOG_DIR": str(tmp_path / "none")}, tmp_path)
    assert "hook returns {}" in hook.stdout, hook.stdout + hook.stderr
    _shipper_starts_detached_in_the_node_venv(cfg, env, tmp_path, gcs_emulator)


def _shipper_starts_detached_in_the_node_venv(cfg, env, tmp_path, emulator):
    """The rendered log shipper command (between `ray stop` and `ray start`) runs in
    the built venv, detaches, and ships a fake Ray session's log to the emulator;
    /tmp/ray is the sandbox's own here (other Rays run on this machine)."""
    import json
    import signal
    import time
    import urllib.parse
    import urllib.request

    (cmd,) = [c for c in cfg["head_start_ray_commands"] if "cluster.logship start" in c]
    ray_tmp = tmp_path / "ray"
    logs = ray_tmp / "session_2026-12-07_02-51-59_441416_29779" / "logs"
    logs.mkdir(parents=True)
    (ray_tmp / "session_latest").symlink_to(logs.parent)
    (logs / "raylet.out").write_text("shipped from a rendered node command\n")
    bucket = "my-ray-project-ray-gcp-io"  # example_gcp_facts' bucket, made in the emulator
    urllib.request.urlopen(urllib.request.Request(
        f"{emulator}/storage/v1/b?project=my-ray-project", method="POST",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"}), timeout=10).read()
    started = bash(cmd.replace("/tmp/ray/", f"{ray_tmp}/"),
                   env | {"STORAGE_EMULATOR_HOST": emulator}, tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int((Path(env["HOME"]) / ".ray-gcp-logship/logship.pid").read_text())
    try:
        query = urllib.parse.urlencode({"prefix": "logs/ray-gcp/2026-12-07/"})
        url = f"{emulator}/storage/v1/b/{bucket}/o?{query}"
        deadline = time.monotonic() + 60
        while True:
            try:
                items = json.loads(urllib.request.urlopen(url, timeout=5).read()).get("items")
            except OSError:  # the emulator has no such bucket: the shipper retries
                items = None
            if items and any("/raylet.out/" in i["name"] for i in items):
                break
            assert time.monotonic() < deadline, (
                Path(env["HOME"]) / ".ray-gcp-logship/logship.log").read_text()
            time.sleep(0.5)
    finally:
        os.kill(pid, signal.SIGTERM)


# A small pure-Python package our lock does not have, standing in for a heavy one (torch).
ADDED = ("tabulate", "0.9.0")


def project_copy(dest: Path) -> Path:
    """What `python -m cluster requirements` and the bundle read: the lock, its project and
    the bundled folders; the pinned uv where the Makefile puts it."""
    dest.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for folder in ("cluster", "workloads"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / ".tools/bin").mkdir(parents=True)
    (dest / ".tools/bin/uv").symlink_to(real_uv())
    return dest


def test_a_package_added_to_the_lock_is_importable_on_a_fresh_node(built_node, tmp_path):
    """cluster/README.md's path for heavy packages, end to end, on a copy of the project:
    `uv add` (uv.lock), `python -m cluster requirements` (the same export as ours), the
    bundle `pulumi up` ships, then the rendered setup on a fresh node: the new package is
    importable in the node venv and the node check still passes. The real uv.lock and
    requirements-node.txt are not touched."""
    real = {p: (ROOT / p).read_bytes() for p in ("uv.lock", layout.NODE_REQUIREMENTS)}
    name, version = ADDED
    assert f'name = "{name}"' not in real["uv.lock"].decode(), f"{name} is already locked"
    project = project_copy(tmp_path / "project")
    env = node_env(tmp_path)  # no cache of the caller's
    env["UV_CACHE_DIR"] = str(tmp_path / "uv-cache")
    env["PATH"] = f"{Path(real_uv()).parent}:{env['PATH']}"
    added = bash(f"uv add --no-sync {name}=={version}", env, project)
    assert added.returncode == 0, added.stderr
    exported = subprocess.run(
        [sys.executable, "-m", "cluster", "requirements"],
        cwd=project, env={**os.environ, "PYTHONPATH": str(project)},
        capture_output=True, text=True, check=False,
    )
    assert exported.returncode == 0, exported.stderr
    reqs = (project / layout.NODE_REQUIREMENTS).read_text()
    assert re.search(rf"^{name}=={re.escape(version)} \\\n    --hash=sha256:[0-9a-f]{{64}}", reqs, re.MULTILINE)

    # A fresh node (new home, no venv) from the new bundle. Its uv cache starts as a copy
    # of the first node's (hard links: the ~300 MB of unchanged wheels are not fetched
    # twice); the added package is not in it, so it comes from PyPI as on a new node.
    home = make_node_home(tmp_path / "home", build_bundle(project))
    fresh = node_env(home)
    cache = built_node["cache"]
    assert not any(cache.glob(f"wheels-v*/pypi/{name}")), f"{name} already in {cache}"
    (home / ".cache").mkdir()
    copied = bash(f"cp -al {cache} {home / '.cache' / cache.name}", fresh, tmp_path)
    assert copied.returncode == 0, copied.stderr
    cfg = built_node["cfg"]
    run_setup(cfg, fresh, tmp_path)
    assert any((home / ".cache" / cache.name).glob(f"wheels-v*/pypi/{name}"))

    python = home / "ray-venv/bin/python"
    got = bash(f"{python} -c 'import {name}; print({name}.__version__)'", fresh, tmp_path)
    assert got.returncode == 0 and got.stdout.strip() == version, got.stdout + got.stderr
    check = bash(cfg["head_start_ray_commands"][0], fresh, tmp_path)
    assert check.returncode == 0, check.stderr
    assert f"node check ok: ray {layout.RAY_VERSION}, python {layout.PYTHON_MINOR}" in check.stdout
    # The node built from the real bundle does not have it; the real files are unchanged.
    other = bash(f"{built_node['home']}/ray-venv/bin/python -c 'import {name}'", fresh, tmp_path)
    assert other.returncode == 1
    assert {p: (ROOT / p).read_bytes() for p in real} == real


def test_initialization_installs_only_missing_packages(tmp_path):
    cfg = render_gcp(ClusterSpec(), example_gcp_facts())
    shims = tmp_path / "shims"
    shims.mkdir()
    log = tmp_path / "sudo.log"
    (shims / "dpkg-query").write_text(
        '#!/bin/bash\n[ "${@: -1}" = rsync ] && printf installed || printf not-installed\n'
    )
    (shims / "sudo").write_text(f'#!/bin/bash\necho "$*" >> {log}\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    (cmd,) = cfg["initialization_commands"]
    done = bash(cmd, {"PATH": f"{shims}:/usr/bin:/bin", "HOME": str(tmp_path)}, tmp_path)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    assert calls[0].endswith("apt-get -o DPkg::Lock::Timeout=600 -qq update")
    assert calls[1].endswith("install -y --no-install-recommends python3-venv")
