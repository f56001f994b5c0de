"""Scale-up: a burst of demand to N alive workers, Ray's default upscaling vs ours.

Both runs use the same spec except the launch settings: Ray's defaults
(``upscaling_speed`` 1.0, AUTOSCALER_MAX_LAUNCH_BATCH 5 and
AUTOSCALER_MAX_CONCURRENT_LAUNCHES 10) versus ours: the spec's
``upscaling_speed`` that cluster/render.py writes into every config, and the
launch batch/concurrency that render puts on the head's ``ray start``
(``launch_concurrency(spec)``). The
autoscaler is Ray's v1 (what ``ray start --autoscaling-config`` runs, as
LocalCluster does). The driver records when each worker joined; the
autoscaler's monitor.log records when each node was *requested* ("Queue N new
nodes for launch"). The requests are the launch batching, which transfers to
GCP; the joins are fake-node start-up, which does not.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re

from bench.clusters import BenchError, DriverProcess, driver_env, local_cluster, scaleup_spec
from cluster.render import launch_concurrency
from cluster.spec import local_default_spec

NAME = "scaleup"
TITLE = "Scale-up: burst of demand to N alive workers, upscaling_speed 1.0 vs ours"
COMMAND = "python -m bench --only scaleup"
RAY_DEFAULT_SPEED = 1.0
LAUNCH_ENV = ("AUTOSCALER_MAX_LAUNCH_BATCH", "AUTOSCALER_MAX_CONCURRENT_LAUNCHES")


@contextlib.contextmanager
def _launch_settings(values: dict[str, str]):
    """The head inherits these (LocalCluster passes non-RAY_ variables through)."""
    saved = {k: os.environ.get(k) for k in LAUNCH_ENV}
    for k in LAUNCH_ENV:
        os.environ.pop(k, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def launch_env(spec, ours: bool) -> dict[str, str]:
    """Ours: what cluster.render puts on the head's `ray start`; Ray's default: nothing."""
    if not ours:
        return {}
    n = str(launch_concurrency(spec))
    return dict.fromkeys(LAUNCH_ENV, n)


# Every launch decision in monitor.log: v1's autoscaler.py launch_new_node ("Queue N new
# nodes for launch") and v2's NodeProviderAdapter ("Launching N nodes of type T.").
_QUEUE_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}).*"
    r"(?:StandardAutoscaler: Queue (\d+) new nodes for launch|Launching (\d+) nodes of type )"
)


def parse_launch_requests(monitor_log: str) -> list[tuple[float, int]]:
    """(epoch seconds, nodes queued) for every launch decision in the autoscaler's monitor.log."""
    out = []
    for line in monitor_log.splitlines():
        m = _QUEUE_RE.match(line)
        if m:
            ts = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((ts, int(m.group(2) or m.group(3))))
    return out


def requested_steps(requests: list[tuple[float, int]], t0: float) -> list[tuple[float, int]]:
    """Cumulative nodes requested, as (seconds since t0, total) steps starting at (0, 0)."""
    steps, total = [(0.0, 0)], 0
    for ts, n in sorted(requests):
        total += n
        steps.append((round(max(ts - t0, 0.0), 3), total))
    return steps


def launch_rounds(requested: list, joined: list, workers: int | None = None) -> int:
    """How many VM boot times deep the scale-up was.

    Nodes join in the order they were requested. A node requested before any
    node joined is in round 1; a node requested only after others joined is
    one round after the latest of those (it waited for them to boot). On GCP,
    where a VM boots in ~60 s and in parallel, the time to all workers is
    about rounds x boot time. Only the first `workers` requests count: v1 may
    queue extra launches while slow (fake) nodes are still being created, and
    those never serve the burst.
    """
    def times(steps):
        out, prev = [], 0
        for t, n in steps:
            out += [t] * max(n - prev, 0)
            prev = max(prev, n)
        return out

    req, join = times(requested), times(joined)
    if workers is not None:
        req = req[:workers]
    rounds: list[int] = []
    for i, t_req in enumerate(req):
        before = [rounds[j] for j in range(min(i, len(join))) if join[j] < t_req]
        rounds.append(1 + max(before, default=0))
    return max(rounds, default=0)


def _one(ctx, p, speed: float | None, v2: bool = False) -> dict:
    spec = scaleup_spec(p["workers"], speed)
    env = launch_env(spec, ours=speed is None)
    label = (f"autoscaler {'v2' if v2 else 'v1'}, upscaling_speed={spec.upscaling_speed:g} "
             f"{env or 'Ray default launch batching'}")
    ctx.log(f"{label}: starting a cluster with 0 of at most {p['workers']} one-CPU workers")
    with _launch_settings(env), local_cluster(spec, timeout=p["timeout"], log=ctx.log,
                                              autoscaler_v2=v2) as lc:
        # The held tasks die with the driver by design; no "unhandled error" noise for that.
        denv = {**driver_env(lc), "RAY_IGNORE_UNHANDLED_ERRORS": "1"}
        drv = DriverProcess(NAME, {"workers": p["workers"], "timeout": p["timeout"]}, denv)
        try:
            res = drv.result(timeout=p["timeout"] + 60)
        finally:
            drv.kill()
        log_path = lc.temp_dir / "session_latest" / "logs" / "monitor.log"
        try:
            requests = parse_launch_requests(log_path.read_text(errors="replace"))
        except OSError as e:
            raise BenchError(f"cannot read the autoscaler log {log_path}: {e}") from None
    joined = res["timeline"]
    # Only the decisions that served this burst: up to the moment all workers were alive.
    end = res["submitted_epoch"] + (res["timeline"][-1][0] if res["timeline"] else 0.0)
    requested = requested_steps([(t, n) for t, n in requests if t <= end + 0.5],
                                res["submitted_epoch"])
    return {"upscaling_speed": spec.upscaling_speed, "launch_env": env,
            "joined": joined, "requested": requested,
            "seconds_to_all": res["seconds_to_all"], "reached": res["reached"],
            "seconds_to_all_requested": next(
                (t for t, n in requested if n >= p["workers"]), None),
            "launch_rounds": launch_rounds(requested, joined, p["workers"])}


def _pair(ctx, p, v2: bool) -> dict:
    runs = {}
    for key, speed in (("ray_default", RAY_DEFAULT_SPEED), ("ours", None)):
        runs[key] = _one(ctx, p, speed, v2)
        r = runs[key]
        ctx.log(f"{'v2' if v2 else 'v1'} {key}: all {p['workers']} requested after "
                f"{r['seconds_to_all_requested']} s, alive after {r['seconds_to_all']} s, "
                f"{r['launch_rounds']} launch round(s)")
    return runs


def standalone(ctx, p) -> dict:
    ours = local_default_spec().upscaling_speed
    data = {"workers": p["workers"], "ours_upscaling_speed": ours,
            "runs": _pair(ctx, p, v2=False),
            "autoscaler": "v1 (ray start --autoscaling-config)", "update_interval_s": 1}
    if p.get("v2", True):
        # What `ray up` runs on GCP. Kept apart: a v2 failure must not hide the v1 result.
        try:
            data["v2"] = {"runs": _pair(ctx, p, v2=True)}
        except Exception as e:  # noqa: BLE001 - recorded and reported as failed
            ctx.log(f"autoscaler v2 run failed: {type(e).__name__}: {e}")
            data["v2"] = {"error": f"{type(e).__name__}: {e}"}
    return data


def checks(data) -> dict:
    runs = list(data["runs"].values())
    v2 = data.get("v2")
    if v2 is not None:
        if "error" in v2:
            return {"outputs_agree": False, "detail": f"autoscaler v2 run failed: {v2['error']}"}
        runs += list(v2["runs"].values())
    ok = all(r["reached"] for r in runs)
    return {"outputs_agree": ok,
            "detail": f"all {len(runs)} runs reached {data['workers']} alive workers" if ok
            else "a run did not reach all workers before the timeout"}
