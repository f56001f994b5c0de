"""The four drivers on the shared local autoscaling cluster (fixture ``local_cluster``).

Every driver runs as a subprocess, exactly as a user runs it
(``python workloads/<script>.py`` with the cluster's RAY_ADDRESS and token in
the environment, or ``ray job submit --working-dir workloads``); the head has
CPU 0, so all work lands on fake worker nodes the autoscaler starts.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from workloads import annotate, common, labelme_resize, labelme_sample

from .conftest import REPO, WORKLOADS, readme_local_block

pytestmark = pytest.mark.cluster


def run_driver(script, *args, env, timeout=240, cwd=None):
    return subprocess.run(
        [sys.executable, os.path.join(WORKLOADS, script), *map(str, args)],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO, check=False,
    )


def result_rows(storage) -> list[dict]:
    """The complete rows of results.jsonl. Read as annotate.ResultsFile does: the
    file is polled while the driver appends and right after a SIGKILL, so a last
    line without its newline is torn and not a row (yet); every complete line is."""
    try:
        text = storage.read_text(annotate.RESULTS_KEY)
    except FileNotFoundError:
        return []
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def test_result_rows_skips_only_a_torn_last_line(tmp_path):
    storage = common.LocalStorage(tmp_path)
    storage.write_text(annotate.RESULTS_KEY, '{"key": "a"}\n{"key": "b"}\n{"key": "to')
    assert [r["key"] for r in result_rows(storage)] == ["a", "b"]
    storage.write_text(annotate.RESULTS_KEY, '{"key": "a"}\n{"key": "b"}\n')
    assert [r["key"] for r in result_rows(storage)] == ["a", "b"]
    storage.write_text(annotate.RESULTS_KEY, '{"key": "a"}\n{"key": "b\n')
    with pytest.raises(json.JSONDecodeError):  # a complete but broken row is a bug
        result_rows(storage)


def task_attempts(cluster, name: str) -> list[dict]:
    """Every attempt of the tasks called ``name`` on the cluster (Ray's state API)."""
    query = urllib.parse.urlencode({"detail": 1, "limit": 10000, "filter_keys": "name",
                                    "filter_predicates": "=", "filter_values": name})
    req = urllib.request.Request(f"{cluster.dashboard_url}/api/v0/tasks?{query}",
                                 headers={"Authorization": f"Bearer {cluster.token()}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["data"]["result"]["result"]


def set_demand(env, cpus: int) -> None:
    """request_resources for the whole cluster (0 gives the demand back)."""
    code = f"import ray; ray.init(); ray.autoscaler.sdk.request_resources(num_cpus={cpus})"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]


def expected_points(shape, sx, sy):
    """Independent re-statement of the scaling rule for the checks below."""
    pts = shape["points"]
    if shape["shape_type"] == "circle":
        (cx, cy), (px, py) = pts
        s = (sx + sy) / 2
        return [[cx * sx, cy * sy], [cx * sx + (px - cx) * s, cy * sy + (py - cy) * s]]
    return [[x * sx, y * sy] for x, y in pts]


def check_outputs(src, dst, keys):
    """Every key's output image and JSON are complete and exactly rescaled."""
    for key in keys:
        orig = labelme_resize.decode_image(src.read_bytes(key), key)
        out = labelme_resize.decode_image(dst.read_bytes(key), key)
        h, w = orig.shape[:2]
        nh, nw = out.shape[:2]
        s = min(1.0, MAX_SIDE / max(w, h))  # longest side -> MAX_SIDE, never upscaled
        assert (nw, nh) == (round(w * s), round(h * s)), key
        jkey = labelme_resize.annotation_key(key)
        if not src.exists(jkey):
            assert not dst.exists(jkey), key
            continue
        before, after = json.loads(src.read_text(jkey)), json.loads(dst.read_text(jkey))
        assert (after["imageWidth"], after["imageHeight"]) == (nw, nh), key
        sx, sy = nw / w, nh / h
        assert len(after["shapes"]) == len(before["shapes"]) == 9
        for b, a in zip(before["shapes"], after["shapes"], strict=True):
            assert a["shape_type"] == b["shape_type"] and a["label"] == b["label"]
            assert np.allclose(a["points"], expected_points(b, sx, sy), atol=1e-3), (key, b)
            if b["shape_type"] == "mask":
                bm = cv2.imdecode(np.frombuffer(base64.b64decode(b["mask"]), np.uint8), -1)
                am = cv2.imdecode(np.frombuffer(base64.b64decode(a["mask"]), np.uint8), -1)
                assert am.shape == (max(1, round(bm.shape[0] * sy)), max(1, round(bm.shape[1] * sx)))
        if before["imageData"]:
            assert base64.b64decode(after["imageData"]) == dst.read_bytes(key)
        else:
            assert after["imageData"] is None


MAX_SIDE = 96


def test_annotate_exact_outputs_failures_and_resume(tmp_path, driver_env):
    src, dst = common.LocalStorage(tmp_path / "in"), common.LocalStorage(tmp_path / "out")
    m = labelme_sample.make_sample(src, 16, seed=3, corrupt=1, broken_json=1)
    good = sorted(set(m.images) - set(m.corrupt_images) - set(m.broken_json))
    args = ["--input", src.url, "--output", dst.url, "--max-side", MAX_SIDE, "--batch-size", 3]

    r = run_driver("annotate.py", *args, env=driver_env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "processed 14, skipped 0, failed 2 in" in r.stdout
    # a line of its own (the autoscaler's events are printed around it)
    assert any(line.startswith("This cluster consists of ") for line in r.stdout.splitlines())
    summary = json.loads(dst.read_text("_summary.json"))
    assert (summary["total"], summary["processed"], summary["skipped"], summary["failed"]) == (
        16, 14, 0, 2)
    reasons = {f["key"]: f["reason"] for f in summary["failures"]}
    assert reasons.keys() == set(m.corrupt_images) | set(m.broken_json)
    assert "not a decodable image" in reasons[m.corrupt_images[0]]
    assert "invalid JSON" in reasons[m.broken_json[0]]
    assert summary["cluster"]["nodes"] >= 2 and summary["cluster"]["cpus"] >= 2  # head + workers
    for bad in reasons:  # nothing at all written for a failed item
        assert not dst.exists(bad) and not dst.exists(annotate.done_key(bad))
    check_outputs(src, dst, good)
    rows = result_rows(dst)
    assert sorted(r["key"] for r in rows) == good
    assert all(row["node"] for row in rows)

    # A rerun skips every completed item and rewrites nothing.
    mtimes = {k: os.stat(dst.path(k)).st_mtime_ns for k in good}
    r = run_driver("annotate.py", *args, env=driver_env)
    assert r.returncode == 1 and "processed 0, skipped 14, failed 2 in" in r.stdout, r.stderr[-2000:]
    assert {k: os.stat(dst.path(k)).st_mtime_ns for k in good} == mtimes
    assert len(result_rows(dst)) == 14

    # Crash simulation: three items lost their completion record (killed before
    # writing it) and the results file ends in a torn line. The rerun redoes
    # exactly those three and the results file still has one row per item.
    for key in good[:3]:
        os.unlink(dst.path(annotate.done_key(key)))
    with open(dst.path(annotate.RESULTS_KEY), "a") as f:
        f.write('{"key": "torn')
    r = run_driver("annotate.py", *args, "--no-progress", env=driver_env)
    assert r.returncode == 1 and "processed 3, skipped 11, failed 2 in" in r.stdout, r.stderr[-2000:]
    rows = result_rows(dst)
    assert sorted(r["key"] for r in rows) == good
    check_outputs(src, dst, good)


def test_annotate_survives_a_lost_worker_node(tmp_path, local_cluster, driver_env):
    src, dst = common.LocalStorage(tmp_path / "in"), common.LocalStorage(tmp_path / "out")
    m = labelme_sample.make_sample(src, 60, seed=11, max_side=240)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(WORKLOADS, "annotate.py"), "--input", src.url,
         "--output", dst.url, "--max-side", str(MAX_SIDE), "--batch-size", "2",
         "--item-delay", "0.5", "--no-progress"],
        env=driver_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        # Wait for visible progress, then kill the node that has done most of it
        # (with more tasks in flight than CPUs, every node is busy at that moment).
        deadline = time.monotonic() + 180
        while True:
            rows = result_rows(dst)
            if len(rows) >= 6:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no progress within 180 s"
            time.sleep(0.2)
        busiest = collections.Counter(r["node"] for r in rows).most_common(1)[0][0]
        [victim] = [w.node_id for w in local_cluster.status().workers
                    if w.node_id == busiest]
        local_cluster.kill_worker_node(victim)
        done_at_kill = len(result_rows(dst))
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert done_at_kill < 60, "the job finished before the node was lost; nothing was tested"
    assert proc.returncode == 0, err[-4000:]
    assert "processed 60, skipped 0, failed 0" in out
    rows = result_rows(dst)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 60  # exactly once
    assert set(keys) == set(m.images)
    # The lost node had batches in flight: Ray ran them again, to the end, elsewhere.
    deadline = time.monotonic() + 30  # task events reach the GCS within a few seconds
    while True:
        attempts = task_attempts(local_cluster, "process_batch")
        lost = {a["task_id"] for a in attempts if a["node_id"] == busiest}
        redone = {a["task_id"] for a in attempts
                  if a["task_id"] in lost and a["node_id"] != busiest
                  and a["attempt_number"] > 0 and a["state"] == "FINISHED"}
        if redone or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert redone, "no batch of the lost node was retried and finished on another node"
    assert {r["node"] for r in rows} - {busiest}, "no other node finished the lost node's work"
    check_outputs(src, dst, m.images)
    assert not list((tmp_path / "out").rglob(".tmp-*"))
    assert sorted(k[len("_done/"):-5] for k in dst.list("_done")) == sorted(m.images)


def test_annotate_resumes_after_the_driver_is_killed(tmp_path, driver_env):
    """A real crash: SIGKILL the driver mid-run, rerun, every item done exactly once."""
    src, dst = common.LocalStorage(tmp_path / "in"), common.LocalStorage(tmp_path / "out")
    m = labelme_sample.make_sample(src, 30, seed=21, max_side=200)
    args = [sys.executable, os.path.join(WORKLOADS, "annotate.py"), "--input", src.url,
            "--output", dst.url, "--max-side", str(MAX_SIDE), "--batch-size", "2", "--no-progress"]
    proc = subprocess.Popen([*args, "--item-delay", "0.4"], env=driver_env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while len(result_rows(dst)) < 4:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    rows_at_crash = len(result_rows(dst))
    assert rows_at_crash < 30, "the run finished before the crash; nothing was tested"
    r = subprocess.run(args, env=driver_env, cwd=REPO, capture_output=True, text=True,
                       timeout=240, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(dst.read_text("_summary.json"))
    assert summary["skipped"] >= rows_at_crash and summary["failed"] == 0
    assert summary["processed"] + summary["skipped"] == 30
    keys = [row["key"] for row in result_rows(dst)]
    assert len(keys) == len(set(keys)) == 30
    check_outputs(src, dst, m.images)


def test_annotate_reads_and_writes_gcs(emulated_gcs, gcs_emulator, driver_env):
    src = common.open_storage(f"gs://{emulated_gcs}/cluster/raw")
    dst = common.open_storage(f"gs://{emulated_gcs}/cluster/small")
    m = labelme_sample.make_sample(src, 8, seed=5, corrupt=1)
    env = driver_env | {"STORAGE_EMULATOR_HOST": gcs_emulator}
    r = run_driver("annotate.py", "--input", src.url, "--output", dst.url, "--max-side", MAX_SIDE,
                   "--batch-size", 3, "--no-progress", env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "processed 7, skipped 0, failed 1" in r.stdout
    good = sorted(set(m.images) - set(m.corrupt_images))
    check_outputs(src, dst, good)
    assert sorted(row["key"] for row in result_rows(dst)) == good
    summary = json.loads(dst.read_text("_summary.json"))
    assert [f["key"] for f in summary["failures"]] == m.corrupt_images
    r = run_driver("annotate.py", "--input", src.url, "--output", dst.url, "--max-side", MAX_SIDE,
                   "--no-progress", env=env)
    assert "processed 0, skipped 7, failed 1" in r.stdout, r.stderr[-2000:]
    assert len(result_rows(dst)) == 7


def test_annotate_via_ray_job_submit_with_working_dir(tmp_path, local_cluster, driver_env):
    """The GCP route: `ray job submit --working-dir workloads -- python annotate.py ...`."""
    src, dst = common.LocalStorage(tmp_path / "in"), common.LocalStorage(tmp_path / "out")
    m = labelme_sample.make_sample(src, 5, seed=2)
    # The entrypoint runs in the head's environment; name this venv's python
    # explicitly (on GCP `python` is the node venv's).
    r = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "job", "submit",
         "--address", local_cluster.dashboard_url, "--working-dir", "workloads", "--",
         sys.executable, "annotate.py", "--input", src.url, "--output", dst.url,
         "--max-side", str(MAX_SIDE), "--no-progress"],
        env=driver_env, capture_output=True, text=True, timeout=240, cwd=REPO, check=False,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "processed 5, skipped 0, failed 0" in r.stdout
    check_outputs(src, dst, m.images)


def test_tree_reduce_agrees_with_numpy(driver_env):
    r = run_driver("tree_reduce.py", "--size", 400_000, "--chunks", 16, "--seed", 4, "--json",
                   env=driver_env)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    x = np.random.default_rng(4).standard_normal(400_000)
    assert report["agree"] and report["problems"] == []
    assert (report["tree_depth"], report["chain_depth"], report["chunks"]) == (4, 15, 16)
    assert report["mean"] == pytest.approx(x.mean(), rel=1e-9, abs=1e-12)
    assert report["std"] == pytest.approx(x.std(), rel=1e-9)
    assert (report["min"], report["max"]) == (x.min(), x.max())
    assert report["tree_seconds"] > 0 and report["chain_seconds"] > 0
    r = run_driver("tree_reduce.py", "--size", 50_000, "--chunks", 5, env=driver_env)
    assert r.returncode == 0 and "results agree (tree = chain = numpy)" in r.stdout
    assert "tree  reduce:" in r.stdout and "chain reduce:" in r.stdout


def test_cluster_info_matches_the_cluster(local_cluster, driver_env):
    # A held demand keeps a worker alive, so the report has one to describe.
    set_demand(driver_env, 2)
    try:
        status = local_cluster.wait_for_workers(1, timeout=120)
        r = run_driver("cluster_info.py", "--json", env=driver_env)
    finally:
        set_demand(driver_env, 0)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    head, *workers = report["nodes"]
    assert head["head"] and head["cpus"] == 0.0
    assert head["node_id"] in {n.node_id for n in status.nodes if n.is_head}
    # Other workers may join between the two looks; the held one is in both.
    assert {w["node_id"] for w in workers} & {n.node_id for n in status.workers}, report
    for worker in workers:
        assert not worker["head"] and worker["cpus"] == 2.0
    assert report["totals"]["cpus"] == 2.0 * len(workers)
    assert report["ray_version"] == "2.60.0"
    text = run_driver("cluster_info.py", env=driver_env).stdout
    assert "\nThis cluster consists of " in "\n" + text and "head" in text


def test_a_driver_without_the_token_is_refused(driver_env):
    env = {k: v for k, v in driver_env.items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_gcs_server_port_wait_time_s"] = "3"  # Ray's connect retries: 3 s, not 20
    r = run_driver("cluster_info.py", env=env, timeout=120)
    assert r.returncode == common.EXIT_NO_CLUSTER
    assert "cannot connect to the Ray cluster" in r.stderr and "RAY_AUTH_TOKEN_PATH" in r.stderr


# ---- workloads/README.md's local commands, as written -----------------------------------


def _readme_line(block: str, starts: str) -> str:
    joined = block.replace("\\\n", " ")
    return next(line.strip() for line in joined.splitlines() if line.strip().startswith(starts))


def test_readme_job_submit_works_as_documented_and_says_what_a_missing_token_looks_like(
    tmp_path, local_cluster
):
    """The README's `eval "$(... local up ...)"` line and its `ray job submit` line, run
    by bash as written, against the session cluster (its state dir added to `local up`,
    the venv's bin dir for `.venv/bin/`, temp dirs for /tmp/sample*)."""
    block = readme_local_block()
    eval_line = _readme_line(block, "eval ")
    submit = _readme_line(block, ".venv/bin/ray job submit")
    assert "--address" not in submit  # the environment names the dashboard
    bindir = os.path.dirname(sys.executable)
    src, dst = tmp_path / "sample", tmp_path / "sample-small2"
    labelme_sample.make_sample(common.LocalStorage(src), 5, seed=3)
    eval_line = eval_line.replace(
        "cluster local up", f"cluster local up --state-dir {local_cluster.state_dir}"
    )
    submit = submit.replace("/tmp/sample-small2", str(dst)).replace("/tmp/sample", str(src))
    script = f"set -e\n{eval_line}\n{submit}".replace(".venv/bin/", f"{bindir}/")
    # A user's shell: no RAY_* of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    r = subprocess.run(["bash", "-c", script], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=300, check=False)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "processed 5, skipped 0, failed 0" in log
    assert "succeeded" in log
    # The session cluster is running: `local up` says so instead of "starting".
    up = subprocess.run(
        [sys.executable, "-m", "cluster", "local", "up", "--state-dir", str(local_cluster.state_dir)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert up.startswith(f"already running (state in {local_cluster.state_dir}); nothing started")
    assert "starting" not in up
    assert f"  export RAY_API_SERVER_ADDRESS={local_cluster.dashboard_url}" in up.splitlines()

    # The same commands without the token: the README's last line, and no job.
    no_token = script.replace(
        submit.replace(".venv/bin/", f"{bindir}/"),
        "unset RAY_AUTH_MODE RAY_AUTH_TOKEN_PATH; "
        + submit.replace(".venv/bin/", f"{bindir}/").replace(str(dst), str(dst) + "-x"),
    )
    r = subprocess.run(["bash", "-c", no_token], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=300, check=False)
    readme = Path(WORKLOADS, "README.md").read_text()
    shown = readme.split("**Without the token**", 1)[1].split("```\n", 1)[1].split("\n```", 1)[0]
    assert r.returncode != 0
    assert shown.strip() in (r.stdout + r.stderr).splitlines(), (r.stdout + r.stderr)[-2000:]
    assert not (tmp_path / "sample-small2-x").exists()


def test_readme_planted_failures_sample_reports_what_the_readme_says(tmp_path, driver_env):
    block = readme_local_block()
    readme = Path(WORKLOADS, "README.md").read_text()
    planted = readme.split("**Planted failures.**", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    promised = readme.split("**Planted failures.**", 1)[1].split("This run ends with `", 1)[1]
    promised = promised.split("`", 1)[0]
    assert block  # the section exists
    # /tmp/ first: sys.executable itself may live under /tmp (a clone there).
    lines = [line.replace("/tmp/", f"{tmp_path}/")
             .replace(".venv/bin/python", sys.executable) for line in planted.strip().splitlines()]
    r = subprocess.run(["bash", "-c", lines[0]], env=driver_env, cwd=REPO, capture_output=True,
                       text=True, timeout=120, check=True)
    r = subprocess.run(["bash", "-c", lines[1] + " --no-progress"], env=driver_env, cwd=REPO,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 1, r.stderr[-2000:]
    assert promised in r.stdout, r.stdout
