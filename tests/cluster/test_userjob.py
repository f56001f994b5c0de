"""cluster.userjob and `python -m cluster job`: a user's job checked against the cluster,
its runtime env, its failure line, and its RayJob for KubeRay. No cluster here: the
runs on the local cluster are in tests/examples/test_my_job.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

from cluster import kuberay, layout, userjob
from cluster.kuberay import example_kube_facts
from cluster.spec import ClusterSpec
from tests.cluster.kube_schema import core_errors, crd_errors

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "examples" / "my-job"
EXAMPLES_README = ROOT / "examples" / "README.md"


def copy_job(tmp_path: Path, name: str = "job") -> Path:
    dest = tmp_path / name
    shutil.copytree(TEMPLATE, dest, ignore=shutil.ignore_patterns("__pycache__", ".venv"))
    return dest


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) >= count, (old, path)
    path.write_text(text.replace(old, new))


# ---- the template -----------------------------------------------------------------


def test_the_template_is_a_virtual_uv_project_the_cluster_accepts():
    job = userjob.load_job(TEMPLATE)
    assert userjob.check(job) == []
    assert job.name == "my-job"
    assert [p["version"] for p in job.locked("ray")] == [layout.RAY_VERSION]
    assert job.lock["requires-python"] == "==3.11.*"
    assert "virtual" in job.locked("my-job")[0]["source"]
    # It brings a package the cluster's own lock does not have: the point of the template.
    ours = tomllib.loads((ROOT / "uv.lock").read_text())
    assert "numba" not in {p["name"] for p in ours["package"]}
    assert job.locked("numba") and job.locked("llvmlite")
    # Tasks import the helper module (on the workers, from the working_dir).
    driver = (TEMPLATE / "driver.py").read_text()
    task = driver.split("def count_task", 1)[1].split("\ndef ", 1)[0]
    assert "primes.count_segment" in task and "import numba" in task
    assert (TEMPLATE / "primes.py").is_file()


def test_job_files_are_what_ray_would_upload(tmp_path):
    job = copy_job(tmp_path)
    (job / ".venv/lib").mkdir(parents=True)
    (job / ".venv/lib/big.so").write_bytes(b"x" * 100)
    (job / "__pycache__").mkdir()
    (job / "__pycache__/driver.cpython-311.pyc").write_bytes(b"x")
    (job / ".gitignore").write_text("out/\n")
    (job / "out").mkdir()
    (job / "out/result.json").write_text("{}")
    assert sorted(userjob.job_files(job)) == [
        ".gitignore", ".python-version", "driver.py", "primes.py", "pyproject.toml", "uv.lock",
    ]


# ---- refusals: what cannot work on the cluster, with the fix -------------------------


def refusals(job_dir: Path) -> list[str]:
    return userjob.check(userjob.load_job(job_dir))


def test_another_ray_in_the_lock_is_refused_naming_both_versions_and_the_fix(tmp_path):
    job = copy_job(tmp_path)
    edit(job / "uv.lock", 'name = "ray"\nversion = "2.60.0"', 'name = "ray"\nversion = "2.59.0"')
    assert refusals(job) == [
        (f"{job}/uv.lock: ray 2.59.0, but the cluster runs ray 2.60.0 (cluster/layout.py): "
        f'require "ray==2.60.0" in {job}/pyproject.toml, then run `uv lock` in {job}')
    ]


def test_a_lock_without_ray_is_refused(tmp_path):
    job = copy_job(tmp_path)
    lock = (job / "uv.lock").read_text()
    start = lock.index('[[package]]\nname = "ray"\n')
    end = lock.index("[[package]]", start + 1)
    (job / "uv.lock").write_text(lock[:start] + lock[end:])
    assert refusals(job) == [
        (f"{job}/uv.lock: ray is not locked, but the driver needs the cluster's Ray 2.60.0: "
        f'add "ray==2.60.0" to [project] dependencies in {job}/pyproject.toml, then run '
        f"`uv lock` in {job}")
    ]


@pytest.mark.parametrize("requires", [">=3.12", ">=3.11.4", "<3.11"])
def test_a_lock_for_another_python_is_refused(tmp_path, requires):
    job = copy_job(tmp_path)
    edit(job / "uv.lock", 'requires-python = "==3.11.*"', f'requires-python = "{requires}"')
    assert refusals(job) == [
        (f"{job}/uv.lock: requires-python {requires!r} does not admit Python 3.11, which "
        f'every node runs (cluster/layout.py): set requires-python = ">=3.11,<3.12" in '
        f"{job}/pyproject.toml, then run `uv lock` in {job}")
    ]


def test_a_python_version_file_for_another_minor_is_refused(tmp_path):
    job = copy_job(tmp_path)
    (job / ".python-version").write_text("3.12\n")
    assert refusals(job) == [
        (f"{job}/.python-version: '3.12', but every node runs Python 3.11: write 3.11 there "
        "(or delete the file)")
    ]
    (job / ".python-version").write_text("3.11.9\n")
    assert refusals(job) == []


def test_a_job_that_is_a_package_is_refused(tmp_path):
    job = copy_job(tmp_path)
    edit(job / "uv.lock", 'source = { virtual = "." }', 'source = { editable = "." }')
    assert refusals(job) == [
        (f"{job}/pyproject.toml: the project is a package (editable = '.' in uv.lock), which "
        "`uv run` would install into the environment that every job with this lock shares; "
        "the job's code travels as Ray's working_dir instead: remove [build-system] (or set "
        f"[tool.uv] package = false), then run `uv lock` in {job}")
    ]


def test_a_folder_without_a_lock_or_project_is_refused(tmp_path):
    job = copy_job(tmp_path)
    (job / "uv.lock").unlink()
    assert refusals(job) == [
        (f"{job}/uv.lock: missing; run `uv lock` in {job} (the job's packages come only from "
        "its lock)")
    ]
    (job / "pyproject.toml").unlink()
    with pytest.raises(userjob.JobError, match="pyproject.toml: missing; a job is a uv project"):
        userjob.load_job(job)


class Listener:
    """A TCP port on 127.0.0.1 that counts connections: proves nothing reached 'the cluster'."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()


def submit(job: Path, address: str, *command: str, cwd: Path = ROOT):
    return subprocess.run(
        [sys.executable, "-m", "cluster", "job", "submit", str(job), "--address", address,
         "--", *command],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize(
    ("lock_edit", "message"),
    [
        (
            ('name = "ray"\nversion = "2.60.0"', 'name = "ray"\nversion = "2.61.0"'),
            "uv.lock: ray 2.61.0, but the cluster runs ray 2.60.0",
        ),
        (
            ('requires-python = "==3.11.*"', 'requires-python = "==3.12.*"'),
            "uv.lock: requires-python '==3.12.*' does not admit Python 3.11",
        ),
    ],
    ids=["ray", "python"],
)
def test_job_submit_refuses_before_it_contacts_the_cluster(tmp_path, lock_edit, message):
    job = copy_job(tmp_path)
    edit(job / "uv.lock", *lock_edit)
    cluster = Listener()
    try:
        r = submit(job, cluster.url, "python", "driver.py")
    finally:
        cluster.close()
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "refused (nothing was submitted):"
    assert len(lines) == 2 and lines[1].startswith(f"  {job}/{message}"), r.stderr
    assert r.stdout == ""
    assert cluster.connections == 0


def test_job_submit_refuses_a_lock_uv_cannot_read(tmp_path):
    """`uv lock --check` gives uv's own verdict, in one line (offline: uv reads the file)."""
    job = copy_job(tmp_path)
    edit(job / "uv.lock", 'name = "numba"\nversion = "0.68.1"', 'name = "numba"\nversion = "0.68.0"')
    cluster = Listener()
    try:
        r = submit(job, cluster.url, "python", "driver.py")
    finally:
        cluster.close()
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == "refused (nothing was submitted):"
    (line,) = r.stderr.splitlines()[1:]
    assert line.startswith(f"  {job}/uv.lock: `uv lock --check` fails: Failed to parse `uv.lock`: ")
    assert "`numba` (0.68.0)" in line, line
    assert line.endswith(f"(run `uv lock` in {job} and fix what it says)")
    assert cluster.connections == 0


NO_SUCH_PACKAGE = "ray-gcp-no-such-package-22"


def test_job_submit_refuses_a_dependency_that_does_not_exist(tmp_path):
    """A dependency added to pyproject.toml that no index has: `uv lock --check` resolves
    (PyPI, into this test's own empty cache) and says so; nothing reaches the cluster."""
    job = copy_job(tmp_path)
    edit(job / "pyproject.toml", '"numba>=0.61",', f'"numba>=0.61",\n    "{NO_SUCH_PACKAGE}",')
    cache = tmp_path / "uv-cache"
    cluster = Listener()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "cluster", "job", "submit", str(job), "--address",
             cluster.url, "--", "python", "driver.py"],
            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "UV_CACHE_DIR": str(cache)},
        )
    finally:
        cluster.close()
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        "refused (nothing was submitted):",
        (f"  {job}/uv.lock: `uv lock --check` fails: No solution found when resolving "
        f"dependencies: Because {NO_SUCH_PACKAGE} was not found in the package registry and "
        f"your project depends on {NO_SUCH_PACKAGE}, we can conclude that your project's "
        f"requirements are unsatisfiable. (run `uv lock` in {job} and fix what it says)"),
    ]
    assert cluster.connections == 0


def test_job_submit_refuses_uv_run_in_the_command_and_reserved_env(tmp_path):
    cluster = Listener()
    try:
        r = submit(TEMPLATE, cluster.url, "uv", "run", "driver.py")
        r2 = subprocess.run(
            [sys.executable, "-m", "cluster", "job", "submit", str(TEMPLATE), "--address",
             cluster.url, "--env", "UV_PYTHON=3.12", "--", "python", "driver.py"],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )
    finally:
        cluster.close()
    assert r.returncode == 2 and "give it without uv" in r.stderr, r.stderr
    assert r2.returncode == 2 and "--env UV_PYTHON: set by ray-gcp" in r2.stderr, r2.stderr
    assert cluster.connections == 0


class FakeJobsApi:
    """An HTTP server on 127.0.0.1 that answers /api/version like a dashboard running
    another Ray, and records every request (no job may be posted)."""

    def __init__(self, ray_version: str):
        import http.server

        requests = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                requests.append((self.command, self.path))
                body = json.dumps({"ray_version": ray_version, "version": "4",
                                   "ray_commit": "0" * 40}).encode()
                if self.path != "/api/version":
                    self.send_response(404)
                    body = b"{}"
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_job_submit_refuses_a_cluster_that_runs_another_ray(tmp_path):
    api = FakeJobsApi("2.59.0")
    try:
        r = submit(TEMPLATE, api.url, "python", "driver.py")
    finally:
        api.close()
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-2:] == [
        "refused (nothing was submitted):",
        (f"  the cluster at {api.url} runs ray 2.59.0, but this checkout and "
        f"{TEMPLATE}/uv.lock pin ray 2.60.0: submit to a cluster built from this checkout"),
    ]
    assert api.requests and all(method == "GET" for method, _ in api.requests), api.requests


def test_a_jobs_api_that_does_not_take_the_job_is_one_line(tmp_path):
    api = FakeJobsApi("2.60.0")  # answers 404 to the upload and the submission
    try:
        r = submit(TEMPLATE, api.url, "python", "driver.py")
    finally:
        api.close()
    assert r.returncode == 3, r.stderr
    assert r.stderr.splitlines()[-1].startswith(
        f"error: the Jobs API at {api.url} did not take the job: "
    ), r.stderr
    assert "Traceback" not in r.stderr


def test_job_check_says_ok_and_names_the_environment():
    r = subprocess.run(
        [sys.executable, "-m", "cluster", "job", "check", "examples/my-job"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert r.returncode == 0, r.stderr
    job = userjob.load_job(TEMPLATE)
    assert r.stdout == (
        "examples/my-job: ok for the cluster (ray 2.60.0, Python 3.11); its environment on "
        f"each node: $RAY_GCP_JOB_ENVS/{userjob.env_dir(job)}\n"
    )


# ---- the runtime env -------------------------------------------------------------


def test_runtime_env_and_entrypoint():
    job = userjob.load_job(TEMPLATE)
    assert userjob.runtime_env(job, "examples/my-job", {"A": "1"}) == {
        "working_dir": "examples/my-job",
        "env_vars": {
            "UV_PROJECT_ENVIRONMENT": f"${{RAY_GCP_JOB_ENVS}}/{userjob.env_dir(job)}",
            "UV_PYTHON": "3.11",
            "UV_PYTHON_DOWNLOADS": "never",
            "A": "1",
        },
    }
    assert userjob.entrypoint(["python", "driver.py", "--limit", "a b"]) == (
        "uv run --frozen --no-dev python driver.py --limit 'a b'"
    )
    with pytest.raises(userjob.JobError, match="no command"):
        userjob.entrypoint([])


def test_one_environment_per_lock_whatever_the_code(tmp_path):
    """The environment's name hashes the lock (and Python, and uv's flags) only: a job
    whose code or arguments change reuses it; another lock gets its own."""
    job_dir = copy_job(tmp_path)
    before = userjob.env_dir(userjob.load_job(job_dir))
    assert before == userjob.env_dir(userjob.load_job(TEMPLATE))
    assert before.startswith("my-job-") and len(before) == len("my-job-") + 16
    (job_dir / "driver.py").write_text("print('other code')\n")
    assert userjob.env_dir(userjob.load_job(job_dir)) == before
    edit(job_dir / "uv.lock", 'name = "numba"\nversion', 'name = "numba"\n# x\nversion')
    assert userjob.env_dir(userjob.load_job(job_dir)) != before


# ---- a failed job in one line ----------------------------------------------------

DRIVER_TB = """\
primes below 1000: starting
Traceback (most recent call last):
  File "/tmp/rg-ab/session_x/runtime_resources/working_dir_files/_ray_pkg_0123abcd/driver.py", line 140, in <module>
    sys.exit(main())
             ^^^^^^
  File "/tmp/rg-ab/session_x/runtime_resources/working_dir_files/_ray_pkg_0123abcd/driver.py", line 99, in main
    raise ValueError("the input is wrong")
ValueError: the input is wrong
"""

UV_FAILED = """\
Using CPython 3.11.7 interpreter at: /usr/bin/python3.11
Creating virtual environment at: /x/job-envs/my-job-0011
Downloading numba (3.7MiB)
error: Failed to download `numba==0.68.1`
  cause: Hash mismatch for `numba==0.68.1`

         Expected:
           sha256:0000

         Computed:
           sha256:58fe

hint: `numba` (v0.68.1) was included because `my-job` (v0.1.0) depends on `numba`
"""


# A task's exception re-raised in the driver, as Ray 2.60 logged it (tests/examples, with
# Ray's uv hook switched off on purpose: the worker had no numba); paths shortened.
TASK_TB = """\
Traceback (most recent call last):
  File "/tmp/rg-q/session_x/runtime_resources/working_dir_files/_ray_pkg_8de6de5b4253bc3c/driver.py", line 124, in <module>
    sys.exit(main())
             ^^^^^^
  File "/tmp/rg-q/session_x/runtime_resources/working_dir_files/_ray_pkg_8de6de5b4253bc3c/driver.py", line 93, in main
    parts = ray.get(
            ^^^^^^^^
  File "/x/job-envs/my-job-dbfbb1dbb84d8d95/lib/python3.11/site-packages/ray/_private/worker.py", line 1053, in get_objects
    raise value.as_instanceof_cause()
ray.exceptions.RayTaskError(RuntimeError): \x1b[36mray::count_task()\x1b[39m (pid=569, ip=192.0.2.2)
RuntimeError: The remote function failed to import on the worker. This may be because needed library dependencies are not installed in the worker environment or cannot be found from sys.path [...]

\x1b[36mray::count_task()\x1b[39m (pid=569, ip=192.0.2.2)
               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/v/.venv/lib/python3.11/site-packages/ray/cloudpickle/cloudpickle.py", line 469, in subimport
    __import__(name)
  File "/tmp/rg-q/session_x/runtime_resources-ff01/working_dir_files/_ray_pkg_8de6de5b4253bc3c/primes.py", line 11, in <module>
    import numba
ModuleNotFoundError: No module named 'numba'
\x1b[33m(raylet)\x1b[0m /v/raylet(+0x8bbdcb) [0x558354da1dcb] std::_Function_handler<>::_M_invoke()
"""


def test_failure_line_of_a_task_that_raises():
    assert userjob.failure_line("raysubmit_3", "FAILED", "exit code 1", TASK_TB) == (
        "job raysubmit_3 failed: primes.py:11 in <module>: ModuleNotFoundError: No module "
        "named 'numba'"
    )


def test_failure_line_of_a_driver_that_raises():
    assert userjob.failure_line("raysubmit_1", "FAILED", "exit code 1", DRIVER_TB) == (
        "job raysubmit_1 failed: driver.py:99 in main: ValueError: the input is wrong"
    )


def test_failure_line_of_a_lock_uv_cannot_install():
    assert userjob.failure_line("raysubmit_2", "FAILED", "exit code 2", UV_FAILED) == (
        "job raysubmit_2 failed before the driver started: uv could not build the job's "
        "environment from its uv.lock on the cluster: Failed to download `numba==0.68.1`: "
        "Hash mismatch for `numba==0.68.1`"
    )


def test_a_drivers_own_error_line_is_not_taken_for_uv():
    logs = "driver: starting\nerror: the input folder is empty\n"
    ray_says = (
        "Job entrypoint command failed with exit code 1, last available logs (truncated to "
        "20,000 chars):\n" + logs
    )
    assert userjob.failure_line("j", "FAILED", ray_says, logs) == (
        "job j failed: the command exited with status 1; its last line: error: the input "
        "folder is empty"
    )


def test_failure_line_without_uv_stopped_and_silent():
    for shell_says in ("bash: line 1: uv: command not found", "/bin/sh: 1: uv: not found"):
        assert userjob.failure_line("j", "FAILED", None, shell_says + "\n") == (
            "job j failed before the driver started: the cluster's nodes have no `uv` on PATH "
            "(a ray-gcp node gets it from its setup; rerun `ray up`)"
        )
    assert userjob.failure_line("j", "STOPPED", "stopped by user", "") == (
        "job j was stopped: stopped by user"
    )
    assert userjob.failure_line("j", "FAILED", "Job supervisor actor died\nmore", "") == (
        "job j failed: Job supervisor actor died"
    )


# ---- KubeRay: ConfigMap + RayJob ---------------------------------------------------

FACTS = example_kube_facts()


def rendered(command=("python", "driver.py", "--limit", "100000")):
    job = userjob.load_job(TEMPLATE)
    files = userjob.job_files(TEMPLATE)
    return job, files, userjob.render_kuberay(job, files, ClusterSpec(), FACTS, list(command))


def test_the_rayjob_and_its_configmap_are_valid_for_kuberay_and_kubernetes():
    _, _, (configmap, rayjob) = rendered()
    assert core_errors(configmap, layout.GKE_MINOR) == []
    assert crd_errors(rayjob) == []
    assert rayjob["metadata"]["name"] == "ray-gcp-my-job"
    assert configmap["metadata"]["name"] == "ray-gcp-my-job-files"
    assert len(rayjob["metadata"]["name"]) <= kuberay.MAX_RAYJOB_NAME


def test_the_rayjob_carries_the_documented_runtime_env_and_runs_the_files_in_place():
    job, files, (configmap, rayjob) = rendered()
    spec = rayjob["spec"]
    assert spec["entrypoint"] == "uv run --frozen --no-dev python driver.py --limit 100000"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    mount = f"{layout.KUBE_JOBS_DIR}/ray-gcp-my-job"
    assert runtime_env == {
        "working_dir": f"local://{mount}",
        "env_vars": {
            "UV_PROJECT_ENVIRONMENT": f"{layout.KUBE_JOB_ENVS}/{userjob.env_dir(job)}",
            "UV_PYTHON": "3.11",
            "UV_PYTHON_DOWNLOADS": "never",
        },
    }
    # KubeRay pastes the runtime env into a double-quoted shell word in the submitter
    # pod (job.go, strconv.Quote): nothing in it may expand there.
    assert "$" not in spec["runtimeEnvYAML"] and "`" not in spec["runtimeEnvYAML"]
    # examples/README.md shows exactly this runtime env.
    shown = EXAMPLES_README.read_text().split("runtimeEnvYAML` of the rendered RayJob", 1)[1]
    shown = shown.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(shown) == runtime_env
    # Every pod of the job's cluster mounts the files there and knows $RAY_GCP_JOB_ENVS.
    cs = spec["rayClusterSpec"]
    for tpl in [cs["headGroupSpec"]["template"], *(g["template"] for g in cs["workerGroupSpecs"])]:
        pod = tpl["spec"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == "job-files"]
        assert vol["configMap"]["name"] == configmap["metadata"]["name"]
        c = pod["containers"][0]  # KubeRay's Ray container is the first (then the log sidecar)
        assert c["name"] in ("ray-head", "ray-worker"), c["name"]
        assert {"name": "job-files", "mountPath": mount, "readOnly": True} in c["volumeMounts"]
        assert {"name": "RAY_GCP_JOB_ENVS", "value": layout.KUBE_JOB_ENVS} in c["env"]
    # The ConfigMap holds every file Ray would upload, each at its path.
    items = {i["path"]: i["key"] for i in vol["configMap"]["items"]}
    assert sorted(items) == sorted(files)
    for path, key in items.items():
        assert configmap["data"][key].encode() == files[path]


def test_the_command_line_renders_the_same_objects_and_refuses_a_bad_job(tmp_path):
    _, _, objs = rendered(("python", "driver.py"))
    r = subprocess.run(
        [sys.executable, "-m", "cluster", "render", "--target", "kuberay", "--kind", "rayjob",
         "--job-dir", "examples/my-job", "--", "python", "driver.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    assert list(yaml.safe_load_all(r.stdout)) == objs
    job = copy_job(tmp_path)
    edit(job / "uv.lock", 'name = "ray"\nversion = "2.60.0"', 'name = "ray"\nversion = "2.59.0"')
    bad = subprocess.run(
        [sys.executable, "-m", "cluster", "render", "--target", "kuberay", "--kind", "rayjob",
         "--job-dir", str(job), "--", "python", "driver.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("invalid input (nothing was rendered):\n  ")
    assert "uv.lock: ray 2.59.0, but the cluster runs ray 2.60.0" in bad.stderr
    # Without --job-dir the RayJob is still annotate.py's; a command needs --job-dir.
    plain = subprocess.run(
        [sys.executable, "-m", "cluster", "render", "--target", "kuberay", "--kind", "rayjob",
         "--", "python", "x.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert plain.returncode == 2 and "only with --job-dir" in plain.stderr


def test_files_a_configmap_cannot_carry_are_refused(tmp_path):
    job = userjob.load_job(TEMPLATE)
    with pytest.raises(userjob.JobError, match="a file name a ConfigMap cannot carry"):
        userjob.render_kuberay(job, {"my data.csv": b"1"}, ClusterSpec(), FACTS, ["python", "x"])
    with pytest.raises(userjob.JobError, match="over the .* a ConfigMap holds"):
        userjob.render_kuberay(
            job, {"big.bin": b"\0" * (1024 * 1024)}, ClusterSpec(), FACTS, ["python", "x"]
        )
    _, rayjob = userjob.render_kuberay(
        job, {"data/img.png": b"\x89PNG\0\xff", "a.py": b"x"}, ClusterSpec(), FACTS, ["python", "a.py"]
    )
    cs = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (vol,) = [v for v in cs["volumes"] if v["name"] == "job-files"]
    assert {"key": "data--img.png", "path": "data/img.png"} in vol["configMap"]["items"]
