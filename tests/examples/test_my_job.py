"""examples/my-job on the session's local cluster, through `python -m cluster job submit`.

The first run builds the job's environment from its uv.lock: the cluster's uv cache
(``<state dir>/uv-cache``, its nodes' own) and job environments start empty here, inside
the test session's temp dir, so the packages come from PyPI as on a fresh node (and
nothing of this machine's uv cache is used). Later runs with the same lock reuse it.
The head has CPU 0, so every task runs on a fake worker node; each task imports numba
(not in our own lock) and reports what it imported and where.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from cluster import layout, userjob
from cluster.kuberay import example_kube_facts
from cluster.local import LocalCluster
from cluster.local_provider import node_temp_dir
from cluster.spec import ClusterSpec

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "examples" / "my-job"
LIMIT, CHUNKS, PRIMES = 3_000_000, 6, 216_816  # pi(3e6)
SUBMIT_TIMEOUT = 900  # the first run downloads ~150 MB; tests check outcomes, not speed


def user_env(cluster: LocalCluster) -> dict[str, str]:
    """A user's shell after the README's `eval` line: no RAY_* of its own, the exports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(cluster.driver_env())
    return env


def run_submit(cluster: LocalCluster, job: Path, *command: str) -> dict:
    """`python -m cluster job submit JOB -- COMMAND` from a user's shell."""
    argv = [sys.executable, "-m", "cluster", "job", "submit", str(job), "--", *command]
    return run_timed(argv, user_env(cluster))


def run_timed(argv: list[str], env: dict[str, str]) -> dict:
    """Run a command in ROOT; its output lines with their arrival times, so the wait
    before the driver's first line can be measured."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    lines: list[tuple[float, str]] = []
    errors: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append((time.monotonic() - started, line))

    readers = [
        threading.Thread(target=read, daemon=True),
        threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=SUBMIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise
    for reader in readers:
        reader.join(30)
    stderr = "".join(errors)
    out = "".join(line for _, line in lines)
    return {
        "rc": proc.returncode, "out": out, "err": stderr, "lines": lines,
        "seconds": time.monotonic() - started,
    }


def seconds_to(result: dict, text: str) -> float:
    return next(t for t, line in result["lines"] if text in line)


def env_snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every file of a job environment with (inode, mtime_ns): changes if anything is installed."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            out[os.path.join(dirpath, f)] = (st.st_ino, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def cluster(_session_cluster: LocalCluster):
    lc = _session_cluster.up()
    yield lc
    # The environments and the cluster's uv cache (~1 GB) are this module's alone.
    shutil.rmtree(lc.job_envs_dir, ignore_errors=True)
    shutil.rmtree(lc.uv_cache_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def first_run(cluster: LocalCluster, tmp_path_factory) -> dict:
    """The template's first run: its environment is built here, from an empty cache."""
    assert cluster.uv_cache_dir.is_relative_to(cluster.state_dir)
    assert cluster.state_dir.is_relative_to(tmp_path_factory.getbasetemp())
    assert not cluster.uv_cache_dir.exists() or not any(cluster.uv_cache_dir.iterdir()), (
        "the cluster's uv cache is not empty: another test ran a job first"
    )
    out = tmp_path_factory.mktemp("my-job-run1") / "result.json"
    result = run_submit(
        cluster, TEMPLATE, "python", "driver.py", "--limit", str(LIMIT), "--chunks",
        str(CHUNKS), "--output", str(out),
    )
    result["result"] = json.loads(out.read_text()) if out.exists() else None
    return result


def template_env(cluster: LocalCluster) -> Path:
    return cluster.job_envs_dir / userjob.env_dir(userjob.load_job(TEMPLATE))


def test_the_template_runs_on_worker_nodes_with_its_own_numba(cluster, first_run):
    r = first_run
    assert r["rc"] == 0, r["out"][-3000:] + r["err"][-3000:]
    assert f"primes below {LIMIT}: {PRIMES} (matches NumPy); {CHUNKS} tasks on" in r["out"]
    assert re.search(r"^job raysubmit_\w+ succeeded in [\d.]+ s$", r["out"], re.MULTILINE)
    result = r["result"]
    assert result["ok"] and result["count"] == result["expected"] == PRIMES
    # Every task ran on a fake worker node (the head has CPU 0), imported the lock's
    # numba and ran in the job's environment, built under $RAY_GCP_JOB_ENVS.
    numba = userjob.load_job(TEMPLATE).locked("numba")[0]["version"]
    head = [n.node_id for n in cluster.status().nodes if n.is_head]
    env = template_env(cluster)
    assert len(result["tasks"]) == CHUNKS
    for task in result["tasks"]:
        assert task["node"] not in head
        assert task["numba"] == numba
        assert task["python"] == str(env)
    # Each worker node unpacked the job's folder into its own runtime_resources, as on
    # VMs with their own disks (cluster/local_provider.py).
    for node in {task["node"] for task in result["tasks"]}:
        session = Path(node_temp_dir(str(cluster.temp_dir), node)) / "session_latest"
        unpacked = session / "runtime_resources" / "working_dir_files"
        assert any(unpacked.glob("_ray_pkg_*/primes.py")), sorted(session.iterdir())
    # Built once, from the registry, into the cluster's own cache (not this machine's).
    assert re.search(r"Installed \d+ packages in", r["out"]), r["out"][:3000]
    assert any(cluster.uv_cache_dir.glob("wheels-v*/pypi/numba"))
    assert (env / "lib/python3.11/site-packages/numba").is_dir()


def readme_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Your own job, with your own packages\n", 1)[1]


@pytest.fixture(scope="module")
def second_run(cluster, first_run) -> dict:
    """README.md's commands, run by bash as written (the session cluster's state dir added
    to `local up`, `.venv/bin/` the venv in use): the template's second run, same lock."""
    block = readme_section().split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.strip().splitlines()
    assert lines[0] == "make setup"
    assert lines[1].startswith('eval "$(.venv/bin/python -m cluster local up')
    assert lines[2].startswith(".venv/bin/python -m cluster job submit examples/my-job -- ")
    bindir = os.path.dirname(sys.executable)
    script = "set -e\n" + "\n".join(lines[1:]).replace(
        "cluster local up", f"cluster local up --state-dir {cluster.state_dir}"
    ).replace(".venv/bin/", f"{bindir}/")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    before = env_snapshot(template_env(cluster))
    result = run_timed(["bash", "-c", script], env)
    result["changed"] = env_snapshot(template_env(cluster)) != before
    return result


def test_readme_commands_run_the_template_as_written(second_run):
    r = second_run
    assert r["rc"] == 0, (r["out"] + r["err"])[-4000:]
    section = readme_section()
    promised = section.split("It streams the job's log and ends with a line like\n`", 1)[1]
    promised = promised.split("`", 1)[0]
    # As promised, but for how many worker nodes the autoscaler started and the time.
    pattern = re.sub(r"\\ \d+\\ node\\\(s\\\)", r" \\d+ node\\(s\\)", re.escape(promised))
    pattern = re.sub(r"\\ [\d\\.]+\\ s$", r" [\\d.]+ s", pattern)
    assert pattern != re.escape(promised)
    assert re.search(f"^{pattern}$", r["out"], re.MULTILINE), (pattern, r["out"][-3000:])
    assert re.search(r"^job raysubmit_\w+ succeeded in [\d.]+ s$", r["out"], re.MULTILINE)


def test_a_second_run_reuses_the_environment(first_run, second_run, record_property):
    r1, r2 = first_run, second_run
    assert r2["rc"] == 0, (r2["out"] + r2["err"])[-4000:]
    # Nothing installed: not by the driver's `uv run` (its log), not by any worker's
    # (every fake node shares the environment's folder, and no file in it changed).
    assert "Installed" not in r2["out"] and "Downloading" not in r2["out"]
    assert not r2["changed"]
    # Measured, not asserted (tests check outcomes): the wait from submission to the
    # driver's first line, which includes building the environment on the first run.
    first_line = "driver: ray "
    waits = {
        "first": round(seconds_to(r1, first_line) - seconds_to(r1, "submitted "), 1),
        "second": round(seconds_to(r2, first_line) - seconds_to(r2, "submitted "), 1),
        "first_total": round(r1["seconds"], 1),
        "second_total": round(r2["seconds"], 1),
    }
    record_property("my_job_seconds", waits)
    print(
        f"\nmy-job: submission to the driver's first line: first run {waits['first']} s, "
        f"second {waits['second']} s; whole job: {waits['first_total']} s, "
        f"{waits['second_total']} s"
    )


def test_a_driver_that_raises_ends_in_one_line_and_loses_nothing(cluster, first_run, tmp_path):
    """The driver fails half-way through writing its result (a planted "disk full"): its
    log is all there, the last line says what and where, and no result file, whole or
    half, is left (the template writes a temp file and renames it)."""
    job = tmp_path / "job"
    shutil.copytree(TEMPLATE, job, ignore=shutil.ignore_patterns("__pycache__"))
    driver = job / "driver.py"
    text = driver.read_text()
    anchor = "            f.write(text)\n"
    assert text.count(anchor) == 1
    driver.write_text(text.replace(
        anchor,
        "            f.write(text[: len(text) // 2])\n            f.flush()\n"
        "            raise OSError('planted: the disk filled up mid-write')\n",
    ))
    line = text[: text.index(anchor)].count("\n") + 3  # the raise, 1-based
    out = tmp_path / "out"
    out.mkdir()
    r = run_submit(cluster, job, "python", "driver.py", "--limit", str(LIMIT), "--chunks",
                   str(CHUNKS), "--output", str(out / "result.json"))
    assert r["rc"] == 1, r["out"][-3000:] + r["err"][-3000:]
    assert "driver: ray 2.60.0, numba " in r["out"]  # what it printed is there
    (error,) = r["err"].strip().splitlines()[-1:]
    assert re.fullmatch(
        rf"error: job raysubmit_\w+ failed: driver\.py:{line} in write_atomically: "
        r"OSError: planted: the disk filled up mid-write", error
    ), r["err"]
    assert list(out.iterdir()) == []  # neither the result nor the half-written temp file


def test_a_lock_whose_files_do_not_match_their_hashes_fails_before_the_driver(
    cluster, first_run, tmp_path
):
    """uv checks every download against the lock's sha256: a tampered hash (a wheel that is
    not the locked one) fails the environment on the cluster, so the driver never starts."""
    job = tmp_path / "job"
    shutil.copytree(TEMPLATE, job, ignore=shutil.ignore_patterns("__pycache__"))
    lock = (job / "uv.lock").read_text()
    tampered = re.sub(
        r'(numba-[\d.]+-cp311-cp311-manylinux[^"]*x86_64[^"]*\.whl", hash = "sha256:)[0-9a-f]{64}',
        lambda m: m.group(1) + "0" * 64, lock,
    )
    assert tampered != lock
    (job / "uv.lock").write_text(tampered)
    r = run_submit(cluster, job, "python", "driver.py", "--limit", "1000")
    assert r["rc"] == 1, r["out"][-3000:] + r["err"][-3000:]
    assert "primes below" not in r["out"]
    (error,) = r["err"].strip().splitlines()[-1:]
    numba = userjob.load_job(TEMPLATE).locked("numba")[0]["version"]
    assert re.fullmatch(
        rf"error: job raysubmit_\w+ failed before the driver started: uv could not build the "
        rf"job's environment from its uv\.lock on the cluster: Failed to download "
        rf"`numba=={re.escape(numba)}`: Hash mismatch for `numba=={re.escape(numba)}`", error
    ), r["err"]


def test_the_rendered_rayjob_runs_its_files_in_place(cluster, first_run, tmp_path):
    """The GKE RayJob's ConfigMap and runtime env, run on the local cluster: its files
    written where the pods mount them (here a temp folder), and submitted with the command
    line KubeRay's submitter runs (ray-operator/controllers/ray/common/job.go: the runtime
    env as JSON in a double-quoted shell word, the entrypoint pasted after `--`), with the
    mount path and the pods' job environments folder swapped for this cluster's. Same lock,
    so the environment built above is reused. It runs after the failures above: the
    cluster still runs the next job."""
    job = userjob.load_job(TEMPLATE)
    configmap, rayjob = userjob.render_kuberay(
        job, userjob.job_files(TEMPLATE), ClusterSpec(), example_kube_facts(),
        ["python", "driver.py", "--limit", "1000000", "--chunks", "3"],
    )
    pod = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "job-files"]
    mounted = tmp_path / "mount"
    for item in volume["configMap"]["items"]:
        dest = mounted / item["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(configmap["data"][item["key"]])
    mount = f"{layout.KUBE_JOBS_DIR}/{rayjob['metadata']['name']}"
    runtime_env = json.dumps(yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"]), sort_keys=True)
    assert f'"local://{mount}"' in runtime_env and layout.KUBE_JOB_ENVS in runtime_env
    runtime_env = runtime_env.replace(f"local://{mount}", f"local://{mounted}").replace(
        layout.KUBE_JOB_ENVS, str(cluster.job_envs_dir)
    )
    # Go's strconv.Quote of ASCII text is JSON's string quoting.
    submit = (
        f"ray job submit --address {cluster.dashboard_url} --runtime-env-json "
        f"{json.dumps(runtime_env)} -- {rayjob['spec']['entrypoint']}"
    )
    env = user_env(cluster)
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"
    r = subprocess.run(["bash", "-c", submit], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=SUBMIT_TIMEOUT, check=False)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "primes below 1000000: 78498 (matches NumPy)" in r.stdout
    assert "Installed" not in r.stdout + r.stderr  # the environment of the same lock, reused
