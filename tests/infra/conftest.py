"""Fixtures for the infra tests: the Pulumi program run offline, once per scenario.

Each scenario runs in a fresh Pulumi runtime (a forked child, see
infra/offline.py) and is cached for the session, so every test module can
assert on the same recording without re-running the program.
"""

from __future__ import annotations

from typing import Any

import pytest

from infra import offline as harness

# Stack settings per scenario (ray-gcp:/gcp: keys, as `pulumi config set` would store them).
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "key-mode": {"ray-gcp:credentialMode": "key"},
    "ssh-ranges": {"ray-gcp:sshSourceRanges": ["203.0.113.0/24", "10.20.0.0/16"]},
    "spot": {"ray-gcp:spotWorkers": True, "ray-gcp:minWorkers": 1, "ray-gcp:maxWorkers": 10,
             "ray-gcp:idleTimeoutMinutes": 15},
    "predefined-roles": {"ray-gcp:customRoles": False},
    "operators": {
        "ray-gcp:operators": ["user:alice.smith@example.com", "group:ml-team@example.com"]
    },
    "us-central1": {
        "ray-gcp:region": "us-central1",
        "ray-gcp:zone": "us-central1-f",
        "ray-gcp:clusterName": "research",
        "ray-gcp:subnetCidr": "172.20.0.0/16",
        "ray-gcp:workerMachineType": "c3-standard-8",
        "ray-gcp:providerMachineType": "e2-small",
        # No log shipping: no shipper on the nodes, no log reader grant, a shorter retention.
        "ray-gcp:logShipping": False,
        "ray-gcp:logRetentionDays": 7,
    },
}
# platform gke (infra/components/gke.py, kuberay_operator.py, ray_on_gke.py).
GKE_SCENARIOS: dict[str, dict[str, Any]] = {
    "gke": {"ray-gcp:platform": "gke"},
    "gke-spot": {
        "ray-gcp:platform": "gke",
        "ray-gcp:spotWorkers": True,
        "ray-gcp:minWorkers": 2,
        "ray-gcp:maxWorkers": 8,
        "ray-gcp:gkeReleaseChannel": "STABLE",
        "ray-gcp:idleTimeoutMinutes": 0,  # autostop off: no watcher, a fixed system pool
        "ray-gcp:logShipping": False,  # no log sidecar
    },
    "gke-gpu": {
        "ray-gcp:platform": "gke",
        "ray-gcp:region": "us-central1",
        "ray-gcp:zone": "us-central1-a",
        "ray-gcp:clusterName": "vision",
        "ray-gcp:minWorkers": 1,
        "ray-gcp:workerMachineType": "n2-standard-8",
        "ray-gcp:gkeGpuType": "nvidia-l4",
        "ray-gcp:gkeGpuCount": 1,
        "ray-gcp:gkeGpuMachineType": "g2-standard-8",
        "ray-gcp:gkeGpuMaxNodes": 3,
        "ray-gcp:gkeDeletionProtection": False,
        "ray-gcp:gkePodsCidr": "172.24.0.0/14",
        "ray-gcp:gkeServicesCidr": "172.28.0.0/20",
    },
}
# The VM scenarios above stay what every VM test runs (each_scenario).
ALL_SCENARIOS: dict[str, dict[str, Any]] = {**SCENARIOS, **GKE_SCENARIOS}


class Recording:
    """One program run: resources (type, name, parent, inputs...), invokes, outputs, error."""

    def __init__(self, scenario: str, data: dict[str, Any]) -> None:
        self.scenario = scenario
        self.data = data
        self.resources: list[dict[str, Any]] = data["resources"]
        self.urns = {r["urn"]: r for r in self.resources}

    @property
    def error(self) -> dict[str, Any] | None:
        return self.data["error"]

    @property
    def outputs(self) -> dict[str, Any]:
        return {k: v["value"] for k, v in self.data["outputs"].items()}

    def of_type(self, typ: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["type"] == typ]

    def one(self, typ: str, name: str | None = None) -> dict[str, Any]:
        found = [r for r in self.of_type(typ) if name is None or r["name"] == name]
        assert len(found) == 1, f"expected one {typ} {name or ''}, found {[r['name'] for r in found]}"
        return found[0]

    def parent_of(self, resource: dict[str, Any]) -> dict[str, Any] | None:
        return self.urns.get(resource["parent"])

    def parent_name(self, resource: dict[str, Any]) -> str:
        parent = self.parent_of(resource)
        return parent["name"] if parent else "<stack>"


class Programs:
    def __init__(self) -> None:
        self._cache: dict[str, Recording] = {}

    def __call__(self, scenario: str) -> Recording:
        if scenario not in self._cache:
            data = harness.run_isolated(harness.engine_config(ALL_SCENARIOS[scenario]))
            rec = Recording(scenario, data)
            assert rec.error is None, f"scenario {scenario} failed:\n{rec.error['traceback']}"
            self._cache[scenario] = rec
        return self._cache[scenario]


@pytest.fixture(scope="session")
def programs() -> Programs:
    """programs(scenario) -> Recording, each scenario run once per session."""
    harness.warm_up()
    return Programs()


@pytest.fixture(scope="session", params=sorted(SCENARIOS))
def each_scenario(request: pytest.FixtureRequest, programs: Programs) -> Recording:
    return programs(request.param)


@pytest.fixture(scope="session", params=sorted(GKE_SCENARIOS))
def each_gke_scenario(request: pytest.FixtureRequest, programs: Programs) -> Recording:
    return programs(request.param)


@pytest.fixture(scope="session", params=sorted(ALL_SCENARIOS))
def any_scenario(request: pytest.FixtureRequest, programs: Programs) -> Recording:
    """Every scenario of both platforms (the inventory snapshots)."""
    return programs(request.param)


@pytest.fixture(scope="session")
def default(programs: Programs) -> Recording:
    return programs("default")
