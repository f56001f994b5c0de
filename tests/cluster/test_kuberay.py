"""cluster.kuberay: every manifest valid against KubeRay v1.7's CRDs / Kubernetes' schemas,
in every scenario; the security and sizing rules of issue 9 hold."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)

from cluster import kube_logship, kuberay, layout, ray_start
from cluster.kuberay import (
    KubeFacts,
    example_kube_facts,
    gke_reserved_cpu_milli,
    gke_reserved_memory_mib,
    machine_shape,
    read_workloads,
    render_core_objects,
    render_raycluster,
    render_rayjob,
    render_rayservice,
    to_yaml_documents,
)
from cluster.render import example_gcp_facts, render_gcp
from cluster.spec import ClusterSpec, NodeTypeSpec, SpecError
from tests.cluster.kube_schema import CRD_DIR, core_errors, crd_errors

ROOT = Path(__file__).resolve().parents[2]
FACTS = example_kube_facts()
WORKLOADS = read_workloads()

SCENARIOS = {
    "default": ClusterSpec(),  # the stack's defaults: on-demand workers
    "default-spot": ClusterSpec.from_settings(spot_workers=True),
    "on-demand-min-workers": ClusterSpec.from_settings(
        cluster_name="team-a", min_workers=2, max_workers=8, spot_workers=False
    ),
    "gpu-pool": ClusterSpec.from_settings(
        cluster_name="gpu-team",
        max_workers=3,
        spot_workers=True,
        gpu_accelerator_type="nvidia-tesla-t4",
        gpu_accelerator_count=2,
        gpu_machine_type="n1-standard-8",
        gpu_max_workers=2,
    ),
    "gpu-l4-spot-min-workers": ClusterSpec.from_settings(
        cluster_name="l4",
        spot_workers=True,
        min_workers=1,
        max_workers=4,
        gpu_accelerator_type="nvidia-l4",
        gpu_accelerator_count=1,
        gpu_machine_type="g2-standard-8",
        gpu_max_workers=2,
    ),
    "custom-resources-conservative": ClusterSpec(
        cluster_name="custom",
        node_types={
            "head": NodeTypeSpec(machine_type="n2-highmem-8", resources={"CPU": 0, "db": 1}),
            "small": NodeTypeSpec(machine_type="e2-standard-4", min_workers=1, max_workers=2),
            "big": NodeTypeSpec(
                machine_type="c3-standard-22", max_workers=3, spot=True, resources={"CPU": 16}
            ),
        },
        max_workers=5,
        idle_timeout_minutes=2.5,
        upscaling_speed=1,
    ),
    "no-log-shipping": ClusterSpec.from_settings(log_shipping=False),
}
KINDS = {
    "RayCluster": lambda s, f: render_raycluster(s, f),
    "RayJob": lambda s, f: render_rayjob(s, f),
    "RayService": lambda s, f: render_rayservice(s, f),
}


def cluster_spec_of(obj: dict) -> dict:
    return {
        "RayCluster": lambda: obj["spec"],
        "RayJob": lambda: obj["spec"]["rayClusterSpec"],
        "RayService": lambda: obj["spec"]["rayClusterConfig"],
    }[obj["kind"]]()


def templates(cs: dict) -> list[dict]:
    return [cs["headGroupSpec"]["template"]] + [g["template"] for g in cs["workerGroupSpecs"]]


# ---- schema validity -------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_is_valid_against_the_pinned_kuberay_crds(scenario, kind):
    obj = KINDS[kind](SCENARIOS[scenario], FACTS)
    assert obj["apiVersion"] == "ray.io/v1" and obj["kind"] == kind
    assert crd_errors(obj) == []
    # Rules of KubeRay's own validation.go (beyond the CRD) that we must respect.
    cs = cluster_spec_of(obj)
    for group in [cs["headGroupSpec"], *cs["workerGroupSpecs"]]:
        assert "labels" not in group["rayStartParams"]  # use the group's labels field
        assert "resources" not in group  # not together with num-cpus in rayStartParams
        assert group["template"]["spec"]["containers"]  # at least one container


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_core_objects_are_valid_kubernetes_objects_for_the_targeted_gke_minor(scenario):
    spec = SCENARIOS[scenario]
    objs = render_core_objects(spec, FACTS, WORKLOADS)
    assert [o["kind"] for o in objs] == [
        "Namespace",
        "ServiceAccount",
        "NetworkPolicy",
        "ConfigMap",  # workloads/*.py
        *(["ConfigMap"] if spec.logs.ship else []),  # the log shipper sidecar's code
    ]
    for obj in objs:
        assert core_errors(obj, layout.GKE_MINOR) == [], obj["kind"]


def test_the_validators_reject_what_the_api_server_would_prune_or_refuse():
    """The checks above can fail: typical mistakes each give an error."""
    spec = SCENARIOS["gpu-pool"]
    ok = render_raycluster(spec, FACTS)

    def errors_after(change) -> list[str]:
        obj = json.loads(json.dumps(ok))
        change(obj)
        return crd_errors(obj)

    # A misspelt field would be pruned silently by the API server.
    assert errors_after(lambda o: o["spec"]["headGroupSpec"].update(rayStartParam={}))
    # Not a Kubernetes quantity.
    assert errors_after(
        lambda o: o["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
            "resources"
        ]["limits"].update(cpu="3.5 cores")
    )
    # rayStartParams values are strings.
    assert errors_after(lambda o: o["spec"]["headGroupSpec"]["rayStartParams"].update(port=6379))
    # Enum.
    assert errors_after(lambda o: o["spec"]["authOptions"].update(mode="Token"))
    # Required field.
    assert errors_after(lambda o: o["spec"]["workerGroupSpecs"][0].pop("groupName"))

    # Duplicate list-map key (containerPort+protocol).
    def dup_port(o):
        ports = o["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
        ports.append(dict(ports[0], name="again"))

    assert errors_after(dup_port)
    # int32 range.
    assert errors_after(lambda o: o["spec"]["workerGroupSpecs"][0].update(maxReplicas=2**31))
    # A field guarded by CEL rules we cannot evaluate offline.
    assert errors_after(lambda o: o["spec"].update(managedBy="ray.io/kuberay-operator"))
    # Invalid label value on a pod template.
    assert errors_after(
        lambda o: o["spec"]["headGroupSpec"]["template"]["metadata"]["labels"].update(x="a b")
    )

    ns = render_core_objects(spec, FACTS, WORKLOADS)[2]
    ns["spec"]["ingress"][0]["from"][0]["podSelectr"] = {}
    assert core_errors(ns, layout.GKE_MINOR)


def test_vendored_crds_are_the_pinned_release():
    source = json.loads((CRD_DIR / "SOURCE.json").read_text())
    assert source["tag"] == f"v{layout.KUBERAY_VERSION}"
    assert source["repository"] == "https://github.com/ray-project/kuberay"
    assert len(source["commit"]) == 40 and source["license"] == "Apache-2.0"
    assert "Apache License" in (CRD_DIR / "LICENSE").read_text()
    for name, meta in source["files"].items():
        data = json.loads((CRD_DIR / name).read_text())
        assert meta["path"].endswith(f"ray.io_{data['kind'].lower()}s.yaml")
        assert list(data["versions"]) == ["v1"]
    # Small enough to keep in the repo (descriptions stripped).
    assert sum(p.stat().st_size for p in CRD_DIR.iterdir()) < 700_000


# ---- what the RayCluster says -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_ray_and_python_are_pinned_in_version_and_image(kind):
    spec = SCENARIOS["gpu-pool"]
    cs = cluster_spec_of(KINDS[kind](spec, FACTS))
    assert cs["rayVersion"] == layout.RAY_VERSION == "2.60.0"
    images = {
        t["metadata"]["labels"]["ray-gcp/node-type"]: t["spec"]["containers"][0]["image"]
        for t in templates(cs)
    }
    assert images == {
        "head": "rayproject/ray:2.60.0-py311",
        "cpu-worker": "rayproject/ray:2.60.0-py311",
        "gpu-worker": "rayproject/ray:2.60.0-py311-gpu",
    }


def test_facts_refuse_an_image_of_another_ray_or_python():
    import pydantic

    ok = KubeFacts(bucket="b-1", ray_image="mirror.example/rayproject/ray:2.60.0-py311")
    assert ok.ray_image.startswith("mirror.example/")
    KubeFacts(bucket="b-1", ray_gpu_image="rayproject/ray@sha256:" + "a" * 64)
    for field, value in [
        ("ray_image", "rayproject/ray:2.59.0-py311"),
        ("ray_image", "rayproject/ray:latest"),
        ("ray_gpu_image", "rayproject/ray:2.60.0-py311"),
    ]:
        with pytest.raises(pydantic.ValidationError, match=rf"{field} '{re.escape(value)}'"):
            KubeFacts(bucket="b-1", **{field: value})


def test_token_auth_is_explicit_with_the_pulumi_secret():
    facts = KubeFacts(bucket="b-1", auth_secret_name="my-token")
    for kind, render in KINDS.items():
        cs = cluster_spec_of(render(ClusterSpec(), facts))
        assert cs["authOptions"] == {"mode": "token", "secretName": "my-token"}, kind
        # KubeRay adds RAY_AUTH_TOKEN from the Secret only where it is not set already
        # (common/pod.go SetContainerTokenAuthEnvVars): we must not set it.
        for t in templates(cs):
            names = {e["name"] for e in t["spec"]["containers"][0]["env"]}
            assert "RAY_AUTH_TOKEN" not in names and "RAY_AUTH_MODE" in names


def test_dashboard_binds_all_interfaces_so_token_auth_and_network_policy_protect_it():
    """Unlike on VMs (127.0.0.1), the operator must reach the dashboard through the
    head Service, so it binds 0.0.0.0. What keeps it private instead: token auth,
    a ClusterIP Service and a NetworkPolicy covering every Ray pod."""
    spec = SCENARIOS["gpu-pool"]
    vm_head = render_gcp(spec, example_gcp_facts())
    assert "--dashboard-host=127.0.0.1" in vm_head["head_start_ray_commands"][-1]
    policy = render_core_objects(spec, FACTS, WORKLOADS)[2]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    for kind, render in KINDS.items():
        cs = cluster_spec_of(render(spec, FACTS))
        assert cs["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
        assert cs["authOptions"]["mode"] == "token"
        assert cs["headGroupSpec"]["serviceType"] == "ClusterIP"
        assert "headService" not in cs["headGroupSpec"] and not cs["headGroupSpec"].get(
            "enableIngress"
        )
        for t in templates(cs):  # every Ray pod is under the policy
            assert selected.items() <= t["metadata"]["labels"].items(), kind
    assert policy["metadata"]["namespace"] == FACTS.namespace
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    # Only peers by selector: no ipBlock (nothing from outside the cluster).
    assert "ipBlock" not in json.dumps(rules)
    # Any port only from the same Ray cluster's pods (same namespace)...
    assert rules[0] == {"from": [{"podSelector": {"matchLabels": selected}}]}
    # ...and the dashboard port from the operator's namespace and RayJob submitters.
    assert rules[1]["ports"] == [{"protocol": "TCP", "port": ray_start.DASHBOARD_PORT}]
    assert rules[1]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}},
        {"podSelector": {"matchLabels": kuberay.SUBMITTER_LABELS}},
    ]
    assert len(rules) == 2


def test_head_ports_carry_kuberays_names_and_the_ports_ray_starts_on():
    """KubeRay builds the head Service from the head container's ports and finds the
    dashboard and Serve by name; it is on us to keep them equal to rayStartParams."""
    for kind, render in KINDS.items():
        cs = cluster_spec_of(render(SCENARIOS["gpu-pool"], FACTS))
        params = cs["headGroupSpec"]["rayStartParams"]
        ports = {
            p["name"]: p["containerPort"]
            for p in cs["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
        }
        assert ports["gcs-server"] == int(params["port"]), kind
        assert ports["dashboard"] == int(params["dashboard-port"])
        assert ports["client"] == int(params["ray-client-server-port"])
        assert (
            ports["serve"]
            == yaml.safe_load(
                kuberay.render_rayservice(SCENARIOS["gpu-pool"], FACTS)["spec"]["serveConfigV2"]
            )["http_options"]["port"]
        )
        assert ports["metrics"] == 8080  # KubeRay's default metrics-export-port


def test_no_service_is_exposed_outside_the_cluster():
    for spec in SCENARIOS.values():
        text = to_yaml_documents(
            [r(spec, FACTS) for r in KINDS.values()] + render_core_objects(spec, FACTS, WORKLOADS)
        )
        assert "LoadBalancer" not in text and "NodePort" not in text and "hostNetwork" not in text
        assert "hostPort" not in text


def test_every_pod_runs_as_the_workload_identity_ksa_with_the_workloads_mounted():
    spec = SCENARIOS["gpu-l4-spot-min-workers"]
    core = render_core_objects(spec, FACTS, WORKLOADS)
    ksa, configmap = core[1], core[3]
    for render in KINDS.values():
        obj = render(spec, FACTS)
        assert obj["metadata"]["namespace"] == ksa["metadata"]["namespace"] == FACTS.namespace
        for t in templates(cluster_spec_of(obj)):
            pod = t["spec"]
            assert pod["serviceAccountName"] == ksa["metadata"]["name"]
            assert pod["volumes"][0] == {
                "name": "workloads",
                "configMap": {"name": configmap["metadata"]["name"], "defaultMode": 0o444},
            }
            c = pod["containers"][0]
            assert c["volumeMounts"][0]["mountPath"] == layout.KUBE_WORKLOADS_DIR
            env = {e["name"]: e["value"] for e in c["env"]}
            # `import serve_app` and `from workloads import common` both resolve.
            assert env["PYTHONPATH"].split(":") == [
                str(Path(layout.KUBE_WORKLOADS_DIR).parent),
                layout.KUBE_WORKLOADS_DIR,
            ]
            assert env["RAY_GCP_BUCKET"] == FACTS.bucket
    assert kuberay.workload_identity_principal("123", "my-ray-project", FACTS) == (
        "principal://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/"
        "my-ray-project.svc.id.goog/subject/ns/ray/sa/ray-workloads"
    )


def test_workloads_configmap_carries_every_driver_deterministically_and_fits():
    cm = render_core_objects(ClusterSpec(), FACTS, WORKLOADS)[3]
    files = sorted(p.name for p in (ROOT / "workloads").glob("*.py"))
    assert sorted(cm["data"]) == files and "annotate.py" in files and "__init__.py" in files
    assert cm["data"]["annotate.py"] == (ROOT / "workloads" / "annotate.py").read_text()
    again = render_core_objects(ClusterSpec(), FACTS, read_workloads())
    assert to_yaml_documents([cm]) == to_yaml_documents([again[3]])
    # ConfigMaps are limited to 1 MiB.
    assert len(json.dumps(cm["data"]).encode()) < 1024 * 1024 * 0.9
    with pytest.raises(SpecError, match="workloads"):
        render_core_objects(ClusterSpec(), FACTS, {})


# ---- sizing and placement ----------------------------------------------------------


def test_gke_reservations_follow_the_documented_tiers():
    # cloud.google.com/kubernetes-engine/docs/concepts/plan-node-sizes, by hand:
    assert gke_reserved_cpu_milli(1) == 60
    assert gke_reserved_cpu_milli(2) == 70
    assert gke_reserved_cpu_milli(4) == 80  # 60 + 10 + 2 * 5
    assert gke_reserved_cpu_milli(8) == 90  # + 4 * 2.5
    # 16 GiB: 1024 + 819.2 + 819.2 = 2662.4 -> 2663, + 100 eviction
    assert gke_reserved_memory_mib(16 * 1024) == 2763
    # 4 GiB: 1024 + 100
    assert gke_reserved_memory_mib(4 * 1024) == 1124


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pod_requests_derive_from_the_machine_type_and_fit_its_allocatable(scenario):
    spec = SCENARIOS[scenario]
    cs = render_raycluster(spec, FACTS)["spec"]
    groups = {"head": cs["headGroupSpec"]} | {g["groupName"]: g for g in cs["workerGroupSpecs"]}
    for type_name, group in groups.items():
        t = spec.node_types[type_name]
        shape = machine_shape(t.machine_type)
        res = group["template"]["spec"]["containers"][0]["resources"]
        assert res["requests"]["cpu"] == res["limits"]["cpu"]  # Guaranteed QoS
        cpu = int(res["requests"]["cpu"].removesuffix("m"))
        mem = int(res["requests"]["memory"].removesuffix("Mi"))
        alloc_cpu = shape.vcpus * 1000 - gke_reserved_cpu_milli(shape.vcpus)
        alloc_mem = shape.memory_mib - gke_reserved_memory_mib(shape.memory_mib)
        extra_cpu = kuberay.HEAD_EXTRA_CPU_MILLI if type_name == spec.head_node_type else 0
        if spec.logs.ship:  # the pod's log shipper sidecar
            extra_cpu += kube_logship.CPU_MILLI
        # Everything left after DaemonSets (and, on the head's node, operator + sidecar).
        assert cpu == alloc_cpu - kuberay.DAEMONSET_CPU_MILLI - extra_cpu
        assert 0.6 * shape.memory_mib < mem < alloc_mem
        assert cpu > 0.6 * shape.vcpus * 1000


def test_machine_shapes_and_unknown_types_name_the_field():
    assert machine_shape("n2-standard-4").memory_mib == 16 * 1024
    assert machine_shape("n1-standard-8").memory_mib == 30 * 1024
    assert machine_shape("n2-highmem-8").memory_mib == 64 * 1024
    assert machine_shape("g2-standard-24").vcpus == 24
    for bad in ("n2-standard-3", "m3-ultramem-32", "e2-medium", "custom-4-8192"):
        with pytest.raises(SpecError) as e:
            machine_shape(bad, field="node_types['cpu-worker'].machine_type")
        assert f"node_types['cpu-worker'].machine_type = {bad!r}" in str(e.value)
        assert "n2-standard-{2,4,8" in str(e.value)
    spec = ClusterSpec.from_settings(worker_machine_type="n4-standard-8")
    with pytest.raises(
        SpecError, match=r"node_types\['cpu-worker'\].machine_type = 'n4-standard-8'"
    ):
        render_raycluster(spec, FACTS)
    # Too small to leave room for Ray on the head's node.
    with pytest.raises(SpecError, match=r"node_types\['head'\].machine_type = 'n1-standard-1'"):
        render_raycluster(ClusterSpec.from_settings(head_machine_type="n1-standard-1"), FACTS)


def test_placement_pools_spot_and_gpu():
    spec = SCENARIOS["gpu-pool"]
    cs = render_raycluster(spec, FACTS)["spec"]
    head = cs["headGroupSpec"]["template"]["spec"]
    assert head["nodeSelector"] == {"cloud.google.com/gke-nodepool": kuberay.SYSTEM_NODE_POOL}
    assert "tolerations" not in head
    groups = {g["groupName"]: g for g in cs["workerGroupSpecs"]}
    cpu, gpu = groups["cpu-worker"]["template"]["spec"], groups["gpu-worker"]["template"]["spec"]
    assert cpu["nodeSelector"] == {
        "cloud.google.com/gke-nodepool": "cpu-worker",
        "cloud.google.com/gke-spot": "true",
    }
    assert gpu["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-tesla-t4"
    assert gpu["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    on_demand = render_raycluster(SCENARIOS["on-demand-min-workers"], FACTS)["spec"]
    sel = on_demand["workerGroupSpecs"][0]["template"]["spec"]["nodeSelector"]
    assert "cloud.google.com/gke-spot" not in sel
    # A worker type may not take the system pool's name.
    clash = ClusterSpec(
        node_types={
            "head": NodeTypeSpec(machine_type="n2-standard-4"),
            "ray-system": NodeTypeSpec(machine_type="n2-standard-4", max_workers=1),
        },
        max_workers=1,
    )
    with pytest.raises(SpecError, match="ray-system"):
        render_raycluster(clash, FACTS)


# ---- autoscaling, read back by Ray's own KubeRay autoscaler ---------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rays_kuberay_autoscaler_sees_the_same_node_types_as_on_vms(scenario):
    """Ray 2.60's KubeRay autoscaler turns our RayCluster into the node types the
    GCE config has: same resources, min/max, idle timeout."""
    spec = SCENARIOS[scenario]
    rc = render_raycluster(spec, FACTS)
    cfg = _derive_autoscaling_config_from_ray_cr(rc)
    gcp = render_gcp(spec, example_gcp_facts())
    assert cfg["idle_timeout_minutes"] == pytest.approx(spec.idle_timeout_minutes)
    assert cfg["upscaling_speed"] == (1 if spec.upscaling_speed <= 1 else 1000)
    assert cfg["max_workers"] == spec.max_workers
    for name, want in gcp["available_node_types"].items():
        got = cfg["available_node_types"]["headgroup" if name == spec.head_node_type else name]
        # Ray adds memory from the container's limit; everything else must match.
        assert {k: v for k, v in got["resources"].items() if k != "memory"} == want["resources"]
        assert got["min_workers"] == want["min_workers"]
        assert got["max_workers"] == want["max_workers"]
        assert got["resources"]["memory"] > 0


def test_in_tree_autoscaler_options():
    spec = SCENARIOS["default-spot"]
    opts = render_raycluster(spec, FACTS)["spec"]
    assert opts["enableInTreeAutoscaling"] is True
    a = opts["autoscalerOptions"]
    assert a["version"] == "v2" and a["upscalingMode"] == "Aggressive"
    assert a["idleTimeoutSeconds"] == spec.idle_timeout_minutes * 60
    env = {e["name"]: e["value"] for e in a["env"]}
    n = str(ray_start.launch_concurrency(spec))
    assert env["AUTOSCALER_MAX_LAUNCH_BATCH"] == env["AUTOSCALER_MAX_CONCURRENT_LAUNCHES"] == n
    # Autoscaler v2 refuses restartPolicy other than Never/unset (KubeRay validation.go).
    for t in templates(opts):
        assert t["spec"].get("restartPolicy", "Never") == "Never"
    # No cluster-wide cap in KubeRay: a spec relying on one is refused.
    capped = ClusterSpec(
        node_types={
            "head": NodeTypeSpec(machine_type="n2-standard-4"),
            "a": NodeTypeSpec(machine_type="n2-standard-4", max_workers=4),
            "b": NodeTypeSpec(machine_type="n2-standard-4", max_workers=4),
        },
        max_workers=5,
    )
    with pytest.raises(SpecError, match=r"max_workers = 5 < 8"):
        render_raycluster(capped, FACTS)


# ---- RayJob / RayService -----------------------------------------------------------------


def test_rayjob_runs_annotate_between_gs_prefixes_and_cleans_up():
    spec = SCENARIOS["gpu-pool"]
    job = render_rayjob(spec, FACTS, ttl_seconds_after_finished=120)["spec"]
    assert job["entrypoint"] == (
        f"python {layout.KUBE_WORKLOADS_DIR}/annotate.py "
        f"--input gs://{FACTS.bucket}/annotate/input --output gs://{FACTS.bucket}/annotate/output"
    )
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] == 120
    assert job["rayClusterSpec"] == kuberay.raycluster_spec(spec, FACTS)
    assert yaml.safe_load(job["runtimeEnvYAML"]) == {"pip": list(kuberay.WORKLOAD_PIP)}
    custom = render_rayjob(spec, FACTS, ["python", "x y.py", "--n", "3"], name="j1")
    assert custom["spec"]["entrypoint"] == "python 'x y.py' --n 3"
    assert custom["metadata"]["name"] == "j1"
    with pytest.raises(SpecError, match="RayJob name"):
        render_rayjob(spec, FACTS, name="j" * 48)
    with pytest.raises(SpecError, match="entrypoint"):
        render_rayjob(spec, FACTS, " ")


def test_workload_pip_pins_are_the_locked_versions():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    for req in kuberay.WORKLOAD_PIP:
        name, version = req.split("==")
        assert locked[name] == version, req


def test_rayservice_imports_our_serve_app_on_a_cluster_from_the_same_renderer():
    spec = SCENARIOS["default-spot"]
    svc = render_rayservice(spec, FACTS)["spec"]
    serve = yaml.safe_load(svc["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == "serve_app:app"
    assert serve["http_options"]["host"] == "0.0.0.0"
    assert svc["rayClusterConfig"] == kuberay.raycluster_spec(spec, FACTS)
    with pytest.raises(SpecError, match="RayService name"):
        render_rayservice(spec, FACTS, name="s" * 48)


def test_renderers_are_pure_and_deterministic():
    spec = SCENARIOS["custom-resources-conservative"]
    a = to_yaml_documents([r(spec, FACTS) for r in KINDS.values()])
    b = to_yaml_documents([r(spec, FACTS) for r in KINDS.values()])
    assert a == b
    assert len(list(yaml.safe_load_all(a))) == 3


def test_cli_prints_each_kind_for_kubectl(capsys, tmp_path):
    from cluster.__main__ import main

    for kind, want in [
        ("raycluster", ["RayCluster"]),
        ("rayjob", ["RayJob"]),
        ("rayservice", ["RayService"]),
        ("core", ["Namespace", "ServiceAccount", "NetworkPolicy", "ConfigMap", "ConfigMap"]),
    ]:
        assert main(["render", "--target", "kuberay", "--kind", kind]) == 0
        docs = list(yaml.safe_load_all(capsys.readouterr().out))
        assert [d["kind"] for d in docs] == want
        if kind != "core":
            assert docs[0] == KINDS[want[0]](ClusterSpec(), FACTS)
    bad = tmp_path / "spec.yaml"
    bad.write_text(
        yaml.safe_dump(ClusterSpec.from_settings(worker_machine_type="n4-standard-8").model_dump())
    )
    assert main(["render", "--target", "kuberay", "--spec", str(bad)]) == 2
    assert "n4-standard-8" in capsys.readouterr().err


# ---- Ray's log files leave the pods (issue 23) ----------------------------------------


def _containers(pod_spec: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod_spec["containers"]}


@pytest.mark.parametrize("kind", KINDS)
def test_every_ray_pod_ships_its_ray_logs_with_a_sidecar(kind):
    """The shipper of the VMs (cluster/logship.py), beside each Ray container: the
    same image, the Ray logs through a shared emptyDir (KubeRay's own `ray-logs` name,
    which its operator reuses for the autoscaler), the pod's name as the node's."""
    from cluster import logship_cli

    spec = SCENARIOS["gpu-l4-spot-min-workers"]
    cs = cluster_spec_of(KINDS[kind](spec, FACTS))
    groups = [("head", cs["headGroupSpec"], True)] + [
        (g["groupName"], g, False) for g in cs["workerGroupSpecs"]]
    for type_name, group, head in groups:
        pod = group["template"]["spec"]
        ray, ship = (_containers(pod)[n] for n in (pod["containers"][0]["name"],
                                                     kube_logship.CONTAINER))
        assert ship["image"] == ray["image"]  # pinned, already on the node
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["ray-logs"] == {"name": "ray-logs", "emptyDir": {}}
        assert volumes[kube_logship.CODE_VOLUME]["configMap"]["name"] == kube_logship.CONFIGMAP
        assert {"name": "ray-logs", "mountPath": "/tmp/ray"} in ray["volumeMounts"]
        assert {"name": "ray-logs", "mountPath": "/tmp/ray", "readOnly": True} in (
            ship["volumeMounts"])
        assert ship["resources"]["requests"] == ship["resources"]["limits"]  # Guaranteed QoS
        env = {e["name"]: e for e in ship["env"]}
        assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert ship["command"][:4] == ["python", "-m", "cluster.logship", "run"]
        args = logship_cli._parser().parse_args(
            [a.replace("$(POD_NAME)", "ray-gcp-head-x7k2p") for a in ship["command"][3:]])
        assert (args.bucket, args.cluster, args.role, args.node_type, args.node) == (
            FACTS.bucket, spec.cluster_name, "head" if head else "worker", type_name,
            "ray-gcp-head-x7k2p")
        assert args.logs_dir == "/tmp/ray/session_latest/logs"


def test_the_shipper_configmap_is_the_stdlib_only_shipper_and_runs_on_a_bare_python(tmp_path):
    import subprocess
    import sys

    core = render_core_objects(ClusterSpec(), FACTS, WORKLOADS)
    (cm,) = [o for o in core if o["metadata"]["name"] == kube_logship.CONFIGMAP]
    assert sorted(cm["data"]) == sorted(kube_logship.FILES)
    assert cm["data"]["logship.py"] == (ROOT / "cluster" / "logship.py").read_text()
    # As the sidecar has it: only these files, as the package `cluster`, on a Python
    # without site-packages (the Ray image's packages are not needed).
    pkg = tmp_path / "cluster"
    pkg.mkdir()
    for name, text in cm["data"].items():
        (pkg / name).write_text(text)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import cluster.logship; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names))"
    )
    out = subprocess.run([sys.executable, "-S", "-I", "-c", probe, str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(sorted(["__main__", "cluster", "cluster.gcs_http",
                                      "cluster.logpaths", "cluster.logship"]))
    # Its command line too (python -m cluster.logship run ... in the sidecar).
    probe = "import sys; sys.path.insert(0, sys.argv[1]); import cluster.logship_cli"
    subprocess.run([sys.executable, "-S", "-I", "-c", probe, str(tmp_path)], check=True)


def test_without_log_shipping_no_sidecar_and_no_configmap():
    spec = SCENARIOS["no-log-shipping"]
    for render in KINDS.values():
        for t in templates(cluster_spec_of(render(spec, FACTS))):
            assert [c["name"] for c in t["spec"]["containers"]] in (["ray-head"], ["ray-worker"])
            assert [v["name"] for v in t["spec"]["volumes"]] == ["workloads"]
    names = [o["metadata"]["name"] for o in render_core_objects(spec, FACTS, WORKLOADS)]
    assert kube_logship.CONFIGMAP not in names
