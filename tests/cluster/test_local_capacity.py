"""Capacity on the local fake cluster, driven by Ray's real autoscalers.

* zone fallback: the first local zone refuses every node with
  ZONE_RESOURCE_POOL_EXHAUSTED; autoscaler v1 and v2 still reach max_workers,
  all in the next zone (cluster/local_provider.py uses the same
  cluster.zones.ZonePlacement as the GCP provider);
* repeated scale-up/scale-down cycles never show more live workers in GCS
  than max_workers (the v1 over-launch race, cluster/local_provider.py);
* ``LocalCluster.status()`` and ``python -m cluster local status`` show
  pending launches under autoscaler v1 and v2 (the provider's launch ledger).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from cluster.local import LocalCluster
from cluster.local_provider import ZONE_LABEL
from cluster.spec import ClusterSpec, NodeTypeSpec
from tests.cluster.test_local import _run_driver

pytestmark = pytest.mark.cluster

# Samples GCS (ray.nodes(), one GetAllNodeInfo call) every 50 ms through each
# phase of each cycle; a worker is a node with CPU (the head has CPU 0).
CYCLE_DRIVER = textwrap.dedent(
    """
    import json, sys, time, ray
    from ray.autoscaler.sdk import request_resources

    max_workers, cycles, cpus_per_worker = {max_workers}, {cycles}, {cpus}
    ray.init()

    def live_workers():
        return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)

    def sample_until(done, timeout, hold=0.0):
        peak, t0, reached = 0, time.monotonic(), None
        while time.monotonic() - t0 < timeout:
            n = live_workers()
            peak = max(peak, n)
            if reached is None and done(n):
                reached = time.monotonic()
            if reached is not None and time.monotonic() - reached >= hold:
                return peak
            time.sleep(0.05)
        raise SystemExit(f"timed out after {{timeout}}s with {{n}} live workers")

    for cycle in range(cycles):
        # Twice what max_workers can hold: the autoscaler is pushed to the limit.
        request_resources(num_cpus=2 * max_workers * cpus_per_worker)
        up = sample_until(lambda n: n >= max_workers, 180, hold=5.0)
        request_resources(num_cpus=0)
        down = sample_until(lambda n: n == 0, 180)
        print("CYCLE", json.dumps({{"cycle": cycle, "peak_up": up, "peak_down": down}}), flush=True)
    """
)


def _driver_env(lc: LocalCluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(lc.driver_env())
    return env


def test_scale_cycles_never_exceed_max_workers(local_cluster, driver_env):
    """v1 (the session cluster): 3 cycles 0 -> max -> 0, GCS sampled every 50 ms,
    and no surplus removal (`max_workers_per_type`) in the monitor log."""
    max_workers = local_cluster.spec.max_workers
    cpus = int(local_cluster.spec.worker_types["cpu-worker"].ray_resources()["CPU"])
    local_cluster.wait_for_workers(0, timeout=120, exact=True)
    monitor_log = next(local_cluster.temp_dir.glob("session_latest/logs/monitor.log"))
    log_start = monitor_log.stat().st_size
    code = CYCLE_DRIVER.format(max_workers=max_workers, cycles=3, cpus=cpus)
    out = _run_driver(code, driver_env, timeout=600)
    cycles = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("CYCLE")]
    assert len(cycles) == 3, out
    for c in cycles:
        assert c["peak_up"] == max_workers, cycles  # reached, and never more
        assert c["peak_down"] <= max_workers, cycles
    # v1's own admission of an over-launch, even one too short for the sampler.
    with monitor_log.open() as f:
        f.seek(log_start)
        assert "(max_workers_per_type)" not in f.read()


ZONES_DRIVER = textwrap.dedent(
    f"""
    import json, ray
    ray.init()
    print("ZONES", json.dumps(sorted(
        n["Labels"].get("{ZONE_LABEL}", "?")
        for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0
    )))
    """
)


@pytest.mark.parametrize("v2", [False, True], ids=["autoscaler-v1", "autoscaler-v2"])
def test_a_full_first_zone_still_reaches_max_workers(tmp_path, v2):
    """Own short-lived cluster: local-a answers ZONE_RESOURCE_POOL_EXHAUSTED to every create."""
    spec = ClusterSpec(
        cluster_name="ray-zones",
        node_types={
            "head": NodeTypeSpec(machine_type="n2-standard-2", resources={"CPU": 0}),
            "cpu-worker": NodeTypeSpec(machine_type="n2-standard-2", max_workers=2),
        },
        max_workers=2,
    )
    lc = LocalCluster(tmp_path / "state", spec=spec, autoscaler_v2=v2, full_zones=("local-a",))
    lc.up()
    try:
        env = _driver_env(lc)
        _run_driver("import ray; ray.init(); ray.autoscaler.sdk.request_resources(num_cpus=4)", env)
        seen_pending, cli_pending = 0, ""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            st = lc.status()
            seen_pending = max(seen_pending, st.pending.get("cpu-worker", 0))
            if v2 and not cli_pending:
                cli = subprocess.run(
                    [sys.executable, "-m", "cluster", "local", "status", "--state-dir", str(lc.state_dir)],
                    capture_output=True, text=True, timeout=120, check=True,
                ).stdout
                if "pending/launching: cpu-worker:" in cli:
                    cli_pending = cli
            if st.worker_count == 2:
                break
            time.sleep(0.2)
        assert lc.status().worker_count == 2
        zones = json.loads(_run_driver(ZONES_DRIVER, env).split("ZONES ", 1)[1])
        assert zones == ["local-b", "local-b"]
        log = next(lc.temp_dir.glob("session_latest/logs/monitor.log")).read_text()
        assert "zone local-a: ZONE_RESOURCE_POOL_EXHAUSTED; skipping it for 300s" in log
        if v2:
            assert "autoscaler v2" in log
        # The launches in flight were visible (the provider's launch ledger, v1 and v2).
        assert seen_pending >= 1
        if v2:
            assert "pending/launching: cpu-worker:" in cli_pending, cli_pending
    finally:
        lc.down()
    assert lc.owned_pids() == []
