"""`make demo` end to end, small: one spec rendered twice, the offline
`pulumi up` listing, a local autoscaling cluster, annotate.py, clean stop."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.render import example_gcp_facts, render_gcp, to_yaml
from cluster.spec import ClusterSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.cluster
def test_demo_runs_the_whole_flow_and_leaves_nothing_running(tmp_path):
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--out", str(out), "--count", "24",
         "--no-scale-down-wait"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
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
    # 6. Stopped: the state file is gone, so nothing of it is recorded as running.
    assert not (out / "cluster-state" / "state.json").exists()
    assert "cluster stopped" in log
