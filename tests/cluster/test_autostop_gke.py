"""Autostop on GKE: the watcher's manifests, and its logic against a real local Ray
cluster and a fake Kubernetes API on loopback that enforces the rendered Role.

* Renderers (cluster/kuberay_autostop.py): every object valid against the GKE
  minor's OpenAPI schemas; the RayCluster after the watcher's PATCH valid
  against the pinned KubeRay CRD; the Role allows get and patch of that one
  RayCluster and nothing else; the ConfigMap's files import with nothing else
  of this repository on the path (what the Pod has).
* The watcher (cluster/autostop_gke.py) polls the local cluster's dashboard
  and GCS as the head Service, and the fake API server: a JSON merge PATCH of
  ``spec.suspend: true`` once idle for the timeout, never while a job runs.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cluster import autostop_gke, idle, kuberay_autostop, layout, ray_start
from cluster.kuberay import (
    example_kube_facts,
    read_workloads,
    render_core_objects,
    render_raycluster,
)
from cluster.spec import ClusterSpec, SpecError
from tests.cluster.kube_schema import core_errors, crd_errors
from tests.cluster.test_idle_local import stop_job, submit_job

SPEC = ClusterSpec()
FACTS = example_kube_facts()
SOURCES = kuberay_autostop.read_autostop_sources()


def objects(minutes: int = 60) -> dict[str, dict]:
    return {o["kind"]: o for o in kuberay_autostop.render_autostop_objects(
        SPEC, FACTS, minutes, SOURCES)}


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# ---- the manifests --------------------------------------------------------------------------


def test_every_object_is_valid_for_the_gke_minor():
    for obj in objects().values():
        assert core_errors(obj, layout.GKE_MINOR) == [], obj["kind"]
    policy = next(o for o in render_core_objects(SPEC, FACTS, read_workloads(), autostop=True)
                  if o["kind"] == "NetworkPolicy")
    assert core_errors(policy, layout.GKE_MINOR) == []


def test_the_suspend_patch_gives_a_raycluster_the_pinned_crd_accepts():
    suspended = merge_patch(render_raycluster(SPEC, FACTS), autostop_gke.SUSPEND_PATCH)
    assert suspended["spec"]["suspend"] is True
    assert crd_errors(suspended) == []
    resumed = merge_patch(suspended, {"spec": {"suspend": False}})
    assert crd_errors(resumed) == [] and resumed["spec"]["suspend"] is False
    # The field the patch sets is a top-level RayCluster spec field of KubeRay 1.7.
    schema = json.loads((Path(__file__).parent / "kuberay_crds" / "rayclusters.schema.json")
                        .read_text())
    spec_props = schema["versions"]["v1"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec_props["suspend"] == {"type": "boolean"}


def test_the_role_allows_get_and_patch_of_that_one_raycluster_only():
    role = objects()["Role"]
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayclusters"],
                              "resourceNames": [SPEC.cluster_name], "verbs": ["get", "patch"]}]
    binding = objects()["RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": FACTS.namespace,
                                    "name": objects()["ServiceAccount"]["metadata"]["name"]}]


def test_the_deployment_runs_the_pinned_ray_image_with_the_cluster_token():
    dep = objects(45)["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == layout.RAY_IMAGE == FACTS.ray_image
    assert container["command"] == ["python", "-m", "cluster.autostop", "gke-watch"]
    env = {e["name"]: e for e in container["env"]}
    assert env[autostop_gke.ENV_TIMEOUT]["value"] == "45"
    assert env[autostop_gke.ENV_RAYCLUSTER]["value"] == SPEC.cluster_name
    assert env[autostop_gke.ENV_NAMESPACE]["value"] == FACTS.namespace
    assert env[autostop_gke.ENV_TOKEN]["valueFrom"]["secretKeyRef"] == {
        "name": FACTS.auth_secret_name, "key": "auth_token"}
    assert pod["serviceAccountName"] == objects()["ServiceAccount"]["metadata"]["name"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-nodepool": "ray-system"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    # The watcher is not one of the Ray cluster's Pods (the NetworkPolicy's trust zone).
    assert "ray-gcp/cluster" not in dep["spec"]["template"]["metadata"]["labels"]


def test_the_network_policy_admits_the_watcher_to_the_dashboard_and_gcs_only():
    def policy(autostop: bool) -> dict:
        return next(o for o in render_core_objects(SPEC, FACTS, read_workloads(),
                                                   autostop=autostop)
                    if o["kind"] == "NetworkPolicy")

    off, on = policy(False), policy(True)
    added = [rule for rule in on["spec"]["ingress"] if rule not in off["spec"]["ingress"]]
    labels = objects()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert added == [{
        "from": [{"podSelector": {"matchLabels": {
            kuberay_autostop.WATCHER_LABEL: labels[kuberay_autostop.WATCHER_LABEL]}}}],
        "ports": [{"protocol": "TCP", "port": ray_start.DASHBOARD_PORT},
                  {"protocol": "TCP", "port": ray_start.GCS_PORT}],
    }]
    assert (autostop_gke.DASHBOARD_PORT, autostop_gke.GCS_PORT) == (
        ray_start.DASHBOARD_PORT, ray_start.GCS_PORT)


def test_autostop_off_renders_no_watcher_and_bad_timeouts_are_refused():
    assert kuberay_autostop.render_autostop_objects(SPEC, FACTS, 0, SOURCES) == []
    with pytest.raises(SpecError, match="from 5 to 10080"):
        kuberay_autostop.render_autostop_objects(SPEC, FACTS, 4, SOURCES)


def test_the_configmap_code_imports_with_nothing_else_of_this_repository(tmp_path):
    """What the Pod has: the ConfigMap's files as the package `cluster`, and the Ray
    image's Python. Nothing else of cluster/ (spec, pydantic) may be imported."""
    code = objects()["ConfigMap"]["data"]
    assert sorted(code) == sorted(kuberay_autostop.AUTOSTOP_MODULES)
    pkg = tmp_path / "cluster"
    pkg.mkdir()
    for name, text in code.items():
        (pkg / name).write_text(text)
    probe = (
        "import json, sys, cluster.autostop, cluster.autostop_gke, cluster.idle_probe\n"
        "mods = sorted(m for m in sys.modules if m.startswith('cluster'))\n"
        "print(cluster.__file__); print(json.dumps(mods))\n"
    )
    # As the Pod runs it: PYTHONPATH to the mounted package, no other path of ours.
    out = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(tmp_path)},
                         capture_output=True, text=True, check=True, cwd="/")
    first, mods = out.stdout.splitlines()
    assert first == str(pkg / "__init__.py")
    assert json.loads(mods) == ["cluster", "cluster.autostop", "cluster.autostop_gke",
                                "cluster.idle", "cluster.idle_probe"]
    # And its entry point runs: a bad environment is refused with a message, exit 2.
    bad = subprocess.run([sys.executable, "-m", "cluster.autostop", "gke-watch", "--once"],
                         env={"PYTHONPATH": str(tmp_path), autostop_gke.ENV_TIMEOUT: "3"},
                         capture_output=True, text=True, check=False, cwd="/")
    assert bad.returncode == 2 and "bad environment" in bad.stderr


# ---- the watcher against a fake API server and the local cluster --------------------------------


class FakeKubeApi:
    """An API server for one RayCluster that authorises every request against the
    rendered Role (verbs, resources, resourceNames), as RBAC does."""

    def __init__(self, raycluster: dict, role: dict, token: str):
        self.objects = {(raycluster["metadata"]["namespace"], raycluster["metadata"]["name"]):
                        copy.deepcopy(raycluster)}
        self.rules = role["rules"]
        self.token = token
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, code, doc):
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, verb):
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                record = {"verb": verb, "path": url.path, "query": url.query,
                          "content_type": self.headers.get("Content-Type"),
                          "body": json.loads(body) if body else None}
                fake.requests.append(record)
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    record["code"] = 401
                    return self._answer(401, {"kind": "Status", "code": 401})
                parts = url.path.strip("/").split("/")
                # /apis/ray.io/v1/namespaces/<ns>/rayclusters/<name>
                ok = (len(parts) == 7 and parts[:3] == ["apis", "ray.io", "v1"]
                      and parts[3] == "namespaces")
                allowed = ok and any(
                    "ray.io" in r["apiGroups"] and parts[5] in r["resources"]
                    and parts[6] in r.get("resourceNames", [parts[6]]) and verb in r["verbs"]
                    for r in fake.rules)
                if not allowed:
                    record["code"] = 403
                    return self._answer(403, {"kind": "Status", "reason": "Forbidden"})
                key = (parts[4], parts[6])
                if key not in fake.objects:
                    record["code"] = 404
                    return self._answer(404, {"kind": "Status", "reason": "NotFound"})
                if verb == "patch":
                    if record["content_type"] != "application/merge-patch+json":
                        record["code"] = 415
                        return self._answer(415, {"kind": "Status"})
                    fake.objects[key] = merge_patch(fake.objects[key], record["body"])
                record["code"] = 200
                return self._answer(200, fake.objects[key])

            def do_GET(self):
                self._handle("get")

            def do_PATCH(self):
                self._handle("patch")

            def do_DELETE(self):
                self._handle("delete")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def patches(self) -> list[dict]:
        return [r for r in self.requests if r["verb"] == "patch"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


TIMEOUT_S = 4.0


@pytest.fixture
def kube(tmp_path):
    token_file = tmp_path / "sa-token"
    token_file.write_text("sa-token-abc\n")
    fake = FakeKubeApi(render_raycluster(SPEC, FACTS), objects()["Role"], "sa-token-abc")
    yield fake, autostop_gke.KubeApi(fake.url, token_file=token_file, ca_file=None)
    fake.close()


def watch_for(local_cluster, api, *, cluster=SPEC.cluster_name, log=None) -> autostop_gke.GkeWatch:
    return autostop_gke.GkeWatch(
        api=api, namespace=FACTS.namespace, cluster=cluster, token=local_cluster.token(),
        timeout_s=TIMEOUT_S, head_host="127.0.0.1",
        log=(log if log is not None else []).append,
        dashboard_port=int(local_cluster.dashboard_url.rsplit(":", 1)[1]),
        gcs_port=int(local_cluster.address.rsplit(":", 1)[1]),
    )


def run_checks(watch, seconds: float, *, until_status: str | None = None) -> list:
    states, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        states.append(watch.check())
        if until_status and states[-1] is not None and states[-1].status == until_status:
            break
        time.sleep(0.5)
    return states


@pytest.mark.cluster
def test_the_watcher_suspends_the_idle_raycluster_and_never_a_busy_one(
        kube, local_cluster):
    fake, api = kube
    log: list[str] = []
    watch = watch_for(local_cluster, api, log=log)
    submission = submit_job(local_cluster)  # through the Jobs API, as `ray job submit`
    try:
        busy = [watch.check()]
        while busy[-1].checked_at - busy[0].checked_at < 1.5 * TIMEOUT_S:  # past the timeout
            time.sleep(0.5)
            busy.append(watch.check())
        assert busy[-1].status == idle.BUSY and submission in busy[-1].reason
        assert busy[-1].checked_at - busy[0].checked_at >= TIMEOUT_S  # past the timeout
        assert fake.patches() == []
    finally:
        stop_job(local_cluster, submission)
    states = run_checks(watch, 10 * TIMEOUT_S + 120, until_status=idle.STOPPED)
    assert states[-1].status == idle.STOPPED, log[-5:]
    (patch,) = fake.patches()
    assert patch["body"] == {"spec": {"suspend": True}}
    assert patch["content_type"] == "application/merge-patch+json"
    assert urllib.parse.parse_qs(patch["query"]) == {"fieldManager": ["ray-gcp-autostop"]}
    assert patch["path"] == f"/apis/ray.io/v1/namespaces/{FACTS.namespace}/rayclusters/" \
                            f"{SPEC.cluster_name}"
    stored = fake.objects[(FACTS.namespace, SPEC.cluster_name)]
    assert stored["spec"]["suspend"] is True and crd_errors(stored) == []
    assert "kubectl -n ray patch raycluster ray-gcp --type merge" in log[-1]
    # Suspended: the watcher looks, does not patch again, says so once.
    run_checks(watch, 2.0)
    assert len(fake.patches()) == 1 and watch.store.state.status == "suspended"
    # Resumed by a user: a fresh clock (not stopped again at once).
    fake.objects[(FACTS.namespace, SPEC.cluster_name)]["spec"]["suspend"] = False
    resumed = watch.check()
    assert resumed.status == idle.IDLE and resumed.quiet_for == 0
    # Every request was one the Role allows: get and patch of this RayCluster.
    assert {(r["verb"], r["code"]) for r in fake.requests} == {("get", 200), ("patch", 200)}


def test_the_role_forbids_anything_else_and_the_watcher_counts_that_as_busy(kube):
    """A watcher pointed at another RayCluster (or an API server that refuses) gets 403:
    logged, counted as busy, never patched."""
    fake, api = kube
    log: list[str] = []
    watch = autostop_gke.GkeWatch(api=api, namespace=FACTS.namespace, cluster="someone-else",
                                  token="t", timeout_s=0.5, head_host="127.0.0.1",
                                  log=log.append, dashboard_port=1)
    for _ in range(3):
        state = watch.check()
        time.sleep(0.3)
    assert state.status == idle.ERROR and "HTTP 403" in state.reason
    assert fake.patches() == [] and all("counted as busy" in line for line in log)
    with pytest.raises(autostop_gke.ProbeError, match="HTTP 403"):
        api.suspend(FACTS.namespace, "someone-else")
    assert fake.requests[-1]["code"] == 403


def test_an_unreachable_head_is_suspended_after_the_timeout(kube):
    """No Ray head answers (a crash-looping head Pod bills too): quiet, suspended."""
    fake, api = kube
    log: list[str] = []
    watch = autostop_gke.GkeWatch(api=api, namespace=FACTS.namespace, cluster=SPEC.cluster_name,
                                  token="t", timeout_s=1.5, head_host="127.0.0.1",
                                  log=log.append, dashboard_port=1, gcs_port=1)
    states = run_checks(watch, 30, until_status=idle.STOPPED)
    assert states[0].status == idle.UNREACHABLE and "does not answer" in states[0].reason
    assert states[-1].status == idle.STOPPED and len(fake.patches()) == 1


def test_the_cli_prints_the_watcher_and_refuses_the_timeout_where_it_does_not_apply():
    out = subprocess.run(
        [sys.executable, "-m", "cluster", "render", "--target", "kuberay", "--kind", "autostop",
         "--idle-timeout-minutes", "30"], capture_output=True, text=True, check=True).stdout
    import yaml

    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == [
        "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Deployment"]
    env = docs[-1]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": autostop_gke.ENV_TIMEOUT, "value": "30"} in env
    bad = subprocess.run([sys.executable, "-m", "cluster", "render", "--target", "gcp",
                          "--idle-timeout-minutes", "30"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "--idle-timeout-minutes: applies to" in bad.stderr
