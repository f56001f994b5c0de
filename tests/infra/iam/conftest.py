"""Fixtures of the IAM tests: each infra scenario deployed offline, then every actor's
GCP calls recorded from the real code paths (see recorder.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cluster.render import render_gcp, to_yaml
from cluster.spec import ClusterSpec, GcpFacts
from infra import boot
from infra import offline as harness
from infra.iam import AGENT_CALLS
from tests.emulator import EMULATOR_BUCKET
from tests.infra.conftest import SCENARIOS
from tests.infra.iam import recorder
from tests.infra.test_boot import new_sandbox

# Node types no infra setting produces yet, rendered from the default deployment's facts:
# a GPU worker type next to a spot CPU type.
EXTRA_SPECS = {
    "gpu": ClusterSpec.from_settings(
        spot_workers=True,
        gpu_accelerator_type="nvidia-tesla-t4",
        gpu_accelerator_count=1,
        gpu_max_workers=2,
    ),
}


def scenario_of(rec) -> recorder.Scenario | None:
    """The recorder's view of a deployment; None for one without a provider VM running
    `ray up` (nothing of Ray's VM launcher to record there)."""
    vms = rec.of_type("gcp:compute/instance:Instance")
    if len(vms) != 1 or "clusterConfig" not in rec.outputs:
        return None
    (vm,) = vms
    metadata = harness.unsecret(vm["inputs"]["metadata"])
    return recorder.Scenario(
        rec.scenario,
        rec.outputs["clusterConfig"],
        rec.outputs["serviceAccounts"],
        rec.outputs["bucket"],
        metadata,
    )


def facts_of(scenario: recorder.Scenario) -> GcpFacts:
    cfg = scenario.config
    node = cfg["available_node_types"][cfg["head_node_type"]]["node_config"]
    keys = {i["key"]: i["value"] for i in node["metadata"]["items"]}
    return GcpFacts(
        project=cfg["provider"]["project_id"],
        region=cfg["provider"]["region"],
        zone=cfg["provider"]["availability_zone"],
        subnetwork=node["networkInterfaces"][0]["subnetwork"],
        head_service_account=scenario.accounts["head"],
        worker_service_account=scenario.accounts["worker"],
        ssh_public_key=keys["ssh-keys"].split(":", 1)[1],
        image=node["disks"][0]["initializeParams"]["sourceImage"],
        bucket=scenario.bucket,
    )


@pytest.fixture(scope="session")
def scenarios(programs) -> dict[str, recorder.Scenario]:
    """Every infra scenario, plus EXTRA_SPECS rendered with the default deployment's facts."""
    out = {}
    for name in sorted(SCENARIOS):
        scenario = scenario_of(programs(name))
        if scenario is not None:
            out[name] = scenario
    base = out["default"]
    for name, spec in EXTRA_SPECS.items():
        text = to_yaml(render_gcp(spec, facts_of(base)))
        out[name] = recorder.Scenario(name, text, base.accounts, base.bucket, base.metadata)
    return out


@pytest.fixture(scope="session")
def recorded(scenarios, gcs_emulator, tmp_path_factory):
    """actor -> scenario -> recorded calls (and Google's agents' declared calls,
    infra.iam.AGENT_CALLS); plus the metadata paths of each boot. gke-node's
    calls are all declared; they stand under the scenario name "gke"."""
    started: list = []
    script_path = tmp_path_factory.mktemp("rendered") / "startup-script.sh"
    script_path.write_text(boot.render_boot_script())
    calls: dict[str, dict[str, list]] = {
        "provider": {}, "head": {}, "worker": {}, "gke-node": {"gke": list(AGENT_CALLS["gke-node"])}
    }
    metadata_paths: dict[str, list[str]] = {}
    gcs = recorder.record_gcs(gcs_emulator, EMULATOR_BUCKET)
    # Every node ships its Ray logs; the provider VM's operators read them.
    shipping = recorder.record_log_shipping(
        gcs_emulator, EMULATOR_BUCKET, tmp_path_factory.mktemp("logship"))
    reading = recorder.record_log_reading(gcs_emulator, EMULATOR_BUCKET)
    ssh_dirs_before = set(Path("/tmp").glob("ray_ssh_*/*")) | set(Path("/tmp").glob("ray_ssh_*"))
    try:
        for name, scenario in scenarios.items():
            work = Path(tmp_path_factory.mktemp(f"iam-{name}"))
            boot_calls, paths = recorder.record_boot(
                scenario,
                lambda mode: new_sandbox(tmp_path_factory, script_path, started, mode),
            )
            metadata_paths[name] = paths
            ships = bool(scenario.config["provider"].get("log_bucket"))
            calls["provider"][name] = (
                boot_calls + recorder.record_ray_up_and_down(scenario, work)
                + (reading if ships else []) + list(AGENT_CALLS["provider"])
            )
            calls["head"][name] = (
                recorder.record_autoscaler(scenario, work) + gcs + (shipping if ships else []))
            calls["worker"][name] = gcs + (shipping if ships else [])
    finally:
        for server in started:
            server.stop()
        # Ray's SSHCommandRunner makes /tmp/ray_ssh_<user>/<cluster> control dirs.
        after = set(Path("/tmp").glob("ray_ssh_*/*")) | set(Path("/tmp").glob("ray_ssh_*"))
        for path in sorted(after - ssh_dirs_before, key=lambda p: -len(p.parts)):
            shutil.rmtree(path, ignore_errors=True)
    return {"calls": calls, "metadata_paths": metadata_paths}


def table(calls: dict[str, dict[str, list]]) -> str:
    """calls.yaml's text: per actor, the distinct calls over all scenarios, sorted."""
    doc = {}
    for actor, by_scenario in calls.items():
        distinct = {c for scenario_calls in by_scenario.values() for c in scenario_calls}
        doc[actor] = [c.as_dict() for c in sorted(distinct, key=lambda c: repr(c.as_dict()))]
    header = (
        "# Every GCP REST call of each actor, recorded by tests/infra/iam (do not edit).\n"
        "# Regenerate after reviewing a change: UPDATE_CALLS=1 .venv/bin/python -m pytest "
        "tests/infra/iam -q\n"
        f"# Scenarios: tests/infra/conftest.py SCENARIOS + {sorted(EXTRA_SPECS)}; actors: "
        f"provider (boot, ray up, autostop, ray down, log reader), head (autoscaler, drivers' GCS, "
        "log shipper), worker (GCS, log shipper), gke-node (GKE's agents).\n"
        "# declared_by: a call of Google's own agents (infra.iam.AGENT_CALLS), declared "
        "with Google's documentation, not recorded (they run only on a real VM or GKE node).\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, width=100, default_flow_style=False)
