"""platform gke: the program under Pulumi's mocks, and the invariants that make it safe.

Each scenario (`gke`, `gke-spot`, `gke-gpu` in conftest.py) is the whole
program run as Pulumi's language host runs it; the assertions read the
recorded resource inputs, the way GCP and Kubernetes would receive them.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from conftest import GKE_SCENARIOS

from cluster import layout
from cluster.kuberay import (
    AUTH_TOKEN_KEY,
    CLUSTER_LABEL,
    read_workloads,
    render_core_objects,
    render_raycluster,
)
from infra import offline as harness
from infra.components.gke import AUTH_PLUGIN, SYSTEM_POOL, SYSTEM_POOL_NODES, kubeconfig
from infra.components.kuberay_operator import OPERATOR_NAMESPACE
from infra.components.ray_on_gke import kube_facts
from infra.settings import parse_settings
from tests.infra.access import all_grants

CLUSTER = "gcp:container/cluster:Cluster"
NODE_POOL = "gcp:container/nodePool:NodePool"
K8S_PROVIDER = "pulumi:providers:kubernetes"
RAYCLUSTER = "kubernetes:ray.io/v1:RayCluster"
SECRET = "kubernetes:core/v1:Secret"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
RELEASE = "kubernetes:helm.sh/v3:Release"
GKE_STACK_OUTPUTS = {
    "platform", "gkeCluster", "gkeLocation", "gkeDnsEndpoint", "getCredentials",
    "kuberayChartVersion", "rayNamespace", "rayCluster", "rayServiceAccount",
    "clusterSpec", "kubeFacts",
    "serviceAccounts", "network", "subnetwork", "bucket",
}
GKE_COMPONENTS = {
    "ray-gcp:infra:ProjectServices", "ray-gcp:infra:WorkloadBucket", "ray-gcp:infra:Identity",
    "ray-gcp:infra:ClusterNetwork", "ray-gcp:infra:GkeCluster",
    "ray-gcp:infra:KubeRayOperator", "ray-gcp:infra:RayOnGke",
}
# Ray's ports (GCS, dashboard/Jobs API, client, dashboard agent, metrics, ...).
RAY_PORTS = (6379, 8265, 10001, 52365, 8080, 8076)


def settings_of(scenario: str):
    raw = {k.removeprefix("ray-gcp:"): v
           for k, v in harness.engine_config(GKE_SCENARIOS[scenario]).items()
           if k.startswith("ray-gcp:")}
    return parse_settings(raw, harness.TEST_PROJECT)


def ints(value: Any) -> Any:
    """The engine carries every number as a double: 8265 arrives as 8265.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [ints(v) for v in value]
    return value


def node_configs(rec) -> list[tuple[str, dict[str, Any]]]:
    """Every node config: the cluster's (its short-lived default pool) and each pool's."""
    out = [("cluster", rec.one(CLUSTER)["inputs"]["nodeConfig"])]
    out += [(p["inputs"]["name"], p["inputs"]["nodeConfig"]) for p in rec.of_type(NODE_POOL)]
    return out


def k8s_resources(rec) -> list[dict[str, Any]]:
    return [r for r in rec.resources if r["type"].startswith("kubernetes:")]


# ---- the control plane, nodes and network ------------------------------------------


def test_no_control_plane_ip_is_reachable_only_the_iam_gated_dns_endpoint(each_gke_scenario):
    cluster = each_gke_scenario.one(CLUSTER)["inputs"]
    endpoints = cluster["controlPlaneEndpointsConfig"]
    # No IP endpoint at all (public or private), so no address to reach by IP...
    assert endpoints["ipEndpointsConfig"] == {"enabled": False}
    # ...and the DNS endpoint, where Google IAM authenticates every request.
    assert endpoints["dnsEndpointConfig"]["allowExternalTraffic"] is True
    assert "masterAuthorizedNetworksConfig" not in cluster
    assert cluster["privateClusterConfig"].get("enablePrivateEndpoint") in (None, False)


def test_the_kubernetes_provider_talks_to_the_dns_endpoint_with_iam_credentials(each_gke_scenario):
    rec = each_gke_scenario
    (provider,) = rec.of_type(K8S_PROVIDER)
    config = yaml.safe_load(provider["inputs"]["kubeconfig"])
    (cluster,) = config["clusters"]
    endpoint = rec.outputs["gkeDnsEndpoint"]
    assert endpoint.endswith(".gke.goog")
    assert cluster["cluster"] == {"server": f"https://{endpoint}"}
    (user,) = config["users"]
    # Only a credential plugin (the caller's gcloud identity): no static token,
    # no client certificate, no password in state.
    assert set(user["user"]) == {"exec"} and user["user"]["exec"]["command"] == AUTH_PLUGIN


def test_kubeconfig_names_the_cluster_and_endpoint():
    config = yaml.safe_load(kubeconfig("research-gke", "gke-abc.us-central1-a.gke.goog"))
    assert config["current-context"] == "gke-research-gke"
    assert config["clusters"][0]["cluster"]["server"] == "https://gke-abc.us-central1-a.gke.goog"
    assert config["contexts"][0]["context"] == {
        "cluster": "gke-research-gke", "user": "gke-research-gke"}


def test_no_node_has_an_external_ip_and_egress_goes_through_our_nat(each_gke_scenario):
    rec = each_gke_scenario
    assert rec.one(CLUSTER)["inputs"]["privateClusterConfig"]["enablePrivateNodes"] is True
    pools = rec.of_type(NODE_POOL)
    assert pools
    for pool in pools:
        assert pool["inputs"]["networkConfig"]["enablePrivateNodes"] is True, pool["name"]
    nat = rec.one("gcp:compute/routerNat:RouterNat")["inputs"]
    subnet = rec.one("gcp:compute/subnetwork:Subnetwork")["inputs"]
    (nat_subnet,) = nat["subnetworks"]
    assert nat_subnet["name"].endswith(f"/subnetworks/{subnet['name']}")
    # ALL_IP_RANGES: the primary range (nodes) and the secondary ones (Pods).
    assert nat_subnet["sourceIpRangesToNats"] == ["ALL_IP_RANGES"]


def test_cluster_is_vpc_native_on_our_subnet_with_the_configured_ranges(each_gke_scenario):
    rec = each_gke_scenario
    settings = settings_of(rec.scenario)
    cluster = rec.one(CLUSTER)["inputs"]
    subnet = rec.one("gcp:compute/subnetwork:Subnetwork")["inputs"]
    assert cluster["location"] == settings.zone
    assert cluster["subnetwork"].endswith(f"/subnetworks/{subnet['name']}")
    assert cluster["network"].endswith(f"/networks/{rec.outputs['network']}")
    assert cluster["networkingMode"] == "VPC_NATIVE"
    ranges = {r["rangeName"]: r["ipCidrRange"] for r in subnet["secondaryIpRanges"]}
    assert ranges == {
        cluster["ipAllocationPolicy"]["clusterSecondaryRangeName"]: settings.gke_pods_cidr,
        cluster["ipAllocationPolicy"]["servicesSecondaryRangeName"]: settings.gke_services_cidr,
    }


def test_no_vm_firewall_rule_and_no_ray_port_opened_in_gcp(each_gke_scenario):
    rec = each_gke_scenario
    # The VM rules (provider, IAP SSH, Ray-to-Ray by account) have no targets on
    # GKE; GKE writes the node rules it needs. We open nothing in the VPC.
    assert rec.of_type("gcp:compute/firewall:Firewall") == []
    assert rec.of_type("gcp:compute/instance:Instance") == []


def test_hardening_workload_identity_shielded_nodes_dataplane_v2_channel_protection(
    each_gke_scenario,
):
    rec = each_gke_scenario
    settings = settings_of(rec.scenario)
    cluster = rec.one(CLUSTER)["inputs"]
    assert cluster["workloadIdentityConfig"] == {
        "workloadPool": f"{harness.TEST_PROJECT}.svc.id.goog"}
    assert cluster["enableShieldedNodes"] is True
    assert cluster["datapathProvider"] == "ADVANCED_DATAPATH"  # NetworkPolicy enforced
    assert cluster["releaseChannel"] == {"channel": settings.gke_release_channel}
    assert cluster["deletionProtection"] is settings.gke_deletion_protection
    assert cluster["removeDefaultNodePool"] is True
    for where, node in node_configs(rec):
        assert node["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}, where
        assert node["shieldedInstanceConfig"] == {
            "enableSecureBoot": True, "enableIntegrityMonitoring": True}, where
        assert node["metadata"] == {"disable-legacy-endpoints": "true"}, where


def test_nodes_run_as_the_dedicated_node_account_never_the_default_one(each_gke_scenario):
    rec = each_gke_scenario
    node_email = rec.outputs["serviceAccounts"]["gke-node"]
    assert node_email == (f"{settings_of(rec.scenario).cluster_name}-gke-node@"
                          f"{harness.TEST_PROJECT}.iam.gserviceaccount.com")
    for where, node in node_configs(rec):
        assert node["serviceAccount"] == node_email, where
    everything = json.dumps([r["inputs"] for r in rec.resources])
    assert "developer.gserviceaccount.com" not in everything  # the default compute account
    assert '"default"' not in json.dumps([n for _, n in node_configs(rec)])


def test_gke_grants_are_exactly_the_justified_ones(each_gke_scenario):
    """Every grant, whatever its scope (project, bucket, account, folder,
    organization, ...): every resource whose type is an IAM member, binding or
    policy, read by tests/infra/access.py, which fails on a type it cannot read."""
    rec = each_gke_scenario
    assert all_grants(rec) == {
        ("gke-node", "roles/logging.logWriter", "project"),
        ("gke-node", "roles/monitoring.metricWriter", "project"),
        ("ksa:ray/ray-workloads", "roles/storage.objectUser", "bucket"),
    }
    for typ in ("gcp:serviceaccount/key:Key", "gcp:secretmanager/secret:Secret"):
        assert rec.of_type(typ) == [], typ
    assert {r["inputs"]["service"] for r in rec.of_type("gcp:projects/service:Service")} >= {
        "container.googleapis.com"}


def test_ray_pods_reach_the_bucket_through_workload_identity_with_no_key(each_gke_scenario):
    rec = each_gke_scenario
    (ksa,) = rec.of_type("kubernetes:core/v1:ServiceAccount")
    namespace, name = ksa["inputs"]["metadata"]["namespace"], ksa["inputs"]["metadata"]["name"]
    (grant,) = rec.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    assert grant["inputs"]["member"] == (
        f"principal://iam.googleapis.com/projects/{harness.TEST_PROJECT_NUMBER}/locations/global/"
        f"workloadIdentityPools/{harness.TEST_PROJECT}.svc.id.goog/subject/ns/{namespace}/sa/{name}")
    assert rec.data["invokes"] == [{"token": "gcp:organizations/getProject:getProject",
                                    "args": {"projectId": harness.TEST_PROJECT}}]
    ray = rec.one(RAYCLUSTER)["inputs"]["spec"]
    templates = [ray["headGroupSpec"]["template"]] + [
        g["template"] for g in ray["workerGroupSpecs"]]
    for template in templates:
        assert template["spec"]["serviceAccountName"] == name
    assert "iam.gke.io/gcp-service-account" not in json.dumps(ksa["inputs"])


# ---- node pools follow the spec ------------------------------------------------------


def test_node_pools_follow_the_settings(each_gke_scenario):
    rec = each_gke_scenario
    settings = settings_of(rec.scenario)
    pools = {p["inputs"]["name"]: p["inputs"] for p in rec.of_type(NODE_POOL)}
    expected = {SYSTEM_POOL, "cpu-worker"} | ({"gpu-worker"} if settings.gke_gpu_type else set())
    assert set(pools) == expected
    system = pools[SYSTEM_POOL]
    assert system["nodeCount"] == SYSTEM_POOL_NODES and "autoscaling" not in system
    assert system["nodeConfig"]["machineType"] == settings.head_machine_type
    assert not system["nodeConfig"].get("spot")
    workers = pools["cpu-worker"]
    assert workers["autoscaling"] == {"minNodeCount": 0, "maxNodeCount": settings.max_workers}
    assert workers["nodeConfig"]["machineType"] == settings.worker_machine_type
    assert workers["nodeConfig"]["spot"] is settings.spot_workers
    assert "taints" not in workers["nodeConfig"]
    if settings.gke_gpu_type:
        gpu = pools["gpu-worker"]
        assert gpu["autoscaling"] == {"minNodeCount": 0, "maxNodeCount": settings.gke_gpu_max_nodes}
        assert gpu["nodeConfig"]["machineType"] == settings.gke_gpu_machine_type
        assert gpu["nodeConfig"]["guestAccelerators"] == [{
            "type": settings.gke_gpu_type, "count": settings.gke_gpu_count,
            "gpuDriverInstallationConfig": {"gpuDriverVersion": "DEFAULT"}}]
        assert gpu["nodeConfig"]["taints"] == [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
    for pool in pools.values():
        assert pool["cluster"] == rec.outputs["gkeCluster"]
        assert pool["management"] == {"autoRepair": True, "autoUpgrade": True}


def test_every_ray_pod_lands_on_a_pool_that_exists_and_fits(each_gke_scenario):
    """The renderer's nodeSelectors name pools this program creates; GPU Pods tolerate the taint."""
    rec = each_gke_scenario
    pools = {p["inputs"]["name"]: p["inputs"] for p in rec.of_type(NODE_POOL)}
    ray = rec.one(RAYCLUSTER)["inputs"]["spec"]
    groups = [("head", ray["headGroupSpec"])] + [(g["groupName"], g) for g in ray["workerGroupSpecs"]]
    for group, spec in groups:
        pod = spec["template"]["spec"]
        pool = pools[pod["nodeSelector"]["cloud.google.com/gke-nodepool"]]
        if pod["nodeSelector"].get("cloud.google.com/gke-spot") == "true":
            assert pool["nodeConfig"]["spot"] is True, group
        for taint in pool["nodeConfig"].get("taints", []):
            assert any(t["key"] == taint["key"] for t in pod.get("tolerations", [])), group
        if group != "head":
            assert ints(spec["maxReplicas"]) <= ints(pool["autoscaling"]["maxNodeCount"]), group


# ---- the operator and the Ray objects -------------------------------------------------


def test_kuberay_operator_from_the_official_chart_at_the_pinned_version(each_gke_scenario):
    rec = each_gke_scenario
    release = rec.one(RELEASE)["inputs"]
    assert release["chart"] == layout.KUBERAY_CHART == "kuberay-operator"
    assert release["version"] == layout.KUBERAY_VERSION
    assert re.fullmatch(r"\d+\.\d+\.\d+", release["version"])  # exact, never a range
    assert release["repositoryOpts"] == {"repo": "https://ray-project.github.io/kuberay-helm/"}
    assert release["namespace"] == OPERATOR_NAMESPACE
    assert release["values"]["nodeSelector"] == {"cloud.google.com/gke-nodepool": SYSTEM_POOL}
    assert rec.outputs["kuberayChartVersion"] == layout.KUBERAY_VERSION


def test_every_kubernetes_object_goes_through_the_gke_provider(each_gke_scenario):
    """Never the default provider, which would use whatever kubeconfig the caller has."""
    rec = each_gke_scenario
    (provider,) = rec.of_type(K8S_PROVIDER)
    for r in k8s_resources(rec):
        assert r["provider"] and r["provider"].startswith(provider["urn"] + "::"), r["name"]


def test_ray_objects_are_the_renderers_output(each_gke_scenario):
    rec = each_gke_scenario
    settings = settings_of(rec.scenario)
    spec = settings.cluster_spec()
    facts = kube_facts(settings, OPERATOR_NAMESPACE)
    expected = render_core_objects(spec, facts, read_workloads()) + [render_raycluster(spec, facts)]
    declared = [r for r in k8s_resources(rec) if r["type"] not in (RELEASE, SECRET)]
    assert len(declared) == len(expected)
    by_kind = {r["inputs"]["kind"]: ints(r["inputs"]) for r in declared}
    for manifest in expected:
        assert by_kind[manifest["kind"]] == manifest, manifest["kind"]


def test_a_kind_without_a_pulumi_type_is_refused_not_declared_as_a_custom_resource():
    import pulumi

    from infra.components.ray_on_gke import manifest_resource

    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {}}
    with pytest.raises(ValueError, match=r"no Pulumi type for \('v1', 'Service'\)"):
        manifest_resource("svc", service, pulumi.ResourceOptions())


def test_ray_token_auth_uses_the_pulumi_generated_secret(each_gke_scenario):
    rec = each_gke_scenario
    secret = rec.one(SECRET)["inputs"]
    ray = rec.one(RAYCLUSTER)["inputs"]
    assert ray["spec"]["authOptions"] == {"mode": "token", "secretName": secret["metadata"]["name"]}
    assert secret["metadata"]["namespace"] == ray["metadata"]["namespace"]
    assert harness.is_secret(secret["stringData"])
    assert harness.unsecret(secret["stringData"]) == {AUTH_TOKEN_KEY: harness.MOCK_RAY_AUTH_TOKEN}
    token = rec.one("random:index/randomPassword:RandomPassword")["inputs"]
    assert ints(token) == {"length": 64, "special": False}


def test_token_appears_nowhere_but_in_the_kubernetes_secret(each_gke_scenario):
    rec = each_gke_scenario
    for r in rec.resources:
        for key, value in r["inputs"].items():
            if (r["type"], key) == (SECRET, "stringData"):
                continue
            text = json.dumps(harness.unsecret(value))
            for secret, needles in harness.SECRET_NEEDLES.items():
                assert not any(n in text for n in needles), f"{secret} in {r['name']}.{key}"
    assert not any(v["secret"] for v in rec.data["outputs"].values())
    assert harness.MOCK_RAY_AUTH_TOKEN not in json.dumps(rec.outputs)


def test_no_ray_port_is_reachable_from_outside_the_cluster(each_gke_scenario):
    """The dashboard binds 0.0.0.0 in the Pod (the operator reaches it through the
    head Service for RayJob and RayService), so what protects the Ray ports here
    is: a ClusterIP head Service (no load balancer, no node port, no ingress),
    no other Service, the NetworkPolicy (only the cluster's own Pods, plus the
    operator's namespace and RayJob submitters to the dashboard port), and
    Ray token auth on every request."""
    rec = each_gke_scenario
    ray = rec.one(RAYCLUSTER)["inputs"]["spec"]
    head = ray["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert not head.get("enableIngress")
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert ray["authOptions"]["mode"] == "token"
    assert rec.of_type("kubernetes:core/v1:Service") == []
    assert not [r for r in k8s_resources(rec) if "Ingress" in r["type"] or "Gateway" in r["type"]]

    policy = rec.one(NETWORK_POLICY)["inputs"]
    ray_labels = {CLUSTER_LABEL: rec.outputs["rayCluster"]}
    assert policy["metadata"]["namespace"] == rec.outputs["rayNamespace"]
    assert policy["spec"]["podSelector"] == {"matchLabels": ray_labels}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for template in [head["template"]] + [g["template"] for g in ray["workerGroupSpecs"]]:
        labels = template["metadata"]["labels"]
        assert ray_labels.items() <= labels.items()  # every Ray Pod is guarded
    for rule in policy["spec"]["ingress"]:
        sources = rule.get("from")
        assert sources, f"an ingress rule without `from` admits every source: {rule}"
        for source in sources:
            assert "ipBlock" not in source, source  # nothing from outside the cluster
            assert set(source) <= {"podSelector", "namespaceSelector"}
            for selector in source.values():
                assert selector.get("matchLabels"), f"an empty selector admits all: {source}"
        ports = {int(p["port"]) for p in rule.get("ports", [])}
        opened_to_others = sources != [{"podSelector": {"matchLabels": ray_labels}}]
        if opened_to_others:
            assert ports == {8265}, rule  # the operator and submitters: dashboard only


def test_ray_objects_wait_for_the_operator_secret_and_policy(each_gke_scenario):
    rec = each_gke_scenario
    ray = rec.one(RAYCLUSTER)
    deps = set(ray["dependencies"])
    for typ in (RELEASE, SECRET, NETWORK_POLICY, "kubernetes:core/v1:ServiceAccount",
                "kubernetes:core/v1:ConfigMap", "gcp:storage/bucketIAMMember:BucketIAMMember"):
        assert rec.one(typ)["urn"] in deps, typ
    # The operator's chart installs the CRDs: it must exist before any Ray object.
    for r in k8s_resources(rec):
        if r["type"] != RELEASE:
            assert rec.one(RELEASE)["urn"] in r["dependencies"], r["name"]
    # The provider waits for the node pools: the operator and head need nodes.
    provider = rec.one(K8S_PROVIDER)
    for pool in rec.of_type(NODE_POOL):
        assert pool["urn"] in provider["dependencies"]


# ---- outputs, components ---------------------------------------------------------------


def test_gke_outputs(each_gke_scenario):
    rec = each_gke_scenario
    settings = settings_of(rec.scenario)
    out = rec.outputs
    assert set(out) == GKE_STACK_OUTPUTS
    assert out["platform"] == "gke"
    assert out["gkeCluster"] == f"{settings.cluster_name}-gke"
    assert out["getCredentials"] == (
        f"gcloud container clusters get-credentials {settings.cluster_name}-gke "
        f"--zone {settings.zone} --project {harness.TEST_PROJECT} --dns-endpoint")
    assert set(out["serviceAccounts"]) == {"gke-node"}
    assert out["rayCluster"] == settings.cluster_name


def test_stack_outputs_render_this_stacks_rayjob_with_the_cluster_command(
    each_gke_scenario, tmp_path, capsys
):
    """README's RayJob step: `pulumi stack output --json clusterSpec/kubeFacts` fed to
    `python -m cluster render` gives a RayJob whose cluster is the deployed one's."""
    from cluster.__main__ import main as cluster_main

    rec = each_gke_scenario
    (tmp_path / "spec.json").write_text(json.dumps(rec.outputs["clusterSpec"]))
    (tmp_path / "facts.json").write_text(json.dumps(rec.outputs["kubeFacts"]))
    assert cluster_main(["render", "--target", "kuberay", "--kind", "rayjob",
                         "--spec", str(tmp_path / "spec.json"),
                         "--facts", str(tmp_path / "facts.json")]) == 0
    (job,) = list(yaml.safe_load_all(capsys.readouterr().out))
    assert job["kind"] == "RayJob"
    assert job["metadata"]["namespace"] == rec.outputs["rayNamespace"]
    assert job["spec"]["rayClusterSpec"] == ints(rec.one(RAYCLUSTER)["inputs"]["spec"])
    assert f"gs://{rec.outputs['bucket']}/" in json.dumps(job["spec"]["entrypoint"])


def test_every_kubernetes_object_pulumi_declares_is_valid_for_its_schema(each_gke_scenario):
    """The objects as Pulumi would send them (the Secret too, with its value
    masked): the RayCluster against KubeRay's vendored CRD, core objects
    against the Kubernetes OpenAPI of the GKE minor we target."""
    from tests.cluster.kube_schema import core_errors, crd_errors

    for r in k8s_resources(each_gke_scenario):
        if r["type"] == RELEASE:
            continue
        obj = ints(harness.unsecret(r["inputs"]))
        errors = (crd_errors(obj) if obj["apiVersion"].startswith("ray.io/")
                  else core_errors(obj, layout.GKE_MINOR))
        assert errors == [], (r["name"], errors)


def test_this_stacks_rayjob_and_rayservice_are_valid_for_the_crds(each_gke_scenario):
    from cluster.kuberay import KubeFacts, render_rayjob, render_rayservice
    from cluster.spec import ClusterSpec
    from tests.cluster.kube_schema import crd_errors

    spec = ClusterSpec.model_validate(each_gke_scenario.outputs["clusterSpec"])
    facts = KubeFacts.model_validate(each_gke_scenario.outputs["kubeFacts"])
    for obj in (render_rayjob(spec, facts), render_rayservice(spec, facts)):
        assert crd_errors(obj) == [], obj["kind"]


def test_gke_components_own_every_resource(each_gke_scenario):
    rec = each_gke_scenario
    components = [r for r in rec.resources if not r["custom"]]
    assert {r["type"] for r in components} == GKE_COMPONENTS
    for comp in components:
        assert rec.parent_of(comp) is None
        assert comp["urn"] in rec.data["outputs_registered"], comp["name"]
    for r in rec.resources:
        if r["custom"]:
            parent = rec.parent_of(r)
            assert parent is not None and parent["type"] in GKE_COMPONENTS, r["name"]
            assert r["name"].startswith(parent["name"] + "-"), r["name"]


def test_offline_cli_lists_the_gke_cluster_pools_operator_and_ray_objects(capsys):
    from infra import offline

    assert offline.main(["--set", "ray-gcp:platform=gke"]) == 0
    out = capsys.readouterr().out
    for line in ("gke-cluster  (gcp:container/cluster:Cluster)",
                 "gke-ray-system-pool  (gcp:container/nodePool:NodePool)",
                 "gke-cpu-worker-pool  (gcp:container/nodePool:NodePool)",
                 "kuberay-release  (kubernetes:helm.sh/v3:Release)",
                 "ray-namespace  (kubernetes:core/v1:Namespace)",
                 "ray-raycluster  (kubernetes:ray.io/v1:RayCluster)"):
        assert line in out, line


# ---- settings of one platform refused on the other ----------------------------------

WRONG_PLATFORM = {
    "ssh ranges on gke": ({"ray-gcp:platform": "gke",
                           "ray-gcp:sshSourceRanges": ["203.0.113.0/24"]}, "ray-gcp:sshSourceRanges"),
    "key mode on gke": ({"ray-gcp:platform": "gke", "ray-gcp:credentialMode": "key"},
                        "ray-gcp:credentialMode"),
    "provider VM on gke": ({"ray-gcp:platform": "gke", "ray-gcp:providerMachineType": "e2-small"},
                           "ray-gcp:providerMachineType"),
    "GPU pool on vm": ({"ray-gcp:gkeGpuType": "nvidia-l4"}, "ray-gcp:gkeGpuType"),
    "pods range on vm": ({"ray-gcp:gkePodsCidr": "10.80.0.0/14"}, "ray-gcp:gkePodsCidr"),
    "channel on vm": ({"ray-gcp:platform": "vm", "ray-gcp:gkeReleaseChannel": "RAPID"},
                      "ray-gcp:gkeReleaseChannel"),
    "overlapping pods range": ({"ray-gcp:platform": "gke", "ray-gcp:gkePodsCidr": "10.8.0.0/13"},
                               "ray-gcp:gkePodsCidr"),
    "worker too small for a Ray pod": ({"ray-gcp:platform": "gke",
                                        "ray-gcp:workerMachineType": "e2-standard-1"},
                                       "ray-gcp:workerMachineType"),
    "unknown platform": ({"ray-gcp:platform": "k8s"}, "ray-gcp:platform"),
}


@pytest.mark.parametrize("case", sorted(WRONG_PLATFORM))
def test_a_setting_of_the_other_platform_stops_the_program_before_any_resource(programs, case):
    overrides, key = WRONG_PLATFORM[case]
    result = harness.run_isolated(harness.engine_config(overrides))
    error = result["error"]
    assert error is not None, f"{case}: the program accepted {overrides}"
    assert error["is_run_error"], error["traceback"]
    assert key in error["message"]
    assert "nothing was created" in error["message"]
    assert result["new_resource_calls"] == 0
    assert result["resources"] == [] and result["invokes"] == []


# ---- inputs the providers know -------------------------------------------------------

# Maps whose keys are data, not schema fields (labels, GCE metadata, Helm
# values, Secret/ConfigMap contents, Ray's start parameters, label selectors).
FREE_FORM = {"labels", "resourceLabels", "metadata", "values", "data", "stringData",
             "rayStartParams", "matchLabels", "nodeSelector", "annotations"}


def _snake_keys(value: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(value, dict) and not harness.is_secret(value):
        for key, sub in value.items():
            if "_" in key:
                found.append(f"{path}.{key}")
            if key not in FREE_FORM:
                found += _snake_keys(sub, f"{path}.{key}")
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            found += _snake_keys(sub, f"{path}[{i}]")
    return found


def test_every_input_is_a_field_the_provider_knows(any_scenario):
    """The SDK turns the fields it knows into camelCase and passes anything else
    through unchanged (a misspelt `enable_secure_bootx` arrives as is, and the
    mocks accept it). So no schema key may still contain an underscore."""
    for r in any_scenario.resources:
        if r["type"].startswith(("gcp:", "kubernetes:helm.sh")):
            assert _snake_keys(r["inputs"]) == [], r["name"]
