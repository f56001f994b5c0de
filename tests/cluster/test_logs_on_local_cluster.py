"""Logs that outlive the cluster, on the real local cluster with the GCS emulator.

The session cluster (tests/conftest.py) ships like a GCP cluster: every node,
the head and each fake worker, runs cluster/logship.py into the emulator's
bucket, every second, at most 256 KiB per file, with Ray's rotation at 1 MiB.

- A runaway task prints 16 x the cap: each file of the run holds at most the
  cap in the bucket, and the worker's and the driver's files on disk stay
  within the rotation bound.
- A Ray job prints known lines, its task prints lines and its traceback and
  raises; the worker node that ran it is SIGKILLed a few seconds later (no
  last pass: only what was shipped while it ran survives), then the cluster
  is torn down. `python -m cluster logs` then prints the driver's lines and
  the task's traceback, each under the node it came from.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from cluster.local_provider import node_log_name
from tests.conftest import LOG_BUCKET, TEST_SPEC
from tests.processes import down_and_check

pytestmark = pytest.mark.cluster

RAY = str(Path(sys.executable).parent / "ray")
# Lines written this long before a node vanishes are in the bucket: the
# interval plus a pass's uploads, with room for a loaded machine.
SHIP_MARGIN_S = 3 * TEST_SPEC.logs.interval_s + 2
SECTION = re.compile(r"^==> (\S+) \((head|worker)[^)]*\): (\S+)  \[.*\] <==$")


def _env(local_cluster, gcs_emulator):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(local_cluster.driver_env())
    env["STORAGE_EMULATOR_HOST"] = gcs_emulator
    return env


def _logs(gcs_emulator, *args) -> str:
    """`python -m cluster logs ...` as a user runs it, against the emulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "STORAGE_"))}
    env["STORAGE_EMULATOR_HOST"] = gcs_emulator
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "logs", "--bucket", LOG_BUCKET,
         "--cluster", TEST_SPEC.cluster_name, *args],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _sections(text: str) -> dict[tuple[str, str, str], str]:
    """(node, role, file) -> the section's text, from the reader's output."""
    out: dict[tuple[str, str, str], str] = {}
    key = None
    for line in text.splitlines():
        m = SECTION.match(line)
        if m:
            key = m.groups()
            out[key] = ""
        elif key is not None:
            out[key] += line + "\n"
    return out


def _objects(gcs_emulator, prefix):
    url = (f"{gcs_emulator}/storage/v1/b/{LOG_BUCKET}/o?"
           + urllib.parse.urlencode({"prefix": prefix}))
    return json.loads(urllib.request.urlopen(url, timeout=30).read()).get("items") or []


def _session_name(local_cluster) -> str:
    return Path(os.path.realpath(local_cluster.temp_dir / "session_latest")).name


RUNAWAY = textwrap.dedent(
    """
    import sys, ray
    ray.init()

    @ray.remote(num_cpus=1)
    def runaway(n):
        line = "x" * 90
        for i in range(n):
            print(f"{i:08d} {line}")
        print("RUNAWAY-LAST-LINE", flush=True)
        return ray.get_runtime_context().get_node_id()

    node = ray.get(runaway.remote(int(sys.argv[1])))
    with open(sys.argv[2], "w") as f:  # not stdout: Ray's log thread writes there too
        f.write(node)
    """
)


def test_a_runaway_task_leaves_at_most_the_cap_per_file_and_a_bounded_disk(
    local_cluster, gcs_emulator, tmp_path
):
    spec = TEST_SPEC.logs
    lines = 16 * spec.max_file_bytes // 100  # 100-byte lines: 16 x the cap, 4 x the rotation
    node_file = tmp_path / "node_id"
    proc = subprocess.run(
        [sys.executable, "-c", RUNAWAY, str(lines), str(node_file)],
        env=_env(local_cluster, gcs_emulator),
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    node_id = node_file.read_text()
    assert re.fullmatch(r"[0-9a-f]{56}", node_id), node_id
    time.sleep(SHIP_MARGIN_S)
    # A burst that lands between two passes first fills the file's kept first half at
    # max_chunk per pass (head_bytes / max_chunk passes) before the cap drops bytes, and
    # the newest lines follow a pass or more later: wait for both, not for a fixed time.
    node_name = node_log_name("cpu-worker", node_id)
    run = _session_name(local_cluster)
    deadline = time.monotonic() + 180
    while True:
        text = _logs(gcs_emulator, "node", node_name, "--run", run, "--file", "worker-*.out")
        shipped = ("bytes not kept: size cap" in text
                   and text.rstrip().endswith("RUNAWAY-LAST-LINE"))
        if shipped or time.monotonic() > deadline:
            break
        time.sleep(TEST_SPEC.logs.interval_s)
    # The node's disk: Ray's rotation keeps 1 + backups files of at most rotate_bytes.
    node_logs = local_cluster.node_logs_dir(node_id)
    worker_files = [p for p in node_logs.iterdir() if re.match(r"worker-.*\.out(\.\d+)?$", p.name)]
    assert any(p.name.endswith(".out.1") for p in worker_files), "Ray did not rotate"
    by_worker: dict[str, int] = {}
    for p in worker_files:
        base = p.name.split(".out")[0]
        by_worker[base] = by_worker.get(base, 0) + p.stat().st_size
    bound = spec.rotate_bytes * (1 + spec.rotate_backups) + 200
    assert max(by_worker.values()) <= bound, by_worker
    # The driver's copy of its output on the head (it received the task's lines too).
    driver_logs = list(local_cluster.head_logs_dir.glob("driver-*.log*"))
    assert driver_logs
    by_driver: dict[str, int] = {}
    for p in driver_logs:
        base = p.name.split(".log")[0]
        by_driver[base] = by_driver.get(base, 0) + p.stat().st_size
    assert max(by_driver.values()) <= 2 * spec.rotate_bytes + 64 * 1024, by_driver
    # The bucket: at most the cap for every file name of this run, on every node.
    per_file: dict[tuple[str, str], int] = {}
    for item in _objects(gcs_emulator, f"logs/{TEST_SPEC.cluster_name}/"):
        parts = item["name"].split("/")
        if run not in parts or parts[-1] == "_node.json":
            continue
        node = parts[parts.index(run) - 1]
        file = "/".join(parts[parts.index(run) + 1 : -2])
        per_file[(node, file)] = per_file.get((node, file), 0) + int(item["size"])
    assert per_file and max(per_file.values()) <= spec.max_file_bytes, sorted(
        per_file.items(), key=lambda kv: -kv[1])[:3]
    runaway = [f for (n, f) in per_file if n == node_name and f.endswith(".out")]
    assert runaway, sorted(per_file)
    # Read back: what the shipper first saw (Ray's rotation, 1 MiB with one backup, may
    # already have deleted the task's first lines), gaps the reader says were not
    # kept, and the newest lines.
    assert re.search(r"^\d{8} x{90}$", text, re.MULTILINE), text[:500]
    assert "bytes not kept: size cap" in text, (
        [line for line in text.splitlines() if line.startswith(("==>", "[..."))],
        _logs(gcs_emulator, "files", "--run", run, "--node", node_name))
    assert text.rstrip().endswith("RUNAWAY-LAST-LINE"), text[-500:]


JOB = textwrap.dedent(
    """
    import sys, traceback, ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    token = sys.argv[1]
    ray.init()
    for i in range(3):
        print(f"DRIVER-{token} line {i}", flush=True)

    @ray.remote(num_cpus=1)
    def where():
        return ray.get_runtime_context().get_node_id()

    @ray.remote(num_cpus=1)
    class Keep:  # keeps the node busy, so the autoscaler does not remove it first
        def ping(self):
            return 1

    @ray.remote(num_cpus=1, max_retries=0)
    def boom():
        for i in range(3):
            print(f"TASK-{token} line {i}", flush=True)
        try:
            raise ValueError(f"TASK-BOOM-{token}")
        except ValueError:
            traceback.print_exc()  # the task's traceback, on its node's stderr
            sys.stderr.flush()
            raise

    node = ray.get(where.remote())
    on_node = NodeAffinitySchedulingStrategy(node, soft=False)
    keep = Keep.options(name=f"keep-{token}", lifetime="detached",
                        scheduling_strategy=on_node).remote()
    ray.get(keep.ping.remote())
    try:
        ray.get(boom.options(scheduling_strategy=on_node).remote())
    except ray.exceptions.RayTaskError as e:
        print(f"DRIVER-{token} caught {type(e.cause).__name__}", flush=True)
    print(f"TASK-NODE {node}", flush=True)
    """
)


def test_a_jobs_output_and_a_killed_nodes_traceback_outlive_the_cluster(
    local_cluster, gcs_emulator, tmp_path
):
    token = uuid.uuid4().hex[:8]
    env = _env(local_cluster, gcs_emulator)
    # `ray submit`'s way: a plain driver on the head; its output is copied to driver-*.log.
    plain = subprocess.run(
        [sys.executable, "-c",
         f"import os, ray; ray.init(); print('PLAIN-{token}', os.getpid(), flush=True)"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert plain.returncode == 0 and f"PLAIN-{token}" in plain.stdout, plain.stderr[-2000:]
    plain_pid = re.search(rf"PLAIN-{token} (\d+)", plain.stdout).group(1)
    # `ray job submit`'s way: Ray writes job-driver-<id>.log on the head.
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.py").write_text(JOB)
    submission = f"logs-e2e-{token}"
    job = subprocess.run(
        [RAY, "job", "submit", "--submission-id", submission, "--working-dir",
         str(tmp_path / "job"), "--", "python", "job.py", token],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    node_id = re.search(r"TASK-NODE ([0-9a-f]{56})", job.stdout).group(1)
    run = _session_name(local_cluster)
    # The node vanishes a few seconds after its task wrote its last lines: SIGKILL,
    # its shipper with it, no last pass.
    time.sleep(SHIP_MARGIN_S)
    assert local_cluster.kill_worker_node(node_id) == node_id
    down_and_check(local_cluster)  # and then the whole cluster

    killed = node_log_name("cpu-worker", node_id)
    runs = _logs(gcs_emulator, "runs")
    assert run in runs and f"{killed} (worker, cpu-worker)" in runs and "local-head (head" in runs

    sections = _sections(_logs(gcs_emulator, "job", submission, "--run", run))
    driver = sections[("local-head", "head", f"job-driver-{submission}.log")]
    assert [f"DRIVER-{token} line {i}" in driver for i in range(3)] == [True] * 3
    assert f"DRIVER-{token} caught ValueError" in driver
    task_err = [text for (node, role, file), text in sections.items()
                if node == killed and role == "worker" and file.endswith(".err")
                and f"TASK-BOOM-{token}" in text]
    assert len(task_err) == 1, sorted(sections)  # (the Keep actor's worker has its own)
    assert "Traceback (most recent call last)" in task_err[0]
    assert f"ValueError: TASK-BOOM-{token}" in task_err[0]
    task_out = [text for (node, _, file), text in sections.items()
                if node == killed and file.endswith(".out") and f"TASK-{token}" in text]
    assert len(task_out) == 1, sorted(sections)
    assert [f"TASK-{token} line {i}" in task_out[0] for i in range(3)] == [True] * 3
    # Nothing of the task is attributed to another node.
    for (node, _, _), text in sections.items():
        if node != killed:
            assert not (node != "local-head" and f"TASK-{token}" in text), node

    # The plain driver's copy, found by its Ray job id (the hook's record).
    runs_detail = _logs(gcs_emulator, "files", "--run", run, "--node", "head")
    (driver_log,) = re.findall(rf"(driver-\S+-{plain_pid}\.log)", runs_detail)
    plain_text = _logs(gcs_emulator, "job", driver_log, "--run", run)
    assert f"PLAIN-{token}" in plain_text and "==> local-head (head" in plain_text
