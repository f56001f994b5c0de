"""One source of truth: VMs, the local cluster and KubeRay pods start Ray with the
same `ray start` parameters and environment (cluster.ray_start), read back by
Ray's own `ray start` option parser."""

from __future__ import annotations

import shlex

import pytest
import ray.scripts.scripts as ray_scripts

from cluster import kuberay, ray_start
from cluster.local import LocalCluster
from cluster.render import example_gcp_facts, render_gcp
from cluster.spec import ClusterSpec, NodeTypeSpec

SPEC = ClusterSpec(
    cluster_name="same",
    node_types={
        "head": NodeTypeSpec(machine_type="n2-standard-8", resources={"CPU": 2, "db": 1}),
        "cpu": NodeTypeSpec(machine_type="n2-standard-4", max_workers=3, spot=True),
        "gpu": NodeTypeSpec(
            machine_type="n1-standard-8",
            max_workers=2,
            accelerator_type="nvidia-tesla-t4",
            accelerator_count=1,
            resources={"acc": 2},
        ),
    },
    max_workers=5,
)
# What differs between platforms on purpose, and nothing else.
LOCAL_PORTS = {"port", "object_manager_port", "ray_client_server_port", "dashboard_port"}
LOCAL_ONLY = {
    "node_ip_address",
    "metrics_export_port",
    "dashboard_agent_listen_port",
    "dashboard_agent_grpc_port",
    "runtime_env_agent_port",
    "node_manager_port",
    "min_worker_port",
    "max_worker_port",
    "object_store_memory",
    "temp_dir",
    "autoscaling_config",
}


def parse(argv: list[str]) -> dict:
    """`ray start` argv as Ray 2.60's own click parser reads it (only what was given)."""
    ctx = ray_scripts.start.make_context("start", list(argv))
    given = {a.split("=", 1)[0] for a in argv}
    names = {p.name for p in ray_scripts.start.params if given & set(p.opts)}
    assert len(names) == len(given), f"unknown options in {argv}"
    return {k: v for k, v in ctx.params.items() if k in names}


def kuberay_argv(params: dict[str, str]) -> list[str]:
    """What KubeRay v1.7.0 makes of rayStartParams (common/pod.go convertParamMap):
    sorted keys, "true"/"false" as switches, values pasted into a shell line."""
    line = []
    for key in sorted(params):
        value = params[key]
        if value.lower() in ("true", "false"):
            if value.lower() == "true":
                line.append(f" --{key} ")
        else:
            line.append(f" --{key}={value} ")
    return shlex.split("".join(line))


def vm_command(spec: ClusterSpec, key: str) -> tuple[dict[str, str], list[str]]:
    """(exported env, `ray start` argv) of a rendered VM start command."""
    line = render_gcp(spec, example_gcp_facts())[key][-1]
    exports, _, rest = line.partition(";")
    env = dict(kv.split("=", 1) for kv in shlex.split(exports.removeprefix("export ")))
    argv = shlex.split(rest.split(" start ", 1)[1])
    return env, argv


def local_cluster(tmp_path) -> LocalCluster:
    lc = LocalCluster(tmp_path / "state", SPEC)
    names = ["gcs", "dashboard", "client_server", "object_manager", "metrics_export",
             "dashboard_agent_listen", "dashboard_agent_grpc", "runtime_env_agent",
             "node_manager", "autoscaler_metrics", "dashboard_metrics"]  # fmt: skip
    lc._state = {"ports": {n: 20000 + i for i, n in enumerate(names)}, "temp_dir": str(tmp_path)}
    return lc


def test_head_is_started_alike_on_vms_locally_and_on_pods(tmp_path):
    _, vm_argv = vm_command(SPEC, "head_start_ray_commands")
    vm = parse(vm_argv)
    lc = local_cluster(tmp_path)
    local = parse(lc.head_argv()[1:])
    rc = kuberay.render_raycluster(SPEC, kuberay.example_kube_facts())
    pod = parse(["--head", *kuberay_argv(rc["spec"]["headGroupSpec"]["rayStartParams"])])

    # The resources Ray schedules with come from the spec, on all three.
    assert vm["num_cpus"] == local["num_cpus"] == pod["num_cpus"] == 2
    assert vm["resources"] == local["resources"] == pod["resources"] == '{"db": 1}'
    assert vm["disable_usage_stats"] and local["disable_usage_stats"] and pod["disable_usage_stats"]
    # Pods: exactly the VM's parameters, except where the dashboard binds (the
    # operator reaches it through the head Service) and the autoscaling config
    # (KubeRay's sidecar autoscales).
    assert pod["dashboard_host"] == "0.0.0.0" and vm["dashboard_host"] == "127.0.0.1"
    assert {k: v for k, v in vm.items() if k not in ("dashboard_host", "autoscaling_config")} == {
        k: v for k, v in pod.items() if k != "dashboard_host"
    }
    # Local: the VM's parameters with its own free ports and local-only extras.
    same = set(vm) - LOCAL_PORTS - LOCAL_ONLY
    assert {k: local[k] for k in same} == {k: vm[k] for k in same}
    assert set(local) - set(vm) <= LOCAL_ONLY
    assert local["port"] == lc._state["ports"]["gcs"]


def test_workers_are_started_alike_on_vms_and_pods():
    _, vm_argv = vm_command(SPEC, "worker_start_ray_commands")
    vm = parse(vm_argv)
    rc = kuberay.render_raycluster(SPEC, kuberay.example_kube_facts())
    groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    for name, t in SPEC.worker_types.items():
        pod = parse(kuberay_argv(groups[name]["rayStartParams"]))
        # VMs get resources from the autoscaler (RAY_OVERRIDE_RESOURCES); pods say them.
        resources = t.ray_resources()
        assert pod.pop("num_cpus") == resources.pop("CPU")
        if "GPU" in resources:
            assert pod.pop("num_gpus") == resources.pop("GPU")
        if resources:
            import json

            assert json.loads(pod.pop("resources")) == resources
        assert {k: v for k, v in vm.items() if k != "address"} == pod


def test_environment_is_the_same_everywhere(tmp_path):
    vm_head_env, _ = vm_command(SPEC, "head_start_ray_commands")
    vm_worker_env, _ = vm_command(SPEC, "worker_start_ray_commands")
    assert vm_head_env == ray_start.autoscaler_env(SPEC)
    assert vm_worker_env == ray_start.node_env(SPEC) == {
        "RAY_AUTH_MODE": "token",
        # Ray's own log rotation, sized by the spec (cluster.spec.LogSpec).
        "RAY_ROTATION_MAX_BYTES": str(SPEC.logs.rotate_bytes),
        "RAY_ROTATION_BACKUP_COUNT": str(SPEC.logs.rotate_backups),
    }
    local_env = local_cluster(tmp_path)._head_env()
    assert ray_start.node_env(SPEC).items() <= local_env.items()
    rc = kuberay.render_raycluster(SPEC, kuberay.example_kube_facts())["spec"]
    sidecar = {e["name"]: e["value"] for e in rc["autoscalerOptions"]["env"]}
    # KubeRay's autoscaler sidecar gets what the VM head's monitor gets.
    assert sidecar == vm_head_env
    for t in [rc["headGroupSpec"]["template"]] + [g["template"] for g in rc["workerGroupSpecs"]]:
        env = {e["name"]: e.get("value") for e in t["spec"]["containers"][0]["env"]}
        assert ray_start.node_env(SPEC).items() <= env.items()


def test_every_parameter_is_a_ray_start_option():
    options = {p.name.replace("_", "-") for p in ray_scripts.start.params}
    params = {
        **ray_start.head_params(SPEC, autoscaling_config="x"),
        **ray_start.worker_params(SPEC, "gpu"),
    }
    assert set(params) <= options


def test_gpu_head_is_refused_on_gke():
    spec = ClusterSpec(
        node_types={
            "head": NodeTypeSpec(
                machine_type="n1-standard-8",
                accelerator_type="nvidia-tesla-t4",
                accelerator_count=1,
            ),
            "w": NodeTypeSpec(machine_type="n2-standard-4", max_workers=1),
        },
        max_workers=1,
    )
    with pytest.raises(kuberay.SpecError, match=r"node_types\['head'\].accelerator_count"):
        kuberay.render_raycluster(spec, kuberay.example_kube_facts())
