"""infra/__main__.py + infra/program.py: the whole program, as Pulumi's language host runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import SCENARIOS

from infra import offline as harness
from infra.program import render_cluster_yaml
from infra.settings import parse_settings

STACK_OUTPUTS = {
    "providerInstance", "providerZone", "sshCommand", "clusterConfig", "serviceAccounts",
    "network", "subnetwork", "bucket", "image",
}
COMPONENT_TYPES = {
    "ray-gcp:infra:ProjectServices", "ray-gcp:infra:WorkloadBucket", "ray-gcp:infra:Identity",
    "ray-gcp:infra:ClusterNetwork", "ray-gcp:infra:LauncherSecrets", "ray-gcp:infra:ProviderVm",
    "ray-gcp:infra:OperatorAccess",
}
# What each scenario's nodes fall back to (no scenario sets ray-gcp:fallbackZones).
_NE3 = ["asia-northeast3-b", "asia-northeast3-c"]
DEFAULT_FALLBACK = {"default": _NE3, "key-mode": _NE3, "ssh-ranges": _NE3, "spot": _NE3,
                    "operators": _NE3, "predefined-roles": _NE3,
                    "us-central1": ["us-central1-a", "us-central1-b", "us-central1-c"]}
# The only places the generated secrets may appear in inputs: the secret versions.
SECRET_HOLDERS = {("gcp:secretmanager/secretVersion:SecretVersion", "secretData")}


def _settings_of(scenario: str):
    raw = {k.removeprefix("ray-gcp:"): v for k, v in harness.engine_config(SCENARIOS[scenario]).items()
           if k.startswith("ray-gcp:")}
    return parse_settings(raw, harness.TEST_PROJECT)


def test_outputs(each_scenario):
    rec = each_scenario
    out = rec.outputs
    assert set(out) == STACK_OUTPUTS
    settings = _settings_of(rec.scenario)
    assert out["providerInstance"] == f"{settings.cluster_name}-provider"
    assert out["providerZone"] == settings.zone
    assert out["sshCommand"] == (
        f"gcloud compute ssh {settings.cluster_name}-provider --zone {settings.zone} "
        f"--project {harness.TEST_PROJECT} --tunnel-through-iap")
    assert set(out["serviceAccounts"]) == {"provider", "head", "worker"}
    assert all(e.endswith(f"@{harness.TEST_PROJECT}.iam.gserviceaccount.com")
               for e in out["serviceAccounts"].values())
    # Nothing exported is secret: the outputs are safe to print.
    assert not any(v["secret"] for v in rec.data["outputs"].values())


def test_cluster_config_is_cluster_render_of_the_deployed_facts(each_scenario):
    rec = each_scenario
    out = rec.outputs
    settings = _settings_of(rec.scenario)
    subnet = rec.one("gcp:compute/subnetwork:Subnetwork")["inputs"]
    facts = {
        "project": harness.TEST_PROJECT, "region": settings.region, "zone": settings.zone,
        "fallback_zones": settings.node_fallback_zones,
        "api_endpoints": settings.node_api_endpoints,
        "subnetwork": f"{harness.GCE}/projects/{harness.TEST_PROJECT}/regions/{subnet['region']}"
                      f"/subnetworks/{subnet['name']}",
        "head_service_account": out["serviceAccounts"]["head"],
        "worker_service_account": out["serviceAccounts"]["worker"],
        "ssh_public_key": harness.MOCK_SSH_PUBLIC_KEY.strip(),
        "image": harness.MOCK_IMAGE,
        "bucket": out["bucket"],
    }
    assert out["clusterConfig"] == render_cluster_yaml(settings, facts)
    # The public key is in the config (not secret); the private key is not.
    assert harness.MOCK_SSH_PUBLIC_KEY.strip() in out["clusterConfig"]


def test_components_own_every_resource_and_register_outputs(each_scenario):
    rec = each_scenario
    components = [r for r in rec.resources if not r["custom"]]
    assert {r["type"] for r in components} == COMPONENT_TYPES
    for comp in components:
        assert rec.parent_of(comp) is None, f"{comp['name']} should be a child of the stack"
        assert comp["urn"] in rec.data["outputs_registered"], f"{comp['name']}: register_outputs"
    for r in rec.resources:
        if r["custom"]:
            parent = rec.parent_of(r)
            assert parent is not None and parent["type"] in COMPONENT_TYPES, r["name"]
            assert r["name"].startswith(parent["name"] + "-"), r["name"]


def test_generated_secrets_appear_nowhere_but_in_secret_versions(each_scenario):
    rec = each_scenario
    for r in rec.resources:
        for key, value in r["inputs"].items():
            if (r["type"], key) in SECRET_HOLDERS:
                assert harness.is_secret(value)
                continue
            text = json.dumps(harness.unsecret(value))
            for secret, needles in harness.SECRET_NEEDLES.items():
                for needle in needles:
                    assert needle not in text, f"{secret} in {r['type']} {r['name']}.{key}"
    outputs_text = json.dumps(rec.outputs)
    for secret, needles in harness.SECRET_NEEDLES.items():
        assert not any(n in outputs_text for n in needles), f"{secret} in stack outputs"


def test_runs_like_the_language_host_without_the_project_root_on_sys_path(tmp_path, default):
    """A separate interpreter whose sys.path lacks the project root (as under
    pulumi-language-python-exec): infra.* and cluster.* import from the editable
    install, and the program declares the same resources as in the forked runs."""
    script = tmp_path / "language_host.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        root = {str(harness.PROJECT_ROOT)!r}
        assert root not in sys.path and "" not in sys.path, sys.path
        import infra.program, cluster.spec
        assert infra.program.__file__.startswith(root + "/infra/")
        from infra import offline
        rec = offline.run_program(offline.engine_config({{}}))
        print(json.dumps({{"error": rec["error"],
                           "resources": sorted((r["type"], r["name"]) for r in rec["resources"])}}))
    """))
    proc = subprocess.run([sys.executable, str(script)], check=False, cwd=tmp_path,
                          capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] is None, result["error"]["traceback"]
    assert [tuple(r) for r in result["resources"]] == sorted(
        (r["type"], r["name"]) for r in default.resources)


def test_cluster_config_is_valid_for_ray_and_follows_the_settings(each_scenario):
    """Ray's own schema check on the exact text the VM receives, plus the settings in it."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    rec = each_scenario
    settings = _settings_of(rec.scenario)
    config = yaml.safe_load(rec.outputs["clusterConfig"])
    validate_config(prepare_config(config))
    assert config["cluster_name"] == settings.cluster_name
    assert config["provider"]["project_id"] == harness.TEST_PROJECT
    assert config["provider"]["region"] == settings.region
    assert config["provider"]["availability_zone"] == settings.zone
    # fallbackZones unset: the region's other zones, starting after `zone`.
    assert config["provider"]["fallback_zones"] == DEFAULT_FALLBACK[rec.scenario]
    assert config["provider"]["use_internal_ips"] is True
    head = config["available_node_types"][config["head_node_type"]]
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert head["node_config"]["machineType"] == settings.head_machine_type
    assert head["node_config"]["serviceAccounts"][0]["email"] == rec.outputs["serviceAccounts"]["head"]
    for worker in workers:
        node = worker["node_config"]
        assert node["machineType"] == settings.worker_machine_type
        assert (worker["min_workers"], worker["max_workers"]) == (
            settings.min_workers, settings.max_workers)
        assert node["serviceAccounts"][0]["email"] == rec.outputs["serviceAccounts"]["worker"]
        assert (node["scheduling"]["provisioningModel"] == "SPOT") is settings.spot_workers
    for node_type in config["available_node_types"].values():
        node = node_type["node_config"]
        assert node["disks"][0]["initializeParams"]["sourceImage"] == harness.MOCK_IMAGE
        (nic,) = node["networkInterfaces"]
        assert nic["subnetwork"].endswith(f"/subnetworks/{rec.outputs['subnetwork']}")
        assert "accessConfigs" not in nic


def test_no_infra_module_shadows_another_module_under_pulumi():
    """Pulumi runs `runpy.run_path("infra/")`, which puts infra/ itself first on
    sys.path: a file infra/secrets.py would hide the standard library's secrets
    from every library the program imports."""
    import importlib.util

    for path in (harness.PROJECT_ROOT / "infra").glob("*.py"):
        name = path.stem
        if name in ("__main__", "__init__"):
            continue
        assert name not in sys.stdlib_module_names, f"infra/{path.name} shadows stdlib {name}"
        assert importlib.util.find_spec(name) is None, (
            f"infra/{path.name} shadows the installed module {name!r}")
