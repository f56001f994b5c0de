"""python -m cluster: render, requirements and local status from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.render import example_gcp_facts, render_gcp
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
    assert cfg == render_gcp(ClusterSpec(), example_gcp_facts())
    validate_config(prepare_config(cfg))


def test_render_gcp_with_facts_and_spec_files(tmp_path):
    facts = example_gcp_facts(project="team-proj-42", region="europe-west4")
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


# ---- errors in the settings' style (field = value: problem (allowed: ...)) ------------


def test_an_unknown_region_is_one_clear_line():
    out = cli("render", "--target", "gcp", "--region", "mars-1")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        "invalid input (nothing was rendered):",
        (
            "  --region = 'mars-1': unknown region (allowed: one of the regions in "
            "cluster/regions.py, e.g. asia-northeast3, us-central1)"
        ),
    ]
    # No pydantic boilerplate, no error about a zone the user never typed.
    assert "pydantic" not in out.stderr and "mars-1-a" not in out.stderr


def test_a_well_formed_region_must_be_in_the_regions_table():
    out = cli("render", "--target", "gcp", "--region", "asia-northeast9")
    assert out.returncode == 2 and out.stdout == ""
    assert "--region = 'asia-northeast9': unknown region; did you mean asia-northeast3" in out.stderr


def test_the_zone_is_a_real_zone_of_the_region():
    # europe-west1 has no zone a (cluster/regions.py): the preview uses b.
    cfg = yaml.safe_load(cli("render", "--target", "gcp", "--region", "europe-west1").stdout)
    assert cfg["provider"]["availability_zone"] == "europe-west1-b"


def test_a_bad_project_is_named_with_what_is_allowed():
    out = cli("render", "--target", "gcp", "--project", "My_Project")
    assert out.returncode == 2
    assert "--project = 'My_Project': not a GCP project ID (allowed: 6-30 of [a-z0-9-]" in out.stderr


def test_a_bad_spec_field_names_the_file_field_value_and_allowed(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "node_types:\n  head: {machine_type: n2-standard-4, resources: {CPU: 0}}\n"
        "  cpu-worker: {machine_type: 'N2 standard', max_workers: 2}\n"
    )
    out = cli("render", "--target", "gcp", "--spec", str(spec))
    assert out.returncode == 2
    assert out.stderr.splitlines()[1:] == [
        (
            f"  {spec}: node_types.cpu-worker.machine_type = 'N2 standard': malformed "
            "(allowed: GCE machine type, e.g. n2-standard-4)"
        )
    ]
    assert "String should match pattern" not in out.stderr


@pytest.mark.parametrize(
    "extra", [["--project", "x-project"], ["--region", "europe-west4"]], ids=["project", "region"]
)
def test_local_target_refuses_gcp_only_flags(extra):
    out = cli("render", "--target", "local", *extra)
    assert out.returncode == 2 and out.stdout == ""
    assert f"{extra[0]}: not used with --target local" in out.stderr


def test_the_readme_error_example_is_what_the_command_prints():
    import shlex

    readme = (ROOT / "cluster" / "README.md").read_text()
    block = readme.split("\n$ python -m cluster render ", 1)[1].split("```", 1)[0]
    command, *expected = block.strip("\n").splitlines()
    out = cli("render", *shlex.split(command))
    assert out.returncode == 2
    assert out.stderr.splitlines() == expected


def test_local_down_removes_the_token_and_says_so(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "auth_token").write_text("old-token\n")
    down = cli("local", "down", "--state-dir", str(state), cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert not (state / "auth_token").exists()
    assert f"down: removed the auth token {state / 'auth_token'}" in down.stdout


# ---- --api-endpoint (provider.api_endpoints, as ray-gcp:apiEndpoints) -----------------------


def test_render_gcp_with_api_endpoints():
    out = cli(
        "render", "--target", "gcp",
        "--api-endpoint", "compute=https://compute-psc.p.googleapis.com/compute/v1/",
        "--api-endpoint", "iam=https://iam-psc.p.googleapis.com/",
    )
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["provider"]["api_endpoints"] == {
        "compute": "https://compute-psc.p.googleapis.com/compute/v1/",
        "iam": "https://iam-psc.p.googleapis.com/",
    }
    validate_config(prepare_config(cfg))
    # Without the flag the key is absent (nothing changes for everyone else).
    assert "api_endpoints" not in yaml.safe_load(cli("render", "--target", "gcp").stdout)["provider"]


def test_api_endpoint_flag_adds_to_a_facts_file(tmp_path):
    facts = example_gcp_facts().model_dump()
    facts["api_endpoints"] = {"iam": "https://iam-psc.p.googleapis.com/"}
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    out = cli(
        "render", "--target", "gcp", "--facts", str(tmp_path / "facts.json"),
        "--api-endpoint", "compute=http://127.0.0.1:8080/compute/v1/",
    )
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["provider"]["api_endpoints"] == {
        "iam": "https://iam-psc.p.googleapis.com/",
        "compute": "http://127.0.0.1:8080/compute/v1/",
    }


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--api-endpoint", "compute=ftp://h/compute/v1/"],
         "--api-endpoint compute = 'ftp://h/compute/v1/': not an absolute http(s) URL"),
        (["--api-endpoint", "compute=https://h/compute/v1"], "must end with '/'"),
        (["--api-endpoint", "storage=https://h/"],
         "--api-endpoint storage: unknown API; allowed keys: compute, iam, cloudresourcemanager"),
        (["--api-endpoint", "https://h/compute/v1/"], "write API=URL"),
        (["--api-endpoint", "iam=https://a/", "--api-endpoint", "iam=https://b/"], "given twice"),
    ],
)
def test_bad_api_endpoint_flags_are_refused(args, needle):
    out = cli("render", "--target", "gcp", *args)
    assert out.returncode == 2
    assert needle in out.stderr and out.stdout == ""


def test_bad_api_endpoints_in_a_facts_file_name_the_key(tmp_path):
    facts = example_gcp_facts().model_dump()
    facts["api_endpoints"] = {"compute": "compute.googleapis.com"}
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    out = cli("render", "--target", "gcp", "--facts", str(tmp_path / "facts.json"))
    assert out.returncode == 2
    assert "api_endpoints.compute = 'compute.googleapis.com': not an absolute http(s) URL" in out.stderr


def test_api_endpoint_flag_is_for_the_gcp_target_only():
    out = cli("render", "--target", "local", "--api-endpoint", "compute=http://127.0.0.1:1/c/")
    assert out.returncode == 2 and "--api-endpoint: applies to --target gcp only" in out.stderr


# ---- flags that do not apply are refused, not ignored (issue 24) -------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["render", "--target", "gcp", "--kind", "rayjob"],
         "--kind: applies to --target kuberay only"),
        (["render", "--target", "local", "--kind", "core"],
         "--kind: applies to --target kuberay only"),
        (["render", "--target", "gcp", "--gcs-port", "41000"],
         "--gcs-port: applies to --target local only"),
        (["render", "--target", "kuberay", "--gcs-port", "41000"],
         "--gcs-port: applies to --target local only"),
        (["render", "--target", "kuberay", "--facts", "kubefacts.json", "--project", "x-project"],
         "--project: not used with --facts"),
        (["local", "status", "--autoscaler-v2"], "--autoscaler-v2: applies to `local up` only"),
        (["local", "down", "--autoscaler-v2"], "--autoscaler-v2: applies to `local up` only"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_a_flag_that_does_not_apply_is_refused(tmp_path, args, message):
    out = cli(*args, "--state-dir", str(tmp_path / "none")) if args[0] == "local" else cli(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert out.stdout == ""


def test_kind_still_renders_every_kuberay_manifest():
    for kind in ("raycluster", "rayjob", "rayservice", "core"):
        out = cli("render", "--target", "kuberay", "--kind", kind)
        assert out.returncode == 0, (kind, out.stderr)
    default = cli("render", "--target", "kuberay")
    assert yaml.safe_load(default.stdout)["kind"] == "RayCluster"


# ---- one bucket name everywhere (issue 24) ------------------------------------------------


def test_every_renderer_uses_the_stacks_bucket_name():
    from cluster.names import bucket_name

    expected = bucket_name("my-ray-project", "ray-gcp")  # what infra/ creates
    gcp = yaml.safe_load(cli("render", "--target", "gcp").stdout)
    assert f"RAY_GCP_BUCKET={expected}" in yaml.safe_dump(gcp["setup_commands"])
    job = yaml.safe_load(cli("render", "--target", "kuberay", "--kind", "rayjob").stdout)
    assert f"gs://{expected}/annotate/input" in job["spec"]["entrypoint"]
    team = yaml.safe_load(cli("render", "--target", "kuberay", "--project", "team-proj-42").stdout)
    envs = [e for c in team["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
            for e in c.get("env", [])]
    assert {"name": "RAY_GCP_BUCKET", "value": bucket_name("team-proj-42", "ray-gcp")} in envs


# ---- --help (issue 24) ----------------------------------------------------------------------


def test_help_lists_one_line_per_command_and_examples():
    out = cli("--help")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].startswith("usage: python -m cluster")
    for command in ("local", "render", "requirements"):
        (line,) = [ln for ln in lines if ln.split()[:1] == [command]]
        assert len(line.split()) > 3, line  # the command and what it does, on one line
    examples = lines[lines.index("examples:") + 1:]
    assert examples and all(ln.startswith("  python -m cluster ") for ln in examples if ln)
    assert max(len(ln) for ln in lines) <= 100
    # Each command's own --help carries the details.
    render = cli("render", "--help").stdout
    assert "--kind" in render and "examples:" in render
