"""`ray up` to `ray down` on this machine, with only the Google APIs faked.

From a provider machine (its own namespaces), with the config that
``python -m cluster render --target gcp`` produces for this run (plus only
``gcp_credentials``): real ``ray up`` (the head created through the fake
Compute API, real SSH and rsync, our setup commands unchanged and offline,
Ray with token auth), the head's ports refusing requests without the token,
``ray submit`` of cluster_info.py and of annotate.py over two Spot workers
that the head's autoscaler creates in zone -b because zone -a is exhausted,
one worker preempted mid-job (the autoscaler survives it, a replacement
joins, every item is done exactly once), a user's own job with its own lock
(examples/my-job, numba) submitted from the provider machine as
examples/README.md says (``ray dashboard`` + ``python -m cluster job submit``
from the bundle), twice (the second reuses each node's environment), ``ray
up`` again on the live cluster, then autostop (issue 21): the provider VM's
check as its systemd unit runs it (tests/e2e/autostop.py), with a one-minute
timeout, keeps everything while a ``ray submit`` driver stays connected past
the timeout; once it has gone, after the timeout the check runs the real
``ray down`` (every instance deleted), then the power-off (recorded by a
stand-in ``systemctl``, never done). Then, from the provider machine,
``python -m cluster logs`` reads back what the nodes shipped to the bucket:
the job's driver output from the head and the preempted worker's
``raylet.out`` as it stood two shipping intervals before the worker vanished;
and nothing of the run left on the host.

Two preemptions land just before a call about the instance, so that the call
meets Google's 404 (``FakeCloud.preempt_on_call``): the autoscaler's first
label write about the mid-job replacement (it must take that worker as
gone, without an ``HttpError``, and replace it too) and autostop's ``ray
down``'s delete of a worker (it must still delete the rest; Ray 2.60's own
``terminate_node`` raises ``UnboundLocalError`` there).

Runs with ``make e2e`` (``pytest --e2e -m e2e``); needs root and network
namespaces. Each phase prints its time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from ray.autoscaler.tags import TAG_RAY_CLUSTER_NAME, TAG_RAY_NODE_KIND

from cluster import idle, layout, userjob
from tests.e2e.autostop import ProviderAutostop
from tests.e2e.fake_gce import SERVED
from tests.e2e.fake_gce_http import in_netns
from tests.e2e.harness import BUCKET, E2E_SPEC, PROVIDER, ROOT, Harness, e2e_unavailable
from tests.e2e.machines import OPERATOR_HOME
from tests.e2e.prewarm import JOB_TEMPLATE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

SAMPLE = 200  # images: with --item-delay 1 the job outlasts a worker's replacement
GENEROUS = 900  # s: any single wait, on a loaded 2-core machine
CLUSTER = E2E_SPEC.cluster_name
AUTOSTOP_MINUTES = 1  # the check's timeout here (the setting allows 5 and up; same code)
AUTOSTOP_EVERY = 5.0  # s between checks (the timer: a minute)
BOOTSTRAP_READS = ["cloudresourcemanager.projects.get", "iam.projects.serviceAccounts.get",
                   "iam.projects.serviceAccounts.get", "compute.subnetworks.get"]


@pytest.fixture
def harness():
    why = e2e_unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"end-to-end test cannot run: {why}; CI is set, so it must")
        pytest.skip(f"end-to-end test skipped: {why}")
    h = Harness(Path(tempfile.mkdtemp(prefix="ray-gcp-e2e-")))
    try:
        yield h.start()
    finally:
        left = h.stop(keep=True)  # the test stops it itself when it gets that far
        if h.dir.exists():
            print(f"\n[e2e] logs of this run kept in {h.dir}")
        assert not left, "the run left traces on the host:\n" + "\n".join(left)


class Phases:
    def __init__(self):
        self.times: dict[str, float] = {}
        self.t0 = time.monotonic()

    @contextmanager
    def __call__(self, name: str):
        start = time.monotonic()
        print(f"\n[e2e] {name} ...", flush=True)
        try:
            yield
        finally:
            self.times[name] = time.monotonic() - start
            print(f"[e2e] {name}: {self.times[name]:.1f} s (total {time.monotonic() - self.t0:.0f} s)",
                  flush=True)


def wait_for(what: str, check, timeout: float = GENEROUS, every: float = 2.0, on_fail=None):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f"\n{on_fail()}" if on_fail else ""))
        time.sleep(every)


def instances(h: Harness, kind: str | None = None) -> dict[str, dict]:
    """The cluster's instances (name -> instance) of a Ray node kind, as the fake holds them."""
    with h.cloud.lock:
        return {n: dict(i) for n, i in h.cloud.instances.items()
                if i.get("labels", {}).get(TAG_RAY_CLUSTER_NAME) == CLUSTER
                and (kind is None or i["labels"].get(TAG_RAY_NODE_KIND) == kind)}


def zone(instance: dict) -> str:
    return instance["zone"].rsplit("/", 1)[1]


def ip(instance: dict) -> str:
    return instance["networkInterfaces"][0]["networkIP"]


def submit(h: Harness, script: str, *args: str, name: str) -> str:
    rc, out = h.ray("submit", h.cluster_yaml, str(ROOT / "workloads" / script), "--", *args,
                    name=name, timeout=GENEROUS)
    assert rc == 0, f"ray submit {script} failed ({rc}):\n{out[-5000:]}"
    return out


def cluster_info(h: Harness, name: str) -> dict:
    out = submit(h, "cluster_info.py", "--json", name=name)
    m = re.search(r"^\{\n.*?^\}$", out, re.DOTALL | re.MULTILINE)
    assert m, f"no JSON report in cluster_info.py's output:\n{out[-3000:]}"
    return json.loads(m.group(0))


def result_rows(h: Harness) -> list[dict]:
    text = h.gcs_text("out/results.jsonl") or ""
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def ray_logs(h: Harness, name: str) -> Path:
    """A machine's current Ray log directory, as its processes see it."""
    root = h.machine_root(name)
    return root / os.readlink(root / "tmp/ray/session_latest").lstrip("/") / "logs"


def read_logs(h: Harness, *args: str, name: str) -> str:
    """``python -m cluster logs ARGS`` on the provider machine, as an operator runs it
    there: the bucket and cluster come from the cluster config ($RAY_GCP_CLUSTER_YAML)."""
    rc, out = h.run(["env", f"RAY_GCP_CLUSTER_YAML={OPERATOR_HOME}/cluster.yaml",
                     sys.executable, "-m", "cluster", "logs", *args], name=name, timeout=GENEROUS)
    assert rc == 0, f"python -m cluster logs {' '.join(args)} failed ({rc}):\n{out[-5000:]}"
    return out


def autoscaler_logs(h: Harness, head: str, lines: int = 80) -> str:
    """The tails of the head autoscaler's logs (for failure messages)."""
    try:
        logs = ray_logs(h, head)
        out = []
        for name in ("monitor.log", "monitor.out", "monitor.err"):
            text = (logs / name).read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {name} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(out)
    except OSError as e:
        return f"(autoscaler logs unreadable: {e})"


def no_worker_deleted_since(h: Harness, since: float, head: str, spare: str | None = None) -> bool:
    """Fails at once if the autoscaler deleted a worker (other than ``spare``) since ``since``:
    a worker whose setup or `ray start` failed is terminated, and no healthy one may be."""
    deleted = [c.params["instance"] for c in h.cloud.calls
               if c.method == "compute.instances.delete" and c.at >= since
               and c.params["instance"] != spare]
    if deleted:
        raise AssertionError(f"the autoscaler deleted workers {deleted}: their setup or `ray "
                             f"start` failed, or a healthy one was lost\n{autoscaler_logs(h, head)}")
    return True


def autoscaler_log_text(h: Harness, head: str) -> str:
    """All of the head autoscaler's logs (monitor.log, .out, .err)."""
    logs = ray_logs(h, head)
    return "\n".join((logs / name).read_text(errors="replace")
                     for name in ("monitor.log", "monitor.out", "monitor.err") if (logs / name).exists())


def is_first_label_write_of_a_worker(method: str, params: dict, body) -> bool:
    return (method == "compute.instances.setLabels"
            and ((body or {}).get("labels") or {}).get(TAG_RAY_NODE_KIND) == "worker")


def monitor_process(h: Harness, head: str) -> tuple[int, str]:
    procs = {p: c for p, c in h.processes_of(head).items()
             if re.search(r"/ray/autoscaler/(v2/)?monitor\.py ", c)}
    assert len(procs) == 1, f"expected one autoscaler (monitor.py) on the head: {procs}"
    return next(iter(procs.items()))


def dashboard_tunnel(h: Harness):
    """`ray dashboard` on the provider machine (examples/README.md): SSH forwards its
    127.0.0.1:8265 to the head's; returns the process once the port answers."""
    proc = h.popen(["ray", "dashboard", h.cluster_yaml], name="ray-dashboard")

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"ray dashboard exited ({proc.returncode}):\n"
                                 + h.output("ray-dashboard")[-3000:])
        with in_netns(h.provider.netns), socket.socket() as s:
            s.settimeout(5)
            return s.connect_ex(("127.0.0.1", 8265)) == 0

    wait_for("the dashboard tunnel on the provider's 127.0.0.1:8265", listening, timeout=120,
             every=1.0)
    return proc


def provider_user_env(h: Harness) -> dict[str, str]:
    """The provider VM's operator shell as its boot script leaves it: `python` is the
    pinned venv's with the bundle on its path (a .pth there; PYTHONPATH here), the token
    variables exported; and the pinned uv at /opt/ray-gcp/tools/bin (linked below)."""
    return {**h.env(), "PYTHONPATH": layout.PROVIDER_SRC, "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": f"{OPERATOR_HOME}/.ray-gcp/ray-auth-token"}


def submit_user_job(h: Harness, name: str, limit: int, chunks: int) -> str:
    """examples/README.md's command on the provider VM, from the operator's home."""
    command = ("cd ~ && python -m cluster job submit --address http://127.0.0.1:8265 ~/my-job "
               f"-- python driver.py --limit {limit} --chunks {chunks} --output /tmp/{name}.json")
    rc, out = h.run(["bash", "-c", command], name=name, timeout=GENEROUS, env=provider_user_env(h))
    assert rc == 0, f"job submit of my-job failed ({rc}):\n{out[-6000:]}"
    return out


def test_ray_up_jobs_preemption_autostop_and_ray_down_end_to_end(harness: Harness):
    h, cloud, phase = harness, harness.cloud, Phases()
    a, b = h.zones[0], h.zones[1]

    # The job's input, written to the bucket while `ray up` runs (the provider's CPU is idle).
    sample = h.popen([sys.executable, "workloads/annotate.py", "--make-sample",
                      f"gs://{BUCKET}/sample", "--count", str(SAMPLE)], name="make-sample")
    with phase("ray up (head created, set up over SSH, Ray started)"):
        rc, out = h.ray("up", "-y", h.cluster_yaml, name="ray-up-1", timeout=GENEROUS)
        assert rc == 0, f"ray up failed ({rc}):\n{out[-6000:]}"
    [head] = instances(h, "head")
    assert zone(instances(h)[head]) == a and instances(h)[head]["status"] == "RUNNING"
    assert cloud.methods()[:4] == BOOTSTRAP_READS, cloud.methods()[:6]
    assert head in h.fleet.machines, h.fleet.boot_errors
    head_procs = " ".join(h.processes_of(head).values())
    for proc in ("gcs_server", "raylet", "autoscaler/v2/monitor.py"):
        assert proc in head_procs, f"{proc} is not running on the head"
    head_ip = ip(instances(h)[head])
    # The head's autoscaler holds the bootstrapped config with our endpoints and token.
    bootstrap = (h.machine_root(head) / "home/ray/ray_bootstrap_config.yaml").read_text()
    assert h.server.endpoints["compute"] in bootstrap and h.api_token in bootstrap
    assert "cannot modify limit" not in out  # the open-files limit is raised within the hard limit

    with phase("Ray's ports refuse requests without the token"):
        rc, out = h.run([sys.executable, str(Path(__file__).with_name("probe_ports.py")),
                         head_ip, h.ray_token], name="probe-ports", timeout=GENEROUS)
        assert rc == 0, out
        probe = json.loads(out.strip().splitlines()[-1])
        assert probe["gcs_no_token"] == "UNAUTHENTICATED", probe
        assert probe["client_no_token"] == "UNAUTHENTICATED", probe
        assert probe["gcs_token"] == "OK", probe  # the same call with the token gets through
        assert probe["dashboard_tcp"] == "ConnectionRefusedError", probe  # loopback only
        with in_netns(h.fleet.machines[head].netns):  # on the head itself: 401 without it
            url = "http://127.0.0.1:8265/api/jobs/"
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url, timeout=30)
            assert refused.value.code == 401
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {h.ray_token}"})
            with urllib.request.urlopen(request, timeout=30) as ok:
                assert ok.status == 200

    with phase("ray submit cluster_info.py"):
        report = cluster_info(h, "cluster-info-1")
        assert report["totals"]["nodes"] == 1
        assert report["nodes"][0]["head"] and report["nodes"][0]["address"] == head_ip

    with phase("sample in the bucket"):
        assert sample.wait(GENEROUS) == 0, h.output("make-sample")

    cloud.exhausted[a] = "operation"  # zone -a has no capacity from now on
    monitor_before = monitor_process(h, head)
    job_started = time.monotonic()
    job = h.popen(["ray", "submit", h.cluster_yaml, str(ROOT / "workloads/annotate.py"), "--",
                   "--input", f"gs://{BUCKET}/sample", "--output", f"gs://{BUCKET}/out",
                   "--max-side", "128", "--batch-size", "2", "--item-delay", "1",
                   "--no-progress"], name="annotate")
    try:
        with phase("both workers created in zone -b and joined, work under way"):
            workers = wait_for(
                "two RUNNING workers with Ray up and results from both",
                lambda: (no_worker_deleted_since(h, job_started, head)
                         and len(ws := instances(h, "worker")) == 2
                         and all(w["status"] == "RUNNING" for w in ws.values())
                         and len({r["node"] for r in result_rows(h)}) == 2 and ws),
                on_fail=lambda: (h.output("annotate")[-3000:] + "\n" + "\n".join(h.fleet.boot_errors)
                                 + "\n" + autoscaler_logs(h, head)))
        assert {zone(w) for w in workers.values()} == {b}, workers.keys()
        failed_in_a = [c for c in cloud.calls if c.method == "compute.instances.insert"
                       and c.params.get("zone") == a and c.body["labels"].get(TAG_RAY_NODE_KIND) == "worker"]
        assert failed_in_a, "the autoscaler never tried the exhausted zone -a"

        victim = min(workers, key=lambda n: workers[n]["creationTimestamp"])
        done_before = len(result_rows(h))
        assert done_before < SAMPLE, "the job finished before a worker could be lost"
        # What the victim's raylet has written so far: shipped before it vanishes, since
        # the shipper uploads what a file gained every interval.
        victim_raylet = (ray_logs(h, victim) / "raylet.out").read_text()
        assert victim_raylet.count("\n") > 5, victim_raylet
        time.sleep(2 * E2E_SPEC.logs.interval_s)
        with phase("a Spot worker preempted mid-job; its replacement preempted at its first "
                   "label write; a second replacement joins"):
            preempted_at = time.monotonic()
            # GCE preempts the replacement between the autoscaler's list and its first label
            # write about it (the installer's `waiting-for-ssh`): that call meets Google's 404.
            # (No other worker is being set up: the next worker label write is the replacement's.)
            cloud.preempt_on_call(is_first_label_write_of_a_worker)
            cloud.preempt(victim)
            replacement = wait_for(
                "a replacement worker that runs Ray",
                lambda: no_worker_deleted_since(h, job_started, head, spare=victim) and [
                    n for n, w in instances(h, "worker").items() if n not in workers and w["status"] == "RUNNING" and n in h.fleet.machines
                         and "raylet" in " ".join(h.processes_of(n).values())],
                on_fail=lambda: h.output("annotate")[-3000:])
        # The autoscaler's call about the replacement preempted under it got the 404, and our
        # provider took it as a gone node: no HttpError reached the autoscaler.
        [lost] = [c.params["instance"] for c in cloud.calls
                  if c.method == "compute.instances.setLabels" and c.status == 404]
        assert lost not in workers and lost not in replacement
        logs = autoscaler_log_text(h, head)
        assert f"{lost}: GCE answered instances.setLabels with 404" in logs, autoscaler_logs(h, head)
        escaped = [line for line in logs.splitlines() if "HttpError" in line and lost in line]
        assert not escaped, "the 404 reached the autoscaler as an HttpError:\n" + "\n".join(escaped[:5])
        assert monitor_process(h, head) == monitor_before, "the head's autoscaler restarted"
        with phase("annotate.py finishes"):
            rc = job.wait(GENEROUS)
    finally:
        if job.poll() is None:
            job.kill()
    out = h.output("annotate")
    assert rc == 0, out[-5000:]
    assert f"processed {SAMPLE}, skipped 0, failed 0" in out, out[-3000:]
    rows = result_rows(h)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == SAMPLE, "an item was done twice or not at all"
    assert len(h.gcs_text("out/_summary.json") or "") > 0
    # No healthy worker was deleted while the job ran (autoscaler v2 did, with a stale
    # node_tags cache: the first finding).
    deleted = [c.params["instance"] for c in cloud.calls
               if c.method == "compute.instances.delete" and c.at >= job_started]
    assert set(deleted) <= {victim}, f"the autoscaler deleted healthy workers mid-job: {deleted}"
    # The autoscaler lived through the lost node and its 404s.
    assert monitor_process(h, head) == monitor_before, "the head's autoscaler restarted"
    after = [c for c in cloud.calls if c.at > preempted_at and c.params.get("instance") == victim]
    print(f"[e2e] calls about the preempted {victim} afterwards: "
          f"{[(c.method, c.status) for c in after]}; replacement {replacement}")
    assert zone(instances(h)[replacement[0]]) == b

    # No warning repeated every autoscaler round (Ray's first config read, before our
    # provider module is imported, may still log it once).
    monitor_log = (ray_logs(h, head) / "monitor.log").read_text()
    rounds = monitor_log.count("Dropping the empty legacy field head_node")
    assert rounds <= 1, f"the legacy-field warning was logged {rounds} times"

    with phase("ray submit cluster_info.py (after the job)"):
        report = cluster_info(h, "cluster-info-2")
        addresses = {n["address"] for n in report["nodes"]}
        assert ip(workers[victim]) not in addresses
        assert head_ip in addresses

    with phase("your own job (my-job, numba) from the provider machine, first run"):
        # The user's copy of the template in the operator's home; the pinned uv where the
        # boot script installs it (job submit's `uv lock --check` finds it there).
        home = h.dir / "operator"
        shutil.copytree(ROOT / JOB_TEMPLATE, home / "my-job",
                        ignore=shutil.ignore_patterns("__pycache__", ".venv"))
        tools = Path(f"/proc/{h.provider.pid1}/root") / layout.PROVIDER_TOOLS.lstrip("/") / "bin"
        tools.mkdir(parents=True)
        (tools / "uv").symlink_to(ROOT / ".tools" / "bin" / "uv")
        which = "cd ~ && python -c 'import cluster.job_cli as j; print(j.__file__)'"
        rc, out = h.run(["bash", "-c", which], name="which-cluster", env=provider_user_env(h))
        assert rc == 0 and out.strip() == f"{layout.PROVIDER_SRC}/cluster/job_cli.py", out
        tunnel = dashboard_tunnel(h)
        out1 = submit_user_job(h, "my-job-1", 2_000_000, 4)
    job = userjob.load_job(ROOT / JOB_TEMPLATE)
    numba = job.locked("numba")[0]["version"]
    assert "primes below 2000000: 148933 (matches NumPy); 4 tasks on" in out1, out1[-3000:]
    assert re.search(r"^job raysubmit_\w+ succeeded in [\d.]+ s$", out1, re.MULTILINE), out1
    assert re.search(r"Installed \d+ packages in", out1), out1[-3000:]  # built on the head
    result = json.loads((h.machine_root(head) / "tmp/my-job-1.json").read_text())
    env_path = f"/home/{layout.NODE_SSH_USER}/{layout.NODE_JOB_ENVS.removeprefix('~/')}/" \
        f"{userjob.env_dir(job)}"
    report = cluster_info(h, "cluster-info-job")
    head_id = next(n["node_id"] for n in report["nodes"] if n["head"])
    worker_ids = {n["node_id"] for n in report["nodes"] if not n["head"]}
    assert result["ok"] and len(result["tasks"]) == 4
    for task in result["tasks"]:  # on workers (the head has no CPU), in the job's environment
        assert task["node"] != head_id and task["node"] in worker_ids, (task, report)
        assert task["numba"] == numba and task["python"] == env_path, task
    workers_used = {w for w in instances(h, "worker") if h.fleet.machines.get(w)
                    and (h.machine_root(w) / env_path.lstrip("/")).is_dir()}
    assert workers_used, "no worker holds the job's environment"

    with phase("your own job again: each node's environment reused"):
        out2 = submit_user_job(h, "my-job-2", 1_000_000, 4)
        tunnel.kill()
        tunnel.wait(30)
    assert "primes below 1000000: 78498 (matches NumPy)" in out2, out2[-3000:]
    assert "Installed" not in out2 and "Downloading" not in out2, out2[-3000:]

    with phase("ray up again on the live cluster"):
        calls_before = len(cloud.calls)
        rc, out = h.ray("up", "-y", h.cluster_yaml, name="ray-up-2", timeout=GENEROUS)
        assert rc == 0, f"the second ray up failed ({rc}):\n{out[-6000:]}"
        assert list(instances(h, "head")) == [head], "the head was replaced"
        head_inserts = [c for c in cloud.calls[calls_before:] if c.method == "compute.instances.insert"
                        and c.body["labels"].get(TAG_RAY_NODE_KIND) == "head"]
        assert not head_inserts
        report = cluster_info(h, "cluster-info-3")
        assert any(n["head"] and n["address"] == head_ip for n in report["nodes"])

    # Autostop (issue 21): the provider VM's check, as its systemd unit runs it, with a
    # timeout of one minute (the same code as the default 60).
    autostop = ProviderAutostop(h, timeout_minutes=AUTOSTOP_MINUTES)
    release = f"/tmp/ray-gcp-e2e-release-{h.run_id}"
    with phase("autostop: a driver connected past the timeout keeps everything"):
        hold = h.popen(["ray", "submit", h.cluster_yaml, str(Path(__file__).with_name("hold_driver.py")),
                        "--", release], name="hold-driver")
        try:
            wait_for("the held driver to connect",
                     lambda: "holding until" in h.output("hold-driver") or hold.poll() is not None)
            assert hold.poll() is None, h.output("hold-driver")[-3000:]
            kept = set(instances(h))
            busy_from = time.monotonic()
            busy = autostop.watch(every=AUTOSTOP_EVERY, until=lambda states: (
                states[-1].checked_at - states[0].checked_at > autostop.timeout_s + AUTOSTOP_EVERY))
            assert hold.poll() is None, "the driver ended before the checks passed the timeout"
        finally:
            (h.machine_root(head) / release.lstrip("/")).write_text("")
        assert hold.wait(GENEROUS) == 0, h.output("hold-driver")[-3000:]
        assert all(s.status == idle.BUSY for s in busy), [s.log_line() for s in busy]
        assert "hold_driver.py" in busy[-1].reason and "driver" in busy[-1].reason, busy[-1].reason
        assert head in instances(h) and autostop.systemctl_calls() == []
        gone = [c.params["instance"] for c in cloud.calls if c.at >= busy_from
                and c.method == "compute.instances.delete"]
        # Only idle workers may go (Ray's autoscaler); the head and the cluster stay.
        assert head not in gone and set(gone) <= kept - {head}, gone
        print(f"[e2e] autostop: {len(busy)} checks over "
              f"{busy[-1].checked_at - busy[0].checked_at:.0f} s, all busy: {busy[-1].reason}")

    with phase("autostop: idle for the timeout; its ray down deletes every instance (a worker "
               "preempted just before its delete); power-off recorded"):
        all_deleted: list[float] = []
        # GCE preempts a worker between `ray down`'s list and its delete of that worker: the
        # delete meets Google's 404, and the rest of the cluster must still go. (The workers'
        # idle timeout, E2E_SPEC's 10 minutes, outlasts these phases: they are still up.)
        live = set(instances(h, "worker"))
        assert live, "no worker left for ray down to delete"
        cloud.preempt_on_call(lambda method, params, body: method == "compute.instances.delete"
                              and params["instance"] in live)
        calls_before = len(cloud.calls)

        def watch_instances() -> None:  # when the fake holds no instance of the cluster
            while instances(h):
                time.sleep(0.25)
            all_deleted.append(time.time())

        watcher = threading.Thread(target=watch_instances, daemon=True)
        watcher.start()
        deadline = time.monotonic() + autostop.timeout_s + GENEROUS
        states = autostop.watch(every=AUTOSTOP_EVERY, until=lambda states: (
            states[-1].status != idle.IDLE or time.monotonic() > deadline))
        final = states[-1]
        assert final.status == idle.STOPPED, (
            [s.log_line() for s in states] + autostop.journal[-5:])
        assert [s.status for s in states[:-1]] == [idle.IDLE] * (len(states) - 1), (
            [s.log_line() for s in states])
        watcher.join(60)
        assert all_deleted, f"instances left after the stop: {list(instances(h))}"
        wait_for("every machine of the cluster gone", lambda: set(h.fleet.machines) == {PROVIDER},
                 timeout=300)
        # ray down, a check that nothing is left, then (only then) the power-off.
        assert autostop.journal[-2].startswith("ray-gcp-autostop: stopped: ray down -y "), autostop.journal
        assert "no VM of the cluster is left" in autostop.journal[-2]
        assert autostop.journal[-1] == "ray-gcp-autostop: powering off the provider VM: systemctl poweroff"
        [(powered_off_at, args)] = autostop.systemctl_calls()
        assert args == "poweroff" and powered_off_at >= all_deleted[0]
        quiet_for = final.checked_at - final.quiet_since
        assert quiet_for >= autostop.timeout_s, quiet_for
        gone_at_delete = [c for c in cloud.calls[calls_before:]
                          if c.method == "compute.instances.delete" and c.status == 404]
        assert [c.params["instance"] for c in gone_at_delete] in ([w] for w in live), gone_at_delete
        # The stopping check's start, on the fake's (monotonic) clock: the 404 came after it.
        stopping_check_began = final.checked_at + (time.monotonic() - time.time())
        assert gone_at_delete[0].at >= stopping_check_began - 1.0, (
            "the 404 met the autoscaler's delete, not ray down's")
        status = autostop.status()
        assert "state: stopped" in status, status
        idle_to_deleted = all_deleted[0] - final.quiet_since
        print(f"[e2e] autostop: timeout {AUTOSTOP_MINUTES} min, a check every {AUTOSTOP_EVERY:.0f} s; "
              f"idle (quiet since the driver ended) -> every instance deleted: {idle_to_deleted:.1f} s "
              f"(the stopping check began {final.checked_at - final.quiet_since:.1f} s after; "
              f"ray down and its check: {all_deleted[0] - final.checked_at:.1f} s); "
              f"power-off recorded {powered_off_at - all_deleted[0]:.1f} s after\n"
              f"[e2e] autostop journal:\n  " + "\n  ".join(autostop.journal[-6:]))
    assert PROVIDER in cloud.instances  # ray down leaves what is not the cluster's

    # Nothing but reads and the instance calls: no IAM, project metadata or subnet writes.
    assert set(cloud.methods()) <= SERVED, set(cloud.methods()) - SERVED
    assert not [c for c in cloud.calls if c.status in (401, 500)]
    print(f"[e2e] API calls: {h.summary()}")

    with phase("the logs read back after ray down (python -m cluster logs)"):
        runs = read_logs(h, "runs", name="logs-runs")
        # Two `ray up`s, two Ray sessions; the job's is the one the victim took part in.
        blocks = [b for b in re.split(r"^(?=session_)", runs, flags=re.MULTILINE)
                  if b.startswith("session_")]
        job_run = [b for b in blocks if f"  {victim} (worker" in b]
        assert len(blocks) == 2 and len(job_run) == 1, runs
        job_session = job_run[0].split()[0]
        assert f"  {head} (head" in job_run[0] and "driver log: driver-" in job_run[0], runs
        # The driver's output (ray submit: the terminal's copy the hook made), from the head.
        drivers = read_logs(h, "node", head, "--run", job_session, "--file", "driver-*",
                            name="logs-head-drivers")
        annotate_section = next((sec for sec in drivers.split("==> ")
                                 if f"processed {SAMPLE}, skipped 0, failed 0" in sec), "")
        assert annotate_section.startswith(f"{head} (head"), drivers[-5000:]
        # The preempted worker's raylet, up to two shipping intervals before it vanished.
        raylet = read_logs(h, "node", victim, "--file", "raylet.out", name="logs-victim-raylet")
        assert f"==> {victim} (worker" in raylet, raylet[:2000]
        assert victim_raylet in raylet, (
            f"the preempted worker's raylet.out as it stood {2 * E2E_SPEC.logs.interval_s:g} s "
            f"before it vanished is not all in the bucket:\n{raylet[-3000:]}")

    with phase("teardown, nothing left on the host"):
        left = h.stop()
        assert not left, "\n".join(left)
    print("[e2e] phase times: " + json.dumps({k: round(v, 1) for k, v in phase.times.items()}))
