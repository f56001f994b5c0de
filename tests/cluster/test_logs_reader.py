"""cluster/logs.py (`python -m cluster logs`): runs, a job, a node, filters, errors.

The bucket is filled by the real shipper (cluster/logship.py) from fake Ray log
directories of two nodes and two runs, with a fake clock so that time filters
have known answers; the reader then runs as its command line does.
"""

from __future__ import annotations

import argparse
import io
import json

import pytest

from cluster import gcs_http, logs, logship
from cluster.logpaths import session_start
from tests.emulator import EMULATOR_BUCKET

CLUSTER = "reader-test"
RUN1 = "session_2026-12-07_02-51-59_441416_29779"
RUN2 = "session_2026-12-08_10-00-00_000001_30000"


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _node(tmp_path, name, run, role, node_type):
    root = tmp_path / name
    logs_dir = root / run / "logs"
    logs_dir.mkdir(parents=True)
    (root / "session_latest").symlink_to(root / run)
    clock = Clock(session_start(run) + 10)
    cfg = logship.ShipConfig(bucket=EMULATOR_BUCKET, cluster=CLUSTER, node=name, role=role,
                             node_type=node_type, logs_dir=str(root / "session_latest/logs"),
                             max_file_bytes=64 * 1024)
    return logs_dir, clock, cfg


@pytest.fixture(scope="module")
def bucket(gcs_emulator, tmp_path_factory):
    """Two runs. RUN1: a head with a Ray job's driver log and a plain driver's copy,
    a worker with the job's task output (written at +10 s and +100 s). RUN2: a head."""
    tmp = tmp_path_factory.mktemp("reader")
    gcs = gcs_http.GcsHttp(EMULATOR_BUCKET, endpoint=gcs_emulator)
    head, head_clock, head_cfg = _node(tmp, "ray-reader-head-1", RUN1, "head", "head")
    worker, w_clock, w_cfg = _node(tmp, "ray-reader-worker-2a", RUN1, "worker", "cpu-worker")
    (head / "job-driver-raysubmit_ABC.log").write_text("driver says hello\n")
    (head / "ray-gcp-driver-02000000.json").write_text(json.dumps({
        "job_id": "02000000", "submission_id": "raysubmit_ABC",
        "driver_log": "job-driver-raysubmit_ABC.log", "pid": 11}))
    (head / "driver-20261207T030000Z-77.log").write_text("plain driver line\n")
    (head / "ray-gcp-driver-03000000.json").write_text(json.dumps({
        "job_id": "03000000", "submission_id": None,
        "driver_log": "driver-20261207T030000Z-77.log", "pid": 77}))
    (head / "raylet.out").write_text("head raylet\n")
    task = worker / "worker-aa11-02000000-5.err"
    task.write_text("early task line\n")
    (worker / "worker-bb22-03000000-6.out").write_text("other job's task\n")
    (worker / "raylet.out").write_text("worker raylet\n")
    logship.Shipper(head_cfg, gcs, clock=head_clock).pass_once()
    w_ship = logship.Shipper(w_cfg, gcs, clock=w_clock)
    w_ship.pass_once()
    w_clock.t += 90
    with open(task, "a") as f:
        f.write("late task line\nTraceback (most recent call last):\nValueError: boom\n")
    w_ship.pass_once()
    # A runaway file: the reader shows the gap the cap made.
    big = worker / "worker-cc33-02000000-7.out"
    for i in range(20):
        with open(big, "a") as f:
            f.write(f"{i:03d}" * 4000 + "\n")
        w_clock.t += 1
        w_ship.pass_once()
    head2, clock2, cfg2 = _node(tmp, "ray-reader-head-9", RUN2, "head", "head")
    (head2 / "raylet.out").write_text("second run\n")
    logship.Shipper(cfg2, gcs, clock=clock2).pass_once()
    return gcs_emulator


def _run(bucket_url, monkeypatch, what, name=None, **kw):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", bucket_url)
    for var in ("RAY_GCP_BUCKET", "RAY_GCP_CLUSTER", "RAY_GCP_CLUSTER_YAML"):
        monkeypatch.delenv(var, raising=False)
    args = argparse.Namespace(
        what=what, name=name, bucket=kw.get("bucket", EMULATOR_BUCKET),
        cluster=kw.get("cluster", CLUSTER), run=kw.get("run"), node=kw.get("node"),
        file=kw.get("file"), since=kw.get("since"), until=kw.get("until"),
        prefix=kw.get("prefix", False))
    out = io.StringIO()
    rc = logs.main(args, out=out)
    return rc, out.getvalue()


def test_runs_lists_each_run_newest_first_with_its_nodes_and_drivers(bucket, monkeypatch):
    rc, out = _run(bucket, monkeypatch, "runs")
    assert rc == 0
    assert out.index(RUN2) < out.index(RUN1)
    assert "ray-reader-head-1 (head, head)" in out
    assert "ray-reader-worker-2a (worker, cpu-worker)" in out
    assert "driver log: job-driver-raysubmit_ABC.log" in out
    assert "driver log: driver-20261207T030000Z-77.log" in out


@pytest.mark.parametrize("job", ["raysubmit_ABC", "02000000", "job-driver-raysubmit_ABC.log"])
def test_a_job_is_its_driver_output_then_its_tasks_files_each_under_its_node(
    bucket, monkeypatch, job
):
    rc, out = _run(bucket, monkeypatch, "job", job)
    assert rc == 0, out
    sections = out.split("==> ")[1:]
    assert sections[0].startswith("ray-reader-head-1 (head, head): job-driver-raysubmit_ABC.log")
    assert "driver says hello" in sections[0]
    task = next(s for s in sections if "worker-aa11-02000000-5.err" in s.splitlines()[0])
    assert task.startswith("ray-reader-worker-2a (worker, cpu-worker)")
    assert "early task line" in task and "ValueError: boom" in task
    assert "other job's task" not in out  # job 03000000's worker file is not this job's


def test_a_plain_driver_is_found_by_its_log_or_its_job_id(bucket, monkeypatch):
    for name in ("driver-20261207T030000Z-77.log", "03000000"):
        rc, out = _run(bucket, monkeypatch, "job", name)
        assert rc == 0 and "plain driver line" in out and "other job's task" in out


def test_time_filters_keep_what_was_written_in_the_window(bucket, monkeypatch):
    start = session_start(RUN1)
    after = logs.fmt_time(start + 60).replace(" ", "T")
    rc, out = _run(bucket, monkeypatch, "job", "raysubmit_ABC", since=after)
    assert rc == 0
    assert "late task line" in out and "early task line" not in out
    assert "outside the time window" in out  # the bytes before it are not shown
    # The late lines were written between the pass at +10 s and the one at +100 s:
    # a window ending at +30 s may hold them, one ending at +5 s cannot.
    rc, out = _run(bucket, monkeypatch, "job", "raysubmit_ABC",
                   until=logs.fmt_time(start + 30).replace(" ", "T"))
    assert "early task line" in out and "late task line" in out
    rc, out = _run(bucket, monkeypatch, "job", "raysubmit_ABC",
                   until=logs.fmt_time(start + 5).replace(" ", "T"))
    assert "early task line" in out and "late task line" not in out


def test_node_filter_and_line_prefixes(bucket, monkeypatch):
    rc, out = _run(bucket, monkeypatch, "node", "worker-2a", run=RUN1, file="raylet.*",
                   prefix=True)
    assert rc == 0
    assert "[ray-reader-worker-2a raylet.out] worker raylet" in out
    assert "head raylet" not in out
    rc, out = _run(bucket, monkeypatch, "job", "raysubmit_ABC", node="head")
    assert "driver says hello" in out and "early task line" not in out


def test_the_size_cap_shows_as_a_gap(bucket, monkeypatch):
    rc, out = _run(bucket, monkeypatch, "node", "ray-reader-worker-2a", run=RUN1,
                   file="worker-cc33-*")
    assert rc == 0
    assert "bytes not kept: size cap" in out
    assert out.rstrip().endswith("019" * 1000)  # the newest bytes are there
    rc, files = _run(bucket, monkeypatch, "files", run=RUN1, node="worker")
    assert "worker-cc33-02000000-7.out" in files and " kept of " in files


@pytest.mark.parametrize(
    ("kw", "what", "name", "message"),
    [
        ({"bucket": None}, "runs", None, "no bucket: give --bucket"),
        ({"cluster": None}, "runs", None, f"give --cluster: gs://{EMULATOR_BUCKET}/logs/ has"),
        ({"cluster": "nobody"}, "runs", None, "no runs of cluster 'nobody'"),
        ({}, "job", "raysubmit_NOPE", "no job 'raysubmit_NOPE' in any run"),
        ({"run": "session_2026"}, "runs", None, "matches 2 runs"),
        ({}, "node", "no-such-node", "no node 'no-such-node'"),
        ({"since": "yesterday"}, "runs", None, "time 'yesterday': allowed: 30m"),
        ({}, "job", None, "`logs job` needs a name"),
    ],
)
def test_errors_say_what_to_do(bucket, monkeypatch, capsys, kw, what, name, message):
    rc, _ = _run(bucket, monkeypatch, what, name, **kw)
    assert rc == 1
    assert message in capsys.readouterr().err


def test_the_provider_vms_cluster_config_names_the_bucket(bucket, monkeypatch, tmp_path):
    """On the provider VM: no flags; /etc/ray-gcp/cluster.yaml ($RAY_GCP_CLUSTER_YAML)."""
    from cluster.render import example_gcp_facts, render_gcp, to_yaml
    from cluster.spec import ClusterSpec

    cfg = render_gcp(ClusterSpec(cluster_name=CLUSTER),
                     example_gcp_facts().model_copy(update={"bucket": EMULATOR_BUCKET}))
    path = tmp_path / "cluster.yaml"
    path.write_text(to_yaml(cfg))
    assert logs.where_from_config(str(path)) == (EMULATOR_BUCKET, CLUSTER)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", bucket)
    monkeypatch.setenv("RAY_GCP_CLUSTER_YAML", str(path))
    args = argparse.Namespace(what="runs", name=None, bucket=None, cluster=None, run=None,
                              node=None, file=None, since=None, until=None, prefix=False)
    out = io.StringIO()
    assert logs.main(args, out=out) == 0 and RUN1 in out.getvalue()


def test_relative_and_absolute_times():
    assert logs.parse_time("30m", now=10_000) == 10_000 - 1800
    assert logs.parse_time("2h", now=10_000) == 10_000 - 7200
    assert logs.parse_time("2026-12-07T02:50") == logs.parse_time("2026-12-07 02:50:00")
    assert logs.parse_time(None) is None
