"""`make demo` end to end, small: one spec rendered twice, the offline
`pulumi up` listing, a local autoscaling cluster, annotate.py, the idle
workers' scale-down, clean stop."""

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from cluster.render import example_gcp_facts, render_gcp, to_yaml
from cluster.spec import ClusterSpec
from tests.processes import head_pgid, process_tree, survivors

ROOT = Path(__file__).resolve().parents[2]


class ProcessRecorder(threading.Thread):
    """Records the demo cluster's process tree (head group/session and all
    descendants, tests/processes.py) every half second while the demo runs."""

    def __init__(self, state_dir: Path):
        super().__init__(daemon=True)
        self.state_dir = state_dir
        self.seen: dict[int, tuple[int, str]] = {}
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.5):
            try:
                pgid = head_pgid(self.state_dir)
            except (OSError, ValueError, KeyError, TypeError):  # not started, or stopped
                continue
            self.seen.update(process_tree(pgid))


@pytest.mark.cluster
def test_demo_runs_the_whole_flow_and_leaves_nothing_running(tmp_path, machine_to_myself):
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    recorder = ProcessRecorder(out / "cluster-state")
    recorder.start()
    try:
        # The whole flow, step 6 (waiting for the idle workers to go) included.
        proc = subprocess.run(
            [sys.executable, "-m", "demo", "--out", str(out), "--count", "24"],
            check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=500,
        )
    finally:
        recorder.done.set()
        recorder.join()
    left = survivors(recorder.seen)
    for pid in left:  # do not leak them into the rest of the session
        try:
            os.kill(pid, 9)
        except OSError:
            pass
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
    assert "worker node(s) alive" in log
    # The head has no CPUs, so the job ran only if the autoscaler added workers.
    peak = int(re.search(r"peak worker nodes: (\d+)", log).group(1))
    assert peak >= 1, log
    # 6. The autoscaler removed the idle workers, then the demo stopped the cluster.
    assert "all worker nodes removed by the autoscaler" in log, log
    assert "cluster stopped" in log
    assert not (out / "cluster-state" / "state.json").exists()
    # Nothing of the cluster survives: every process recorded while it ran is gone,
    # and the record covered the fake worker nodes, not only the head.
    assert not left, f"processes of the demo's cluster survived: {left}"
    raylets = [cmd for _, cmd in recorder.seen.values() if "/raylet/raylet " in cmd]
    assert len(raylets) >= 2, raylets  # the head's and at least one worker's
