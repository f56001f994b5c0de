"""Scale-up: a burst of demand to N alive workers, Ray's default upscaling vs ours.

Both runs use the same spec except the launch settings: Ray's defaults
(``upscaling_speed`` 1.0, AUTOSCALER_MAX_LAUNCH_BATCH 5 and
AUTOSCALER_MAX_CONCURRENT_LAUNCHES 10) versus ours: the spec's
``upscaling_speed`` that cluster/render.py writes into every config, and the
launch batch/concurrency that render puts on the head's ``ray start``
(``launch_concurrency(spec)``). The
autoscaler is Ray's v1 (what ``ray start --autoscaling-config`` runs, as
LocalCluster does). While the driver waits, the orchestrator polls the
autoscaler's report for pending launches, so the timeline shows when each
node was *requested* (the launch batching, which transfers to GCP) as well as
when it *joined* (fake-node start-up, which does not).
"""

from __future__ import annotations

import contextlib
import os
import time

from bench.clusters import DriverProcess, driver_env, local_cluster, scaleup_spec
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


def _one(ctx, p, speed: float | None) -> dict:
    spec = scaleup_spec(p["workers"], speed)
    env = launch_env(spec, ours=speed is None)
    label = f"upscaling_speed={spec.upscaling_speed:g} {env or 'Ray default launch batching'}"
    ctx.log(f"{label}: starting a cluster with 0 of at most {p['workers']} one-CPU workers")
    with _launch_settings(env), local_cluster(spec, timeout=p["timeout"], log=ctx.log) as lc:
        # The held tasks die with the driver by design; no "unhandled error" noise for that.
        env = {**driver_env(lc), "RAY_IGNORE_UNHANDLED_ERRORS": "1"}
        drv = DriverProcess(NAME, {"workers": p["workers"], "timeout": p["timeout"]}, env)
        try:
            t_sub = float(drv.first_line_starting("SUBMITTED", timeout=60).split()[1])
            requested = [(0.0, 0)]
            while drv.proc.poll() is None:
                try:
                    st = lc.status()
                except Exception:  # noqa: BLE001 - a slow dashboard answer; poll again
                    time.sleep(0.3)
                    continue
                total = st.worker_count + st.pending_count
                t = round(time.time() - t_sub, 3)
                if total > requested[-1][1]:
                    requested.append((t, total))
                time.sleep(0.3)
            res = drv.result(timeout=30)
        finally:
            drv.kill()
    joined = res["timeline"]
    # A node is requested no later than it joins (the poll can miss a short pending phase).
    req = _merge_requested(requested, joined)
    return {"upscaling_speed": spec.upscaling_speed, "launch_env": env,
            "joined": joined, "requested": req,
            "seconds_to_all": res["seconds_to_all"], "reached": res["reached"],
            "seconds_to_all_requested": next((t for t, n in req if n >= p["workers"]), None)}


def _merge_requested(requested: list, joined: list) -> list:
    """Step function max(requested, joined) over the union of their change times."""
    def at(steps, t):
        v = 0
        for ts, n in steps:
            if ts <= t:
                v = max(v, n)
        return v

    out = []
    for t in sorted({t for t, _ in requested} | {t for t, _ in joined}):
        n = max(at(requested, t), at(joined, t))
        if not out or n > out[-1][1]:
            out.append((t, n))
    return out


def standalone(ctx, p) -> dict:
    ours = local_default_spec().upscaling_speed
    runs = {}
    for key, speed in (("ray_default", RAY_DEFAULT_SPEED), ("ours", None)):
        runs[key] = _one(ctx, p, speed)
        r = runs[key]
        ctx.log(f"{key}: all {p['workers']} requested after {r['seconds_to_all_requested']} s, "
                f"alive after {r['seconds_to_all']} s")
    return {"workers": p["workers"], "ours_upscaling_speed": ours, "runs": runs,
            "autoscaler": "v1 (ray start --autoscaling-config)",
            "update_interval_s": 1}


def checks(data) -> dict:
    ok = all(r["reached"] for r in data["runs"].values())
    return {"outputs_agree": ok,
            "detail": f"both runs reached {data['workers']} alive workers" if ok
            else "a run did not reach all workers before the timeout"}
