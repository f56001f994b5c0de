"""The idle definition on the real local Ray cluster (the session's ``local_cluster``).

Each test makes one kind of work exist the way a user makes it (``ray job
submit``, a driver's ``ray.init``, ``workloads/serve.py``, a Serve app, a task
no node can run, a long task, a placement group), reads the cluster with
``cluster.idle_probe.gather`` (the dashboard's APIs and, for demand, the
GCS) and checks that ``cluster.idle.assess`` calls it busy *by that rule*.
Removing a rule from ``cluster.idle.RULES`` makes its test fail. The last test
waits until everything is gone and the cluster is idle again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable

import pytest

from cluster import idle
from cluster.idle_probe import gather
from tests.emulator import stop_process_group
from tests.workloads.conftest import REPO
from tests.workloads.test_serve_on_local_cluster import HttpServer

pytestmark = pytest.mark.cluster

WAIT_S = 180  # generous: the machine is shared; correctness, not speed, is tested


def assess_now(cluster, *, gcs: bool = False) -> idle.Assessment:
    snapshot = gather(cluster.dashboard_url, cluster.token(),
                      gcs_address=cluster.address if gcs else None)
    return idle.assess(snapshot)


def wait_for(cluster, want: Callable[[idle.Assessment], bool], what: str, *,
             gcs: bool = False, timeout: float | None = None) -> idle.Assessment:
    timeout = WAIT_S if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        a = assess_now(cluster, gcs=gcs)
        if want(a):
            return a
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}; last: {a.reason}"
        time.sleep(0.5)


class Driver:
    """A driver process (`python -c CODE`), in its own process group; READY when set up."""

    def __init__(self, code: str, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.log: list[str] = []
        self.ready = threading.Event()

        def read() -> None:
            for line in iter(self.proc.stdout.readline, ""):
                self.log.append(line)
                if line.strip() == "READY":
                    self.ready.set()

        threading.Thread(target=read, daemon=True).start()

    def wait_ready(self, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.5):
            assert self.proc.poll() is None, "".join(self.log)[-3000:]
            assert time.monotonic() < deadline, "".join(self.log)[-3000:]

    def finish(self, timeout: float = 120) -> None:
        """Wait for a driver that exits by itself."""
        assert self.proc.wait(timeout=timeout) == 0, "".join(self.log)[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process_group(self.proc, timeout=30)


def jobs_api(cluster, path: str, body: dict | None = None) -> dict:
    """A POST to the Jobs API: what `ray job submit` / `ray job stop` send, with the token."""
    request = urllib.request.Request(
        cluster.dashboard_url + path, data=json.dumps(body or {}).encode(), method="POST",
        headers={"Authorization": f"Bearer {cluster.token()}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


def submit_job(cluster, entrypoint: str = "python -c 'import time; time.sleep(600)'") -> str:
    return jobs_api(cluster, "/api/jobs/", {"entrypoint": entrypoint})["submission_id"]


def stop_job(cluster, submission: str) -> None:
    jobs_api(cluster, f"/api/jobs/{submission}/stop")


def test_busy_while_a_submitted_job_runs(local_cluster):
    submission = submit_job(local_cluster)
    try:
        a = wait_for(local_cluster, lambda a: "job" in a.rules, "the job rule")
        assert a.busy and any(submission in x.detail for x in a.activities if x.rule == "job")
        # The entrypoint does not call ray.init: no driver of its own, the job is the reason.
        assert "driver" not in a.rules
    finally:
        stop_job(local_cluster, submission)
    a = wait_for(local_cluster, lambda a: "job" not in a.rules, "the job to stop")
    assert a.last_active_at is not None  # its end time resets the watcher's clock


def test_busy_while_a_driver_is_connected(local_cluster, driver_env):
    driver = Driver("""
        import time, ray
        ray.init()
        print("READY", flush=True)
        time.sleep(600)
    """, driver_env)
    try:
        driver.wait_ready()
        a = wait_for(local_cluster, lambda a: "driver" in a.rules, "the driver rule")
        assert a.busy and "job" not in a.rules
    finally:
        driver.stop()
    wait_for(local_cluster, lambda a: "driver" not in a.rules, "the driver to disconnect")


def test_busy_while_serve_py_runs(local_cluster, driver_env):
    """workloads/serve.py: an HTTP front (uvicorn) that is a driver, and its pool of AnomalyModel actors."""
    server = HttpServer("serve.py", "--actors", 1, env=driver_env)
    try:
        server.wait_healthy()
        a = wait_for(local_cluster, lambda a: {"actor", "driver"} <= a.rules, "actor and driver")
        assert any("AnomalyModel" in x.detail for x in a.activities if x.rule == "actor")
    finally:
        server.stop()
    wait_for(local_cluster, lambda a: not a.rules & {"actor", "driver"}, "serve.py to go")


def test_busy_while_a_serve_app_runs_and_serve_alone_is_idle(local_cluster, driver_env):
    """A Serve application outlives the driver that deployed it; its replicas keep the
    cluster busy. Serve's controller and proxy, still running once the app is deleted,
    do not."""
    deploy = Driver("""
        import ray
        from ray import serve
        ray.init()
        @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
        class Hello:
            def __call__(self, request):
                return "hello"
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        serve.run(Hello.bind(), name="idle-test", route_prefix="/idle-test")
        print("READY", flush=True)
    """, driver_env)
    try:
        deploy.wait_ready()
        deploy.finish()
        a = wait_for(local_cluster, lambda a: "actor" in a.rules and "driver" not in a.rules,
                     "the Serve app's replica, with no driver left")
        assert next(x.detail for x in a.activities if x.rule == "actor").startswith(
            "actor ServeReplica:idle-test:Hello")
        Driver("""
            import ray
            from ray import serve
            ray.init()
            serve.delete("idle-test")
        """, driver_env).finish()
        # Serve still runs (its controller and proxy), with no app and no driver: idle.
        wait_for(local_cluster, lambda a: a.status == idle.IDLE, "idle with Serve alone")
        snapshot = gather(local_cluster.dashboard_url, local_cluster.token())
        alive = {x.class_name for x in snapshot.actors if x.state == "ALIVE"}
        assert {"ServeController", "ProxyActor"} <= alive
    finally:
        Driver("""
            import ray
            from ray import serve
            ray.init()
            serve.shutdown()
        """, driver_env).finish()


def test_busy_while_a_task_waits_for_a_node_that_cannot_come(local_cluster, driver_env):
    """A task asking for a resource no node type has: pending, and demand the autoscaler
    sees (read from the GCS)."""
    driver = Driver("""
        import time, ray
        ray.init()
        @ray.remote(num_cpus=0, resources={"idle-test-no-such-node": 1})
        def never():
            return 1
        ref = never.remote()
        print("READY", flush=True)
        time.sleep(600)
    """, driver_env)
    try:
        driver.wait_ready()
        # The autoscaler's demand, and the task itself, pending.
        a = wait_for(local_cluster, lambda a: {"demand", "task"} <= a.rules,
                     "the demand and task rules", gcs=True)
        assert any("idle-test-no-such-node" in x.detail for x in a.activities
                   if x.rule == "demand")
    finally:
        driver.stop()
    wait_for(local_cluster, lambda a: "demand" not in a.rules, "the demand to go", gcs=True)


def test_busy_while_one_long_task_runs(local_cluster, driver_env):
    driver = Driver("""
        import time, ray
        ray.init()
        @ray.remote(num_cpus=0)
        def three_hours():
            time.sleep(3 * 3600)
        ref = three_hours.remote()
        print("READY", flush=True)
        ray.get(ref)
    """, driver_env)
    try:
        driver.wait_ready()
        a = wait_for(local_cluster,
                     lambda a: any(x.rule == "task" and "RUNNING" in x.detail
                                   for x in a.activities), "the running task")
        assert any("three_hours" in x.detail for x in a.activities if x.rule == "task")
    finally:
        driver.stop()
    wait_for(local_cluster, lambda a: "task" not in a.rules, "the task to end")


def test_busy_while_a_placement_group_exists(local_cluster, driver_env):
    driver = Driver("""
        import time, ray
        from ray.util.placement_group import placement_group
        ray.init()
        pg = placement_group([{"memory": 1024 * 1024}], name="idle-test-pg")
        ray.get(pg.ready(), timeout=120)
        print("READY", flush=True)
        time.sleep(600)
    """, driver_env)
    try:
        driver.wait_ready()
        a = wait_for(local_cluster, lambda a: "placement_group" in a.rules, "the PG rule")
        assert any("idle-test-pg CREATED" in x.detail for x in a.activities)
    finally:
        driver.stop()
    wait_for(local_cluster, lambda a: "placement_group" not in a.rules, "the PG to go")


def test_idle_once_nothing_runs(local_cluster):
    """Run last in this module: everything above has stopped, so nothing of a user's is
    left: idle, with the GCS's demand read too (nothing pending)."""
    a = wait_for(local_cluster, lambda a: a.status == idle.IDLE, "idle", gcs=True)
    assert a.activities == () and not a.busy
    assert a.reason.startswith("no job, driver, user actor, task")
