"""python -m cluster: render, requirements and local status from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.render import example_facts, render_gcp
from cluster.spec import ClusterSpec

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
    )


def test_render_gcp_with_example_facts():
    out = cli("render", "--target", "gcp")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg == render_gcp(ClusterSpec(), example_facts())
    validate_config(prepare_config(cfg))


def test_render_gcp_with_facts_and_spec_files(tmp_path):
    facts = example_facts(project="team-proj-42", region="europe-west4")
    (tmp_path / "facts.json").write_text(json.dumps(facts.model_dump()))
    (tmp_path / "spec.yaml").write_text(
        "cluster_name: team\nmax_workers: 2\nnode_types:\n"
        "  head: {machine_type: e2-standard-2, resources: {CPU: 0}}\n"
        "  w: {machine_type: e2-standard-4, max_workers: 2}\n"
    )
    out = cli(
        "render",
        "--target",
        "gcp",
        "--facts",
        str(tmp_path / "facts.json"),
        "--spec",
        str(tmp_path / "spec.yaml"),
    )
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["provider"]["project_id"] == "team-proj-42"
    assert cfg["provider"]["availability_zone"] == "europe-west4-a"
    assert set(cfg["available_node_types"]) == {"head", "w"}


def test_render_refuses_a_bad_spec_naming_the_field(tmp_path):
    (tmp_path / "spec.yaml").write_text("cluster_name: Bad_Name\n")
    out = cli("render", "--target", "gcp", "--spec", str(tmp_path / "spec.yaml"))
    assert out.returncode == 2
    assert "cluster_name" in out.stderr and "lowercase letters" in out.stderr
    assert out.stdout == ""


def test_render_local():
    out = cli("render", "--target", "local", "--gcs-port", "41000")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["provider"]["gcs_address"] == "127.0.0.1:41000"
    validate_config(cfg)


def test_requirements_check_passes_on_the_committed_file():
    out = cli("requirements", "--check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "matches uv.lock" in out.stdout


def test_local_status_without_a_cluster(tmp_path):
    out = cli("local", "status", "--state-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert out.returncode == 1
    assert "no local cluster running" in out.stdout
    down = cli("local", "down", "--state-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert down.returncode == 0 and "stopped 0 processes" in down.stdout
