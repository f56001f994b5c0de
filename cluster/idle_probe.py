"""Read a live Ray cluster's state into a ``cluster.idle.ClusterSnapshot``.

Through the head's own APIs only, the same on every platform (the caller says
where the head is):

* the dashboard's HTTP APIs (token auth: ``Authorization: Bearer``): the Jobs
  API (``/api/jobs/``: submitted jobs and connected drivers), the state API
  (``/api/v0/actors``, ``/api/v0/tasks``, ``/api/v0/placement_groups``, only
  what is not dead or finished) and autoscaler v1's report
  (``/api/cluster_status``: its ``request_resources()``);
* the GCS (``ray.autoscaler.v2.sdk.get_cluster_status``, gRPC on the GCS port):
  the pending resource demand the autoscaler acts on, which the GCS keeps for
  either autoscaler version.

It never calls ``ray.init``: a probe that connected as a driver would keep the
cluster busy itself.

Failures are sorted so the watcher can act on them (``cluster/idle.py``):

* :class:`HeadUnreachable`: the dashboard does not answer its first request
  (connection refused or reset, timeout, no route, an HTTP 5xx of a head whose
  GCS is gone). The watcher counts that as quiet, with this reason;
* :class:`ProbeError`: it answered, but not clearly (401/403: a token that does
  not match, 404, a body that is not what Ray sends, a state API partial
  failure, a GCS call that failed, and any failure after a first answer: a head
  that showed a running job and then fails is not "unreachable"). Busy.

The GCS query runs in a short child process (``python -m cluster.idle_probe
gcs-demand``) that gets the token in its environment: Ray's client keeps the
token of the first cluster it talks to for the life of the process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from cluster.idle import (
    DONE_TASK_STATES,
    HEAD_UP,
    Actor,
    ClusterSnapshot,
    Demand,
    Job,
    PlacementGroup,
    Task,
    assess,
)

# The state API's own ceiling (RAY_MAX_LIMIT_FROM_API_SERVER); one live item is enough.
STATE_LIMIT = 10000
DEFAULT_TIMEOUT_S = 20.0


class ProbeError(RuntimeError):
    """The head answered, but the state could not be read clearly (counts as busy)."""


class HeadUnreachable(RuntimeError):
    """The head does not answer (counts as quiet)."""


def _state_path(resource: str, *not_states: str) -> str:
    query: list[tuple[str, str]] = [("limit", str(STATE_LIMIT)), ("detail", "false")]
    for state in not_states:
        query += [("filter_keys", "state"), ("filter_predicates", "!="), ("filter_values", state)]
    return f"/api/v0/{resource}?{urllib.parse.urlencode(query)}"


class DashboardClient:
    """GET JSON from one Ray dashboard with the cluster's token, sorting failures."""

    def __init__(self, url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT_S):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.answered = False  # once it has answered, a failure is not "unreachable"
        # Never through a proxy: the head is on the VPC, the loopback or in-cluster.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        where = f"{self.url}{path.split('?', 1)[0]}"
        unreachable = ProbeError if self.answered else HeadUnreachable
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise unreachable(f"the Ray dashboard answers HTTP {exc.code} ({where})") from None
            hint = " (does the token match the cluster's?)" if exc.code in (401, 403) else ""
            raise ProbeError(f"HTTP {exc.code} from {where}{hint}") from None
        except OSError as exc:  # URLError, timeouts, refused/reset connections
            reason = getattr(exc, "reason", exc)
            raise unreachable(f"the Ray dashboard at {self.url} does not answer: {reason}") from None
        self.answered = True
        try:
            return json.loads(body)
        except ValueError:
            raise ProbeError(f"{where} did not return JSON") from None

    def state(self, resource: str, *not_states: str) -> list[dict[str, Any]]:
        doc = self.get(_state_path(resource, *not_states))
        try:
            result = doc["data"]["result"]
            items = result["result"]
        except (KeyError, TypeError):
            raise ProbeError(f"/api/v0/{resource}: not a state API answer") from None
        if result.get("partial_failure_warning"):
            raise ProbeError(
                f"/api/v0/{resource}: partial failure: {result['partial_failure_warning']}"
            )
        if not isinstance(items, list):
            raise ProbeError(f"/api/v0/{resource}: no result list")
        return items


def _seconds(ms: Any) -> float | None:
    return ms / 1000.0 if isinstance(ms, (int, float)) and ms > 0 else None


def read_jobs(client: DashboardClient) -> tuple[Job, ...]:
    doc = client.get("/api/jobs/")
    if not isinstance(doc, list):
        raise ProbeError("/api/jobs/: not a list of jobs")
    jobs = []
    for j in doc:
        try:
            kind = j["type"]
            jobs.append(
                Job(
                    id=j.get("submission_id") or j.get("job_id") or "?",
                    kind=kind,
                    status=j["status"],
                    entrypoint=(j.get("entrypoint") or "")[:200],
                    start_time=_seconds(j.get("start_time")),
                    end_time=_seconds(j.get("end_time")),
                )
            )
        except (KeyError, TypeError):
            raise ProbeError("/api/jobs/: a job without type or status") from None
    return tuple(jobs)


def read_actors(client: DashboardClient) -> tuple[Actor, ...]:
    return tuple(
        Actor(
            id=a.get("actor_id", "?"),
            class_name=a.get("class_name") or "?",
            state=a.get("state", "?"),
            namespace=a.get("ray_namespace") or "",
            name=a.get("name") or "",
        )
        for a in client.state("actors", "DEAD")
    )


def read_tasks(client: DashboardClient) -> tuple[Task, ...]:
    return tuple(
        Task(
            id=t.get("task_id", "?"),
            name=t.get("name") or t.get("func_or_class_name") or "?",
            state=t.get("state", "?"),
            type=t.get("type", "?"),
        )
        for t in client.state("tasks", *DONE_TASK_STATES)
    )


def read_placement_groups(client: DashboardClient) -> tuple[PlacementGroup, ...]:
    return tuple(
        PlacementGroup(
            id=p.get("placement_group_id", "?"), state=p.get("state", "?"), name=p.get("name") or ""
        )
        for p in client.state("placement_groups", "REMOVED")
    )


def _shape(bundle: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in dict(bundle).items()}


def read_v1_requests(client: DashboardClient) -> tuple[Demand, ...]:
    """Autoscaler v1's own report (absent with v2): its standing request_resources()."""
    doc = client.get("/api/cluster_status")
    status = ((doc or {}).get("data") or {}).get("clusterStatus") or {}
    report = status.get("loadMetricsReport") or {}
    out = []
    for item in report.get("requestDemand") or []:
        shape, count = item if isinstance(item, list) and len(item) == 2 else (item, 1)
        out.append(Demand("request_resources", _shape(shape), int(count)))
    return tuple(out)


def _gcs_demand(gcs_address: str, timeout: float) -> list[dict[str, Any]]:
    """In the child process: the GCS's demand as JSON-able dicts."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    demands = get_cluster_status(gcs_address, timeout=int(max(1, timeout))).resource_demands
    out = []
    for source, items in (
        ("tasks/actors", demands.ray_task_actor_demand),
        ("placement groups", demands.placement_group_demand),
        ("request_resources", demands.cluster_constraint_demand),
    ):
        for d in items:
            for b in d.bundles_by_count:
                out.append({"source": source, "shape": _shape(b.bundle), "count": int(b.count)})
    return out


def read_gcs_demand(
    gcs_address: str, token: str, timeout: float = DEFAULT_TIMEOUT_S
) -> tuple[Demand, ...]:
    """The GCS's pending demand: tasks/actors, placement groups, request_resources (v2).

    In a short child process: Ray's GCS client takes the token from the process
    environment and keeps it for the life of the process, so the caller (the
    watcher, a test) never holds a cluster's token in its own Ray state.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"})
    argv = [sys.executable, "-m", "cluster.idle_probe", "gcs-demand", gcs_address,
            "--timeout", str(timeout)]
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=timeout + 60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProbeError(f"the GCS demand query did not finish: {exc}") from None
    if proc.returncode != 0:
        detail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        raise ProbeError(f"the GCS at {gcs_address} did not report demand: {detail[0][-300:]}")
    try:
        return tuple(Demand(**d) for d in json.loads(proc.stdout.strip().splitlines()[-1]))
    except (ValueError, TypeError, IndexError):
        raise ProbeError("the GCS demand query printed no JSON list") from None


def gather(
    dashboard_url: str,
    token: str,
    *,
    gcs_address: str | None = None,
    logins: tuple[str, ...] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    now: float | None = None,
) -> ClusterSnapshot:
    """A snapshot of the cluster behind ``dashboard_url`` (jobs first: the cheapest
    way to learn that the head is gone). Raises HeadUnreachable or ProbeError."""
    client = DashboardClient(dashboard_url, token, timeout=timeout)
    taken = time.time() if now is None else now
    jobs = read_jobs(client)
    actors = read_actors(client)
    tasks = read_tasks(client)
    pgs = read_placement_groups(client)
    demand = read_v1_requests(client)
    if gcs_address:
        demand += read_gcs_demand(gcs_address, token, timeout)
    return ClusterSnapshot(
        taken_at=taken,
        head=HEAD_UP,
        head_detail=f"read from {client.url}",
        jobs=jobs,
        actors=actors,
        tasks=tasks,
        placement_groups=pgs,
        demand=demand,
        logins=logins,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["gcs-demand"]:  # the child of read_gcs_demand
        q = argparse.ArgumentParser(prog="python -m cluster.idle_probe gcs-demand")
        q.add_argument("address")
        q.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
        args = q.parse_args(argv[1:])
        print(json.dumps(_gcs_demand(args.address, args.timeout)))
        return 0
    p = argparse.ArgumentParser(
        prog="python -m cluster.idle_probe",
        description="Print a snapshot of a Ray cluster's activity and what cluster/idle.py "
        "makes of it (JSON). Exit 0 when read, 3 when the head does not answer, 2 when the "
        "state could not be read clearly.",
    )
    p.add_argument("--dashboard", required=True, help="the head's dashboard URL")
    p.add_argument("--token-file", required=True, help="file holding the cluster's Ray token")
    p.add_argument("--gcs", default=None, help="the head's GCS address host:port (demand)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    args = p.parse_args(argv)
    with open(args.token_file, encoding="utf-8") as f:
        token = f.read().strip()
    try:
        snapshot = gather(args.dashboard, token, gcs_address=args.gcs, timeout=args.timeout)
    except HeadUnreachable as exc:
        print(json.dumps({"unreachable": str(exc)}))
        return 3
    except ProbeError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    a = assess(snapshot)
    print(
        json.dumps(
            {
                "snapshot": snapshot.to_json(),
                "assessment": {
                    "status": a.status,
                    "reason": a.reason,
                    "rules": sorted(a.rules),
                    "last_active_at": a.last_active_at,
                },
            },
            sort_keys=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
