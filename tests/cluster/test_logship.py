"""cluster/logship.py: a node's Ray log files to gs://BUCKET/logs/..., against the GCS emulator.

No Ray here: a fake Ray temp dir (``session_latest`` -> a session dir) whose
files the tests write, and the shipper's passes called directly (or its
command line as a process, for signals and ``start``). What reaches the
bucket is read back by listing and downloading objects with the emulator's
own API (urllib), not through the shipper's bookkeeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from cluster import gcs_http, logship, logship_cli
from cluster.logpaths import parse_chunk, run_prefix, session_start
from tests.emulator import EMULATOR_BUCKET

SESSION = "session_2026-12-07_02-51-59_441416_29779"
NEXT_SESSION = "session_2026-12-07_05-00-00_000001_30000"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_tmp(tmp_path):
    """A Ray temp dir: session_latest -> SESSION, with logs/ and logs/old/."""
    root = tmp_path / "ray"
    (root / SESSION / "logs" / "old").mkdir(parents=True)
    (root / "session_latest").symlink_to(root / SESSION)
    return root


@pytest.fixture
def cluster_name(request):
    """A cluster name per test, so tests sharing the session's emulator do not meet."""
    return "t-" + request.node.name.replace("_", "-")[:40].strip("-")


def _cfg(ray_tmp, cluster, **kw):
    return logship.ShipConfig(
        bucket=EMULATOR_BUCKET, cluster=cluster, node="node-a",
        logs_dir=str(ray_tmp / "session_latest" / "logs"), **kw)


def _shipper(cfg, emulator):
    return logship.Shipper(cfg, gcs_http.GcsHttp(cfg.bucket, endpoint=emulator))


def _objects(emulator, prefix):
    """name -> size of the bucket's objects under prefix (the emulator's listing)."""
    url = (f"{emulator}/storage/v1/b/{EMULATOR_BUCKET}/o?"
           + urllib.parse.urlencode({"prefix": prefix}))
    items = json.loads(urllib.request.urlopen(url, timeout=10).read()).get("items") or []
    return {i["name"]: int(i["size"]) for i in items}


def _download(emulator, name):
    url = (f"{emulator}/storage/v1/b/{EMULATOR_BUCKET}/o/"
           f"{urllib.parse.quote(name, safe='')}?alt=media")
    return urllib.request.urlopen(url, timeout=10).read()


def _file_objects(emulator, cluster, file, session=SESSION, node="node-a"):
    """(chunk, name, size) of one file's objects, in byte order."""
    prefix = run_prefix(cluster, session, node)
    out = []
    for name, size in _objects(emulator, prefix + file + "/").items():
        chunk = parse_chunk(name[len(prefix):])
        assert chunk is not None and chunk.file == file, name
        assert chunk.size == size, (name, size)  # the name says what it holds
        out.append((chunk, name, size))
    return sorted(out, key=lambda x: (x[0].gen, x[0].start, -x[0].end))


def _shipped_bytes(emulator, cluster, file, **kw) -> bytes:
    """The file as the bucket holds it (composed objects' sources skipped), gaps as b'|GAP|'."""
    data, pos = b"", (0, 0)
    for chunk, name, _ in _file_objects(emulator, cluster, file, **kw):
        same_gen = chunk.gen == pos[0]
        if same_gen and chunk.end <= pos[1]:
            continue  # a composed object's source, not deleted yet
        if (same_gen and chunk.start > pos[1]) or (not same_gen and chunk.start > 0):
            data += b"|GAP|"
        data += _download(emulator, name)
        pos = (chunk.gen, chunk.end)
    return data


def test_ships_what_each_file_gains_and_the_bucket_holds_it_byte_for_byte(
    ray_tmp, gcs_emulator, cluster_name
):
    logs = ray_tmp / "session_latest" / "logs"
    sh = _shipper(_cfg(ray_tmp, cluster_name), gcs_emulator)
    worker = logs / "worker-ab-02000000-17.err"
    raylet = logs / "raylet.out"
    written = b""
    for i in range(5):
        line = f"line {i} \xe9\n".encode()
        with open(worker, "ab") as f:
            f.write(line)
        written += line
        raylet.write_bytes(b"r" * (i + 1))
        sh.pass_once()
    (logs / "events").mkdir()
    (logs / "events" / "event_AUTOSCALER.log").write_text("Adding 1 node(s)\n")
    sh.pass_once()
    assert _shipped_bytes(gcs_emulator, cluster_name, "worker-ab-02000000-17.err") == written
    assert _shipped_bytes(gcs_emulator, cluster_name, "raylet.out") == b"rrrrr"
    assert _shipped_bytes(gcs_emulator, cluster_name, "events/event_AUTOSCALER.log") == (
        b"Adding 1 node(s)\n")
    # Five passes, five appends: one object each, named by byte range and time.
    objs = _file_objects(gcs_emulator, cluster_name, "worker-ab-02000000-17.err")
    assert [c.start for c, _, _ in objs] == [0, 10, 20, 30, 40]
    assert all(c.t0 <= c.t1 and c.t1 >= session_start(SESSION) for c, _, _ in objs)
    # The node's manifest says who it is.
    manifest = json.loads(_download(gcs_emulator, run_prefix(cluster_name, SESSION, "node-a")
                                    + "_node.json"))
    assert (manifest["node"], manifest["role"], manifest["session"]) == (
        "node-a", "worker", SESSION)
    # Ray's state dumps are rewritten in place, not logs: not shipped.
    (logs / "debug_state.txt").write_text("state")
    sh.pass_once()
    assert not _file_objects(gcs_emulator, cluster_name, "debug_state.txt")


def test_a_moved_or_rotated_file_continues_under_its_first_name(
    ray_tmp, gcs_emulator, cluster_name
):
    """Ray's log monitor moves finished workers' files to old/; Ray's rotation
    renames x.out to x.out.1 and opens a new x.out (followed by inode)."""
    logs = ray_tmp / "session_latest" / "logs"
    sh = _shipper(_cfg(ray_tmp, cluster_name), gcs_emulator)
    f = logs / "worker-cd-03000000-5.out"
    f.write_text("before the move\n")
    sh.pass_once()
    f.rename(logs / "old" / f.name)
    with open(logs / "old" / f.name, "a") as g:
        g.write("after the move\n")
    sh.pass_once()
    assert _shipped_bytes(gcs_emulator, cluster_name, f.name) == (
        b"before the move\nafter the move\n")
    assert not _objects(gcs_emulator, run_prefix(cluster_name, SESSION, "node-a") + "old/")
    r = logs / "raylet.out"
    r.write_text("first generation\n")
    sh.pass_once()
    r.rename(logs / "raylet.out.1")
    with open(logs / "raylet.out.1", "a") as g:
        g.write("its last line\n")
    r.write_text("second generation\n")
    sh.pass_once()
    objs = _file_objects(gcs_emulator, cluster_name, "raylet.out")
    assert {c.gen for c, _, _ in objs} == {1, 2}
    assert _shipped_bytes(gcs_emulator, cluster_name, "raylet.out") == (
        b"first generation\nits last line\nsecond generation\n")


def test_a_file_rotated_before_the_first_pass_keeps_its_name_and_order(
    ray_tmp, gcs_emulator, cluster_name
):
    """A fast writer: Ray rotated worker-x.out to worker-x.out.1 before the shipper
    looked; both copies are one name, the older one first."""
    logs = ray_tmp / "session_latest" / "logs"
    sh = _shipper(_cfg(ray_tmp, cluster_name), gcs_emulator)
    (logs / "worker-x.out").write_text("the first lines\n")
    (logs / "worker-x.out").rename(logs / "worker-x.out.1")
    (logs / "worker-x.out").write_text("the newer lines\n")
    sh.pass_once()
    # Ray rotates again (one backup): .1 goes, .out becomes .1, a new .out starts.
    (logs / "worker-x.out.1").unlink()
    (logs / "worker-x.out").rename(logs / "worker-x.out.1")
    (logs / "worker-x.out").write_text("the newest lines\n")
    sh.pass_once()
    assert _shipped_bytes(gcs_emulator, cluster_name, "worker-x.out") == (
        b"the first lines\nthe newer lines\nthe newest lines\n")
    assert not _file_objects(gcs_emulator, cluster_name, "worker-x.out.1")


def test_at_most_the_cap_per_file_first_half_kept_and_newest_bytes(
    ray_tmp, gcs_emulator, cluster_name
):
    cfg = _cfg(ray_tmp, cluster_name, max_file_bytes=64 * 1024)
    sh = _shipper(cfg, gcs_emulator)
    f = ray_tmp / "session_latest" / "logs" / "worker-ef-04000000-9.out"
    written = 0
    for i in range(60):  # ~20 x the cap, in bursts larger than a pass ships
        with open(f, "ab") as g:
            block = f"{i:04d}".encode() * (6 * 1024)
            g.write(block)
            written += len(block)
        sh.pass_once()
        live = sum(_objects(gcs_emulator, run_prefix(cluster_name, SESSION, "node-a")
                            + f.name + "/").values())
        assert live <= cfg.max_file_bytes, (i, live)  # after every pass, not only at the end
    data = f.read_bytes()
    kept = _shipped_bytes(gcs_emulator, cluster_name, f.name)
    head, _, tail = kept.partition(b"|GAP|")
    assert head == data[: cfg.head_bytes]  # the first half, complete
    assert tail and data.endswith(tail.split(b"|GAP|")[-1])  # the newest bytes
    assert written > 10 * cfg.max_file_bytes
    assert sh.stats["skipped_bytes"] > 0  # the middle was never read


def test_runs_of_32_objects_are_composed_and_read_back_unchanged(
    ray_tmp, gcs_emulator, cluster_name
):
    sh = _shipper(_cfg(ray_tmp, cluster_name), gcs_emulator)
    f = ray_tmp / "session_latest" / "logs" / "job-driver-raysubmit_abc.log"
    text = b""
    for i in range(70):
        line = f"progress {i}\n".encode()
        with open(f, "ab") as g:
            g.write(line)
        text += line
        sh.pass_once()
    objs = _file_objects(gcs_emulator, cluster_name, f.name)
    assert len(objs) < 70 - 32  # composed, and the 32 sources deleted
    assert max(c.level for c, _, _ in objs) >= 1
    assert _shipped_bytes(gcs_emulator, cluster_name, f.name) == text
    assert sh.stats["composes"] >= 2


def test_a_restarted_shipper_continues_from_the_bucket_without_duplicates(
    ray_tmp, gcs_emulator, cluster_name
):
    cfg = _cfg(ray_tmp, cluster_name)
    f = ray_tmp / "session_latest" / "logs" / "worker-aa-05000000-3.out"
    f.write_text("one\n")
    _shipper(cfg, gcs_emulator).pass_once()
    with open(f, "a") as g:
        g.write("two\n")
    again = _shipper(cfg, gcs_emulator)  # a new process: it knows only the bucket
    again.pass_once()
    assert _shipped_bytes(gcs_emulator, cluster_name, f.name) == b"one\ntwo\n"
    assert again.stats["uploads"] == 1


def test_a_new_session_gets_the_old_sessions_last_lines_first(
    ray_tmp, gcs_emulator, cluster_name
):
    """`ray stop` + `ray start` on a node: session_latest moves; what the old
    session wrote after the last pass is still shipped, under its own run."""
    logs = ray_tmp / "session_latest" / "logs"
    sh = _shipper(_cfg(ray_tmp, cluster_name), gcs_emulator)
    (logs / "raylet.out").write_text("old session\n")
    sh.pass_once()
    with open(logs / "raylet.out", "a") as g:
        g.write("old session, last line\n")
    (ray_tmp / NEXT_SESSION / "logs").mkdir(parents=True)
    (ray_tmp / NEXT_SESSION / "logs" / "raylet.out").write_text("new session\n")
    (ray_tmp / "session_latest").unlink()
    (ray_tmp / "session_latest").symlink_to(ray_tmp / NEXT_SESSION)
    sh.pass_once()
    assert _shipped_bytes(gcs_emulator, cluster_name, "raylet.out") == (
        b"old session\nold session, last line\n")
    assert _shipped_bytes(gcs_emulator, cluster_name, "raylet.out", session=NEXT_SESSION) == (
        b"new session\n")


def test_an_unreachable_bucket_costs_a_pass_not_the_shipper(ray_tmp, gcs_emulator, cluster_name):
    from tests.emulator import free_port

    cfg = _cfg(ray_tmp, cluster_name)
    f = ray_tmp / "session_latest" / "logs" / "raylet.out"
    f.write_text("written while the bucket was away\n")
    down = logship.Shipper(cfg, gcs_http.GcsHttp(
        cfg.bucket, endpoint=f"http://127.0.0.1:{free_port()}", attempts=1, timeout=2))
    down.pass_once()  # no exception
    assert down.stats["errors"] >= 1 and down.stats["uploads"] == 0
    down.gcs = gcs_http.GcsHttp(cfg.bucket, endpoint=gcs_emulator)  # the network is back
    down.pass_once()
    assert _shipped_bytes(gcs_emulator, cluster_name, "raylet.out") == (
        b"written while the bucket was away\n")


def _run_argv(cfg):
    return [sys.executable, "-m", "cluster.logship", "run", *logship.run_argv(cfg)]


def _env(emulator):
    return {**os.environ, "STORAGE_EMULATOR_HOST": emulator, "PYTHONPATH": str(REPO)}


def test_sigterm_makes_a_last_pass(ray_tmp, gcs_emulator, cluster_name, tmp_path):
    """A VM's shutdown or a pod's deletion: the last lines are shipped before it exits,
    even with a long interval."""
    cfg = _cfg(ray_tmp, cluster_name, interval_s=300)
    f = ray_tmp / "session_latest" / "logs" / "raylet.out"
    f.write_text("first\n")
    proc = subprocess.Popen(_run_argv(cfg), env=_env(gcs_emulator),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _file_objects(gcs_emulator, cluster_name, "raylet.out"):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        with open(f, "a") as g:
            g.write("the last line before the shutdown\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 0  # one pass; generous for a loaded machine
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _shipped_bytes(gcs_emulator, cluster_name, "raylet.out") == (
        b"first\nthe last line before the shutdown\n")
    assert '"uploads": 2' in proc.stdout.read()


def test_start_detaches_and_replaces_the_shipper_of_its_pidfile(
    ray_tmp, gcs_emulator, cluster_name, tmp_path
):
    """What the VM's start commands run after every `ray stop` (a second `ray up`)."""
    cfg = _cfg(ray_tmp, cluster_name, interval_s=0.5)
    pidfile, log = tmp_path / "logship.pid", tmp_path / "logship.log"
    start = [sys.executable, "-m", "cluster.logship", "start", *logship.run_argv(cfg),
             "--pidfile", str(pidfile), "--log-file", str(log)]
    pids = []
    try:
        for _ in range(2):
            out = subprocess.run(start, env=_env(gcs_emulator), capture_output=True, text=True,
                                 timeout=120, check=True).stdout
            assert "logship: shipping" in out
            pids.append(int(pidfile.read_text()))
        first, second = pids
        assert first != second
        assert not Path(f"/proc/{first}").exists() or "Z" in Path(
            f"/proc/{first}/stat").read_text().split(")")[1][:3]
        assert Path(f"/proc/{second}/cmdline").read_bytes().split(b"\0")[2:4] == [
            b"cluster.logship", b"run"]
        (ray_tmp / "session_latest" / "logs" / "raylet.out").write_text("seen by the second\n")
        deadline = time.monotonic() + 60
        while not _file_objects(gcs_emulator, cluster_name, "raylet.out"):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # The first one stopped on SIGTERM, after its last pass.
    assert log.read_text().count("logship: stopped:") == 1


def test_ray_stop_does_not_stop_the_shipper():
    """`ray stop` (before every `ray start` on a VM) kills processes by name or
    command line; none of its patterns matches the shipper's command line, so the
    shipper outlives it and ships the old session's last lines."""
    from ray.autoscaler._private.constants import RAY_PROCESSES

    cmdline = subprocess.list2cmdline([
        "/home/ray/ray-venv/bin/python", "-m", "cluster.logship", "run",
        *logship.run_argv(logship.ShipConfig(bucket="p-ray-gcp-io", cluster="ray-gcp",
                                             node="ray-ray-gcp-head-1a2b3c4d-compute",
                                             role="head", node_type="head")),
    ])
    comm = "python"  # what `ray stop` compares the by-name patterns with (15 chars)
    for keyword, by_name in RAY_PROCESSES:
        assert keyword not in (comm if by_name else cmdline), keyword


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bucket", "Bad_Bucket"], "--bucket = 'Bad_Bucket'"),
        (["--node", "a/b"], "--node = 'a/b'"),
        (["--interval", "0"], "--interval = 0.0"),
        (["--max-file-bytes", "100"], "--max-file-bytes = 100"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(args, message, capsys):
    base = {"--bucket": "ok-bucket", "--cluster": "c", "--node": "n"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["run", *[x for kv in base.items() for x in kv], *args[2:]]
    assert logship_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "nothing started" in err
