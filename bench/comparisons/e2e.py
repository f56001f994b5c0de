"""`ray up` to `ray down` on fake VMs: the end-to-end harness (tests/e2e, `make e2e`) timed.

One run of ``tests.e2e.harness.Harness``: the config ``python -m cluster render
--target gcp`` produces, run by the real ``ray`` CLI from a provider machine;
the head and the workers are Linux namespace sets created through a fake
Compute Engine API; SSH, rsync, our setup commands (offline, from a prewarmed
uv cache), ``ray start`` with token auth and the head's autoscaler (v2) are
real. Times are seconds from the start of the first ``ray up``:

- head ready: ``ray up`` returned (head created, set up, Ray started);
- all workers joined: a driver on the head asked for ``max_workers`` workers'
  CPUs (``request_resources``) right after ``ray up`` and saw them all alive;
- ``ray down`` done: every instance of the cluster deleted, its machine gone.

Besides: the ``ray down`` alone. (The second ``ray up`` on a live cluster is
timed by ``make e2e``, which prints every phase.)

Ray's own default GCP setup (``ray/autoscaler/gcp/defaults.yaml``) cannot
run side by side: its setup command pip-installs a ``cp37`` nightly wheel of
Ray 3.0.0.dev0 from an S3 URL into the image's system Python, which needs
the internet, cannot install on Python 3.11 (wrong ABI tag) and is refused by
Debian 12's system pip (PEP 668, externally managed). The pip-vs-uv install
itself is compared in ``node_setup``.

Needs root and network namespaces (as ``make e2e``); elsewhere it fails with
the reason, which the report shows.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from bench.clusters import BenchError

NAME = "e2e"
TITLE = "`ray up` to `ray down` on fake VMs (namespaces; only the Google APIs faked)"
COMMAND = "python -m bench --only e2e"

# Runs on the head (ray submit): the demand, then when each worker joined (epoch seconds;
# the machines share this host's clock).
DEMAND = '''
import sys, time, ray
workers, cpus = int(sys.argv[1]), float(sys.argv[2])
ray.init()
ray.autoscaler.sdk.request_resources(num_cpus=int(workers * cpus))
deadline = time.time() + float(sys.argv[3])
seen = set()
while time.time() < deadline and len(seen) < workers:
    for n in ray.nodes():
        if n["Alive"] and n["Resources"].get("CPU", 0) > 0 and n["NodeID"] not in seen:
            seen.add(n["NodeID"])
            print(f"JOINED {n['NodeManagerAddress']} {time.time():.3f}", flush=True)
    time.sleep(0.5)
ray.autoscaler.sdk.request_resources(num_cpus=0)
'''


def _ray(h, *args, name: str, timeout: float) -> str:
    rc, out = h.ray(*args, name=name, timeout=timeout)
    if rc != 0:
        raise BenchError(f"ray {args[0]} failed ({rc}):\n{out[-3000:]}")
    return out


def standalone(ctx, p) -> dict:
    from tests.e2e.harness import Harness, e2e_unavailable
    from tests.e2e.machines import OPERATOR_HOME

    why = e2e_unavailable()
    if why:
        raise BenchError(f"cannot run the end-to-end harness here: {why}")
    h = Harness(Path(tempfile.mkdtemp(prefix="rgb-e2e-", dir="/tmp")), log=ctx.log)
    try:
        h.start()
        cfg = h.cluster_yaml
        worker_type = next(t for t in h.config["available_node_types"].values()
                           if t["max_workers"] > 0)
        workers, cpus = h.config["max_workers"], worker_type["resources"]["CPU"]
        (h.dir / "operator" / "demand.py").write_text(DEMAND)
        ctx.log("ray up ...")
        t0_wall, t0 = time.time(), time.monotonic()
        _ray(h, "up", "-y", cfg, name="ray-up-1", timeout=p["timeout"])
        head_ready = time.monotonic() - t0
        ctx.log(f"head ready after {head_ready:.1f} s; asking for {workers} workers ...")
        out = _ray(h, "submit", cfg, f"{OPERATOR_HOME}/demand.py", "--", str(workers), str(cpus),
                   str(p["timeout"]), name="demand", timeout=p["timeout"] + 120)
        joined = sorted(float(t) - t0_wall for t in re.findall(r"^JOINED \S+ ([\d.]+)", out, re.MULTILINE))
        ctx.log(f"workers joined at {[round(j, 1) for j in joined]} s")
        t = time.monotonic()
        _ray(h, "down", "-y", cfg, name="ray-down", timeout=p["timeout"])
        deadline = time.monotonic() + 300
        while _cluster_instances(h) and time.monotonic() < deadline:
            time.sleep(0.5)
        down = time.monotonic() - t
        remaining = len(_cluster_instances(h))
        calls = {}
        for c in h.cloud.calls:
            calls[c.method] = calls.get(c.method, 0) + 1
        left = h.stop()
        return {
            "workers": workers, "worker_cpus": cpus, "head_ready": head_ready,
            "workers_joined": joined, "all_joined": joined[-1] if joined else None,
            "down": down, "down_done": time.monotonic() - t0,
            "instances_after_down": remaining, "leftovers": left, "api_calls": calls,
        }
    finally:
        h.stop()


def _cluster_instances(h) -> list[str]:
    with h.cloud.lock:
        return [n for n, i in h.cloud.instances.items()
                if i.get("labels", {}).get("ray-cluster-name") == h.config["cluster_name"]]


def checks(data) -> dict:
    ok = (len(data["workers_joined"]) == data["workers"] and data["instances_after_down"] == 0
          and not data["leftovers"])
    detail = (f"{len(data['workers_joined'])} of {data['workers']} workers joined; "
              f"{data['instances_after_down']} instances left after ray down; "
              f"{len(data['leftovers'])} traces left on the host")
    return {"outputs_agree": ok, "detail": detail}
