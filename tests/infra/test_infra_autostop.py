"""ray-gcp:idleTimeoutMinutes in the Pulumi program: what each platform declares for it.

The setting's rule (0, or 5..10080) is tested with the other settings in
test_infra_settings.py; the boot script's timer in test_boot.py; the GKE
watcher's manifests in tests/cluster/test_autostop_gke.py.
"""

from __future__ import annotations

from cluster import layout
from infra import offline as harness

INSTANCE = "gcp:compute/instance:Instance"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
ROLE = "kubernetes:rbac.authorization.k8s.io/v1:Role"
ROLE_BINDING = "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding"
RAYCLUSTER = "kubernetes:ray.io/v1:RayCluster"


def test_the_provider_vm_boots_with_the_timeout_and_a_start_command(programs):
    for scenario, minutes in (("default", 60), ("spot", 15)):
        rec = programs(scenario)
        (vm,) = rec.of_type(INSTANCE)
        metadata = harness.unsecret(vm["inputs"]["metadata"])
        assert metadata[layout.META_IDLE_TIMEOUT] == str(minutes)
        assert rec.outputs["idleTimeoutMinutes"] == minutes
        assert rec.outputs["startCommand"] == (
            f"gcloud compute instances start {vm['inputs']['name']} "
            f"--zone {vm['inputs']['zone']} --project {harness.TEST_PROJECT}"
        )


def test_gke_declares_the_watcher_after_the_raycluster_and_only_when_on(programs):
    on, off = programs("gke"), programs("gke-spot")
    (deployment,) = on.of_type(DEPLOYMENT)
    (role,) = on.of_type(ROLE)
    assert len(on.of_type(ROLE_BINDING)) == 1
    (raycluster,) = on.of_type(RAYCLUSTER)
    assert raycluster["urn"] in deployment["dependencies"]
    assert role["inputs"]["rules"] == [{
        "apiGroups": ["ray.io"], "resources": ["rayclusters"],
        "resourceNames": [on.outputs["rayCluster"]], "verbs": ["get", "patch"]}]
    env = {e["name"]: e.get("value") for e in
           deployment["inputs"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RAY_GCP_IDLE_TIMEOUT_MINUTES"] == "60"
    assert on.outputs["startCommand"] == (
        "kubectl -n ray patch raycluster ray-gcp --type merge "
        """-p '{"spec":{"suspend":false}}'""")
    assert off.outputs["idleTimeoutMinutes"] == 0
    assert off.of_type(DEPLOYMENT) == [] and off.of_type(ROLE) == []


def test_offline_cli_shows_the_setting_and_its_effect(capsys):
    assert harness.main(["--set", "ray-gcp:idleTimeoutMinutes=90"]) == 0
    out = capsys.readouterr().out
    assert " * ray-gcp:idleTimeoutMinutes = 90\n" in out
    assert ("autostop: after 90 min idle, `ray down`, then the provider VM powers off "
            "(only its disk is billed)\n  back: $(pulumi stack output startCommand)\n") in out
    assert harness.main(["--set", "ray-gcp:idleTimeoutMinutes=0",
                         "--set", "ray-gcp:platform=gke"]) == 0
    out = capsys.readouterr().out
    assert "autostop: off (idleTimeoutMinutes = 0): the cluster runs until you stop it" in out
    assert harness.main(["--set", "ray-gcp:idleTimeoutMinutes=4"]) == 1
    out = capsys.readouterr().out
    assert "ray-gcp:idleTimeoutMinutes = '4'" in out and "from 5 to 10080" in out
