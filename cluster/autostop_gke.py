"""Autostop on GKE: a watcher Pod suspends the idle RayCluster.

The Deployment ``<cluster>-autostop`` in the Ray namespace (rendered by
``cluster/kuberay_autostop.py``) runs ``python -m cluster.autostop gke-watch``
in the pinned Ray image, with these files from a ConfigMap. Every interval:

1. GET the RayCluster. Already ``spec.suspend: true``: nothing to watch (the
   clock starts again when someone resumes it);
2. the head's Service ``<cluster>-head-svc``: the dashboard (Jobs and state
   APIs) and the GCS, with the cluster's token (from its Secret), read by
   ``cluster.idle_probe.gather``; ``cluster.idle`` decides, as on VMs;
3. quiet for the whole timeout: a JSON merge PATCH ``{"spec": {"suspend":
   true}}`` of that RayCluster (field manager ``ray-gcp-autostop``). KubeRay
   1.7 then deletes the head and worker Pods (``reconcilePods``: "if RayCluster
   is suspending, delete all pods"); the cluster autoscaler removes the nodes
   they leave empty. RayJobs and their clusters are never touched.

Its ServiceAccount may only ``get`` and ``patch`` that one RayCluster
(``resourceNames``). Resume: ``kubectl -n ray patch raycluster <cluster>
--type merge -p '{"spec":{"suspend":false}}'`` (the stack output
``startCommand``).

Standard library only (plus Ray for the GCS query): the API server is called
with the Pod's service-account token and the cluster CA, both mounted by
Kubernetes.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster import idle
from cluster.autostop import (
    CHECK_INTERVAL_S,
    MemoryState,
    StopFailed,
    Watcher,
    check_timeout_minutes,
    journal_log,
)
from cluster.idle_probe import HeadUnreachable, ProbeError, gather

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
FIELD_MANAGER = "ray-gcp-autostop"
RAYCLUSTER_API = "apis/ray.io/v1"
DASHBOARD_PORT = 8265
GCS_PORT = 6379
# The Deployment's environment (cluster/kuberay_autostop.py sets every one).
ENV_TIMEOUT = "RAY_GCP_IDLE_TIMEOUT_MINUTES"
ENV_RAYCLUSTER = "RAY_GCP_RAYCLUSTER"
ENV_NAMESPACE = "RAY_GCP_NAMESPACE"
ENV_TOKEN = "RAY_AUTH_TOKEN"
# Overridable so tests can point it at a fake API server on loopback.
ENV_API_SERVER = "RAY_GCP_KUBE_API"
ENV_HEAD_HOST = "RAY_GCP_HEAD_HOST"

SUSPEND_PATCH = {"spec": {"suspend": True}}


def head_service(cluster: str) -> str:
    """KubeRay's head Service name (utils.GenerateHeadServiceName, v1.7.0)."""
    return f"{cluster}-head-svc"


def resume_command(cluster: str, namespace: str) -> str:
    return (
        f"kubectl -n {namespace} patch raycluster {cluster} --type merge "
        """-p '{"spec":{"suspend":false}}'"""
    )


class KubeApi:
    """GET and merge-PATCH of one RayCluster, as the Pod's service account."""

    def __init__(
        self,
        server: str,
        *,
        token_file: Path = SA_DIR / "token",
        ca_file: Path | None = SA_DIR / "ca.crt",
        timeout: float = 20.0,
    ):
        self.server = server.rstrip("/")
        self.token_file = token_file
        self.timeout = timeout
        context = None
        if self.server.startswith("https://"):
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

    @classmethod
    def in_cluster(cls) -> KubeApi:
        override = os.environ.get(ENV_API_SERVER)
        if override:
            return cls(override, ca_file=None)
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}")

    def _path(self, namespace: str, name: str) -> str:
        return f"/{RAYCLUSTER_API}/namespaces/{namespace}/rayclusters/{name}"

    def _call(self, method: str, path: str, body: bytes | None = None,
              content_type: str | None = None) -> dict[str, Any]:
        # The projected token is rotated by the kubelet: read it for every call.
        headers = {"Authorization": f"Bearer {self.token_file.read_text().strip()}",
                   "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.server + path, data=body, headers=headers,
                                         method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise ProbeError(f"Kubernetes API {method} {path}: HTTP {exc.code} {detail}") from None
        except (OSError, ValueError) as exc:
            raise ProbeError(f"Kubernetes API {method} {path}: {exc}") from None

    def get_raycluster(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call("GET", self._path(namespace, name))

    def suspend(self, namespace: str, name: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"fieldManager": FIELD_MANAGER})
        return self._call(
            "PATCH",
            f"{self._path(namespace, name)}?{query}",
            json.dumps(SUSPEND_PATCH).encode(),
            "application/merge-patch+json",
        )


def is_suspended(raycluster: dict[str, Any]) -> bool:
    return bool((raycluster.get("spec") or {}).get("suspend"))


class GkeWatch:
    """One RayCluster's watcher: GET it, probe its head, suspend it when due."""

    def __init__(
        self,
        *,
        api: KubeApi,
        namespace: str,
        cluster: str,
        token: str,
        timeout_s: float,
        head_host: str | None = None,
        log: Callable[[str], None] = journal_log,
        clock: Callable[[], float] = time.time,
        dashboard_port: int = DASHBOARD_PORT,
        gcs_port: int = GCS_PORT,
    ):
        self.api = api
        self.namespace = namespace
        self.cluster = cluster
        self.token = token
        self.log = log
        self.clock = clock
        host = head_host or f"{head_service(cluster)}.{namespace}.svc.cluster.local"
        self.dashboard_url = f"http://{host}:{dashboard_port}"
        self.gcs_address = f"{host}:{gcs_port}"
        self.store = MemoryState()
        self.watcher = Watcher(
            timeout_s=timeout_s,
            probe=self.probe,
            stop=self.stop,
            store=self.store,
            log=log,
            clock=clock,
            epoch=f"pod-{os.getpid()}",
        )

    def probe(self) -> idle.ClusterSnapshot:
        try:
            return gather(self.dashboard_url, self.token, gcs_address=self.gcs_address,
                          now=self.clock())
        except HeadUnreachable as exc:
            return idle.ClusterSnapshot(self.clock(), head=idle.HEAD_UNREACHABLE,
                                        head_detail=str(exc))

    def stop(self, state: idle.WatchState) -> str:
        try:
            answer = self.api.suspend(self.namespace, self.cluster)
        except ProbeError as exc:
            raise StopFailed(str(exc)) from None
        if not is_suspended(answer):
            raise StopFailed("the API server accepted the PATCH but spec.suspend is not true")
        return (f"RayCluster {self.namespace}/{self.cluster} suspended (spec.suspend: true); "
                f"KubeRay deletes its Pods. Resume: {resume_command(self.cluster, self.namespace)}")

    def check(self) -> idle.WatchState | None:
        """One check; None while the RayCluster is suspended (nothing to watch)."""
        try:
            current = self.api.get_raycluster(self.namespace, self.cluster)
        except ProbeError as exc:
            self.log(f"error: {exc}; counted as busy")
            self.store.save(idle.WatchState(idle.ERROR, str(exc), self.clock(),
                                            self.watcher.timeout_s, None, self.watcher.epoch))
            return self.store.state
        if is_suspended(current):
            if self.store.state is None or self.store.state.status != "suspended":
                self.log(f"suspended: RayCluster {self.namespace}/{self.cluster} is suspended; "
                         f"resume: {resume_command(self.cluster, self.namespace)}")
            # Whoever resumes it gets a fresh clock.
            self.store.save(idle.WatchState("suspended", "spec.suspend is true", self.clock(),
                                            self.watcher.timeout_s, None, self.watcher.epoch))
            return None
        if self.store.state is not None and self.store.state.status == "suspended":
            self.store.state = None  # resumed since the last check
        return self.watcher.check()


def watch_from_env(*, interval: float = CHECK_INTERVAL_S, once: bool = False) -> int:
    """The Pod's main loop: settings from the environment, a check every interval."""
    try:
        minutes = check_timeout_minutes(os.environ[ENV_TIMEOUT], field=ENV_TIMEOUT)
        cluster, namespace = os.environ[ENV_RAYCLUSTER], os.environ[ENV_NAMESPACE]
        token = os.environ[ENV_TOKEN].strip()
    except (KeyError, ValueError) as exc:
        print(f"ray-gcp-autostop: bad environment: {exc}", file=sys.stderr)
        return 2
    if minutes == 0:
        journal_log("autostop is off (idleTimeoutMinutes = 0)")
        return 0
    watch = GkeWatch(api=KubeApi.in_cluster(), namespace=namespace, cluster=cluster, token=token,
                     timeout_s=minutes * 60, head_host=os.environ.get(ENV_HEAD_HOST))
    journal_log(f"watching RayCluster {namespace}/{cluster}: suspend after {minutes} min idle")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    while True:
        watch.check()
        if once or stopping.wait(interval):
            return 0
