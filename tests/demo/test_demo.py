"""`make demo` end to end, small: one spec rendered twice, the offline
`pulumi up` listing, a local autoscaling cluster, annotate.py scaling it out
to max_workers, the idle workers' scale-down, clean stop.

The scale-down and the demo's status lines are checked against Ray's own view:
a sampler reads GCS's node table (what ``ray.nodes()`` reads) through the
cluster's address for as long as the cluster runs."""

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import yaml

from cluster.local import LOOPBACK_ENV, MARKER_ENV
from cluster.render import example_gcp_facts, render_gcp, to_yaml
from cluster.spec import ClusterSpec
from tests.processes import head_pgid, kill_leftovers, process_tree, survivors

ROOT = Path(__file__).resolve().parents[2]
# The demo's status line (demo/__main__.py: ScalingWatcher).
STATUS_LINE = re.compile(r"\[cluster \+\s*[\d.]+s\] (\d+) worker node\(s\) alive, (\d+) launching")
# GCS's node table every 50 ms as JSON lines, until killed: what ray.nodes()
# reads (GlobalState.node_table), without joining the cluster as a driver.
# GCS stops answering as soon as the cluster is stopped, so the last line is
# GCS's view just before the stop.
GCS_SAMPLER = textwrap.dedent(
    """
    import json, sys, time
    from ray._private.state import GlobalState
    from ray._raylet import GcsClientOptions
    from ray.core.generated.common_pb2 import NodeDeathInfo

    state = GlobalState()
    state._initialize_global_state(GcsClientOptions.create(
        sys.argv[1], None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=False))
    while True:
        nodes = state.node_table()
        print(json.dumps([
            {"id": n["NodeID"], "alive": n["Alive"], "cpus": n["Resources"].get("CPU", 0),
             "death": NodeDeathInfo.Reason.Name(n["DeathReason"]),
             "message": n["DeathReasonMessage"]}
            for n in nodes]), flush=True)
        time.sleep(0.05)
    """
)


class ClusterWatcher(threading.Thread):
    """While the demo runs: records its cluster's process tree (head group/session
    and all descendants, tests/processes.py) every half second, and starts the
    GCS sampler as soon as the cluster's address and token exist."""

    def __init__(self, state_dir: Path, gcs_log: Path):
        super().__init__(daemon=True)
        self.state_dir = state_dir
        self.gcs_log = gcs_log
        self.seen: dict[int, tuple[int, str]] = {}
        self.groups: set[int] = set()
        self.sampler: subprocess.Popen | None = None
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.5):
            try:
                pgid = head_pgid(self.state_dir)
                ports = json.loads((self.state_dir / "state.json").read_text())["ports"]
            except (OSError, ValueError, KeyError, TypeError):  # not started, or stopped
                continue
            self.groups.add(pgid)
            self.seen.update(process_tree(pgid))
            if self.sampler is None:
                self.start_sampler(f"127.0.0.1:{ports['gcs']}")

    def start_sampler(self, address: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(LOOPBACK_ENV, RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN_PATH=str(self.state_dir / "auth_token"))
        with open(self.gcs_log, "w") as out:
            self.sampler = subprocess.Popen(
                [sys.executable, "-c", GCS_SAMPLER, address],
                env=env, stdout=out, stderr=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        self.done.set()
        self.join()
        if self.sampler is not None:  # our own child, by its pid
            self.sampler.kill()
            self.sampler.wait(timeout=30)

    def gcs_views(self) -> list[list[dict]]:
        views = []
        for line in self.gcs_log.read_text().splitlines():
            try:
                views.append(json.loads(line))
            except ValueError:  # a line cut short by the kill
                pass
        return views


@pytest.mark.cluster
def test_demo_runs_the_whole_flow_and_leaves_nothing_running(tmp_path, machine_to_myself):
    out = tmp_path / "demo"
    state_dir = (out / "cluster-state").resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    watcher = ClusterWatcher(state_dir, tmp_path / "gcs.jsonl")
    watcher.start()
    try:
        # The whole flow, step 6 (waiting for the idle workers to go) included.
        # 24 images in batches of 4: 6 one-CPU tasks, more than max_workers (3)
        # workers of 2 CPUs hold, so the autoscaler launches max_workers at once.
        proc = subprocess.run(
            [sys.executable, "-m", "demo", "--out", str(out), "--count", "24",
             "--batch-size", "4"],
            check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
    finally:
        watcher.stop()
    left = survivors(watcher.seen)
    # Whatever is left of the cluster, late children of survivors included, goes
    # now, so that a leak fails this test only and not the next ones too.
    cleaned = kill_leftovers(watcher.seen, watcher.groups, (MARKER_ENV, str(state_dir)))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log

    # 1. The local config, and the GCP config of the default stack (not the local spec).
    local = yaml.safe_load((out / "local-cluster.yaml").read_text())
    gcp = yaml.safe_load((out / "gcp-cluster.yaml").read_text())
    # (fake_multinode insists on naming the head type ray.head.default)
    def workers(cfg):
        return sorted(n for n in cfg["available_node_types"] if n != cfg["head_node_type"])

    assert workers(local) == workers(gcp) == ["cpu-worker"]
    assert gcp["provider"]["type"] == "external"
    assert gcp == yaml.safe_load(to_yaml(render_gcp(ClusterSpec(), example_gcp_facts())))
    assert (gcp["cluster_name"], gcp["max_workers"]) == ("ray-gcp", 6)
    # 2. The offline `pulumi up` listing names the provider VM and the secrets.
    listing = (out / "pulumi-resources.txt").read_text()
    assert "gcp:compute/instance:Instance" in listing
    assert "gcp:secretmanager/secret:Secret" in listing
    # 4/5. The job ran on autoscaled workers; the sample's 4 planted failures are reported.
    summary = json.loads((out / "annotated" / "_summary.json").read_text())
    assert (summary["processed"], summary["failed"]) == (20, 4), summary
    # The head has no CPUs, so the job ran only if the autoscaler added workers.
    peak = int(re.search(r"peak worker nodes: (\d+)", log).group(1))
    assert peak >= 1, log
    # Every status line counts each node once: a node that is up is alive, not
    # also launching, so alive + launching never exceeds max_workers ...
    max_workers = local["max_workers"]
    lines = [(int(a), int(n)) for a, n in STATUS_LINE.findall(proc.stderr)]
    assert lines, log
    over = [line for line in lines if sum(line) > max_workers]
    assert not over, f"alive + launching above max_workers {max_workers}: {over}\n{log}"
    # ... though the job asked for more than max_workers hold: all were launched.
    assert max(sum(line) for line in lines) == max_workers, lines
    # 6. The autoscaler removed the idle workers, then the demo stopped the cluster:
    # its last status line before the stop shows none alive and none launching ...
    assert "all worker nodes removed by the autoscaler" in log, log
    assert lines[-1] == (0, 0), f"last status line before the stop: {lines[-1]}\n{log}"
    # ... and Ray agrees: in GCS's last answer before the cluster went, no worker
    # node GCS ever listed is alive. (Not the death reason: the autoscaler's drain
    # records "Terminated by autoscaler.", but when the drain RPC times out on a
    # busy machine, the node's raylet records the autoscaler's SIGTERM as the
    # stop's own would be.)
    views = watcher.gcs_views()
    assert views, "GCS never answered the sampler"
    ever = {n["id"] for view in views for n in view if n["cpus"]}
    assert len(ever) >= 1, views[-1]
    last = {n["id"]: n for n in views[-1]}
    alive_at_stop = [last.get(i, {"id": i, "in GCS's last answer": False}) for i in sorted(ever)
                     if last.get(i, {}).get("alive", True)]
    assert not alive_at_stop, (
        f"worker nodes alive in GCS when the cluster was stopped: {alive_at_stop}\n{log}")
    assert "cluster stopped" in log
    assert not (out / "cluster-state" / "state.json").exists()
    # Nothing of the cluster survives: every process recorded while it ran is gone,
    # and the record covered the fake worker nodes, not only the head.
    assert not left and not cleaned, (
        f"processes of the demo's cluster survived: recorded {left}; killed now with "
        f"what else was left of it: {cleaned}")
    raylets = [cmd for _, cmd in watcher.seen.values() if "/raylet/raylet " in cmd]
    assert len(raylets) >= 2, raylets  # the head's and at least one worker's
