"""render_gcp / render_local: Ray's own validation accepts them; issue 3's rules hold."""

from __future__ import annotations

import copy
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.gcp.node_provider import GCPNodeProvider
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

from cluster import layout
from cluster.bundle import build_bundle
from cluster.render import (
    CLOUD_PLATFORM_SCOPE,
    LOCAL_HEAD_TYPE,
    LOCAL_PROVIDER_MODULE,
    PROVIDER_MODULE,
    example_gcp_facts,
    launch_concurrency,
    render_gcp,
    render_local,
    to_yaml,
)
from cluster.spec import ClusterSpec, NodeTypeSpec, local_default_spec

ROOT = Path(__file__).resolve().parents[2]
FACTS = example_gcp_facts()
COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)

SPECS = {
    "default": ClusterSpec(),
    "settings": ClusterSpec.from_settings(
        cluster_name="team-a", min_workers=2, max_workers=8, spot_workers=False
    ),
    "gpu": ClusterSpec.from_settings(
        cluster_name="gpu-team",
        max_workers=3,
        gpu_accelerator_type="nvidia-tesla-t4",
        gpu_accelerator_count=2,
        gpu_machine_type="n1-standard-8",
        gpu_max_workers=2,
    ),
    "custom": ClusterSpec(
        cluster_name="c" * 35,
        head_node_type="boss",
        node_types={
            "boss": NodeTypeSpec(machine_type="e2-standard-2", resources={"CPU": 1, "head": 1}),
            "small": NodeTypeSpec(machine_type="e2-standard-4", max_workers=10, spot=True),
            "big": NodeTypeSpec(machine_type="n2-highmem-16", min_workers=1, max_workers=2),
        },
        max_workers=12,
        idle_timeout_minutes=2.5,
        upscaling_speed=3,
    ),
}


@pytest.fixture(params=sorted(SPECS), ids=sorted(SPECS))
def spec(request) -> ClusterSpec:
    return SPECS[request.param]


@pytest.fixture
def cfg(spec) -> dict:
    return render_gcp(spec, FACTS)


def node_configs(cfg: dict) -> dict[str, dict]:
    return {n: t["node_config"] for n, t in cfg["available_node_types"].items()}


# ---- Ray accepts it ------------------------------------------------------------


def test_ray_validation_accepts_it(cfg, spec, tmp_path):
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    filled = GCPNodeProvider.fillout_available_node_types_resources(prepared)
    assert filled["available_node_types"].keys() == spec.node_types.keys()
    # What autoscaler v2 parses on the head (prepare_config + validate_config again;
    # it hashes the key file, which on the head is ~/ray_bootstrap_key.pem).
    on_head = copy.deepcopy(cfg)
    key = tmp_path / "ray_bootstrap_key.pem"
    key.write_text("fake key")
    on_head["auth"]["ssh_private_key"] = str(key)
    v2 = AutoscalingConfig(on_head, skip_content_hash=True)
    assert v2.get_max_num_worker_nodes() == spec.max_workers
    assert set(v2.get_node_type_configs()) == set(spec.node_types)


def test_no_ray_default_leaks_in(cfg):
    prepared = prepare_config(copy.deepcopy(cfg))
    for key in COMMAND_LISTS:
        assert key in cfg, key
    # prepare_config only prepends the shared setup_commands (merge_setup_commands).
    assert prepared["head_setup_commands"] == cfg["setup_commands"] + cfg["head_setup_commands"]
    assert prepared["worker_setup_commands"] == (
        cfg["setup_commands"] + cfg["worker_setup_commands"]
    )
    for key in ("initialization_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert prepared[key] == cfg[key]
    text = to_yaml(prepared)
    assert "0.0.0.0" not in text
    assert "nightly" not in text and "wheels" not in text and "s3-us-west" not in text


def test_max_workers_and_autoscaling_follow_the_spec(cfg, spec):
    assert cfg["max_workers"] == spec.max_workers
    assert cfg["idle_timeout_minutes"] == spec.idle_timeout_minutes
    assert cfg["upscaling_speed"] == spec.upscaling_speed
    for name, t in spec.node_types.items():
        entry = cfg["available_node_types"][name]
        assert (entry["min_workers"], entry["max_workers"]) == (t.min_workers, t.max_workers)
        assert entry["resources"] == t.ray_resources()
    assert cfg["head_node_type"] == spec.head_node_type


def test_default_spec_scales_a_burst_in_one_round():
    cfg = render_gcp(ClusterSpec(), FACTS)
    assert cfg["max_workers"] == 6
    assert cfg["upscaling_speed"] >= 1000
    start = cfg["head_start_ray_commands"][-1]
    n = launch_concurrency(ClusterSpec())
    assert n >= 6
    assert f"AUTOSCALER_MAX_LAUNCH_BATCH={n}" in start
    assert f"AUTOSCALER_MAX_CONCURRENT_LAUNCHES={n}" in start


# ---- network, identity, ssh, shielded VM -----------------------------------------


def test_nodes_are_private_on_our_subnet(cfg):
    assert cfg["provider"]["use_internal_ips"] is True
    for name, nc in node_configs(cfg).items():
        assert nc["networkInterfaces"] == [
            {"subnetwork": FACTS.subnetwork, "stackType": "IPV4_ONLY"}
        ], name
        assert "accessConfigs" not in to_yaml(nc)


def test_head_and_worker_service_accounts(cfg, spec):
    for name, nc in node_configs(cfg).items():
        want = (
            FACTS.head_service_account
            if name == spec.head_node_type
            else FACTS.worker_service_account
        )
        assert nc["serviceAccounts"] == [{"email": want, "scopes": [CLOUD_PLATFORM_SCOPE]}]


def test_launcher_key_and_no_os_login(cfg):
    assert cfg["auth"] == {
        "ssh_user": layout.NODE_SSH_USER,
        "ssh_private_key": layout.OPERATOR_SSH_KEY,
    }
    for nc in node_configs(cfg).values():
        items = {i["key"]: i["value"] for i in nc["metadata"]["items"]}
        assert items["ssh-keys"] == f"ray:{FACTS.ssh_public_key}"
        assert items["enable-oslogin"] == "FALSE"
        assert items["block-project-ssh-keys"] == "TRUE"
        assert "startup-script" not in items  # nothing secret or executable in metadata


def test_shielded_labelled_pinned_image(cfg, spec):
    for name, nc in node_configs(cfg).items():
        t = spec.node_types[name]
        shielded = nc["shieldedInstanceConfig"]
        assert shielded["enableVtpm"] and shielded["enableIntegrityMonitoring"]
        # Secure Boot everywhere except GPU nodes (unsigned DKMS NVIDIA module).
        assert shielded["enableSecureBoot"] is (not t.is_gpu)
        assert nc["labels"]["ray-gcp-cluster"] == spec.cluster_name
        assert nc["labels"]["ray-gcp-node-type"] == name
        (disk,) = nc["disks"]
        assert disk["initializeParams"]["sourceImage"] == FACTS.image
        assert "/family/" not in disk["initializeParams"]["sourceImage"]
        assert nc["machineType"] == t.machine_type
        for value in nc["labels"].values():
            assert re.fullmatch(r"[a-z0-9_-]{1,63}", value), value


def test_spot_and_on_demand_scheduling(cfg, spec):
    for name, nc in node_configs(cfg).items():
        t = spec.node_types[name]
        if t.spot:
            assert nc["scheduling"] == {
                "provisioningModel": "SPOT",
                "instanceTerminationAction": "DELETE",
                "onHostMaintenance": "TERMINATE",
                "automaticRestart": False,
            }
        else:
            assert nc["scheduling"]["provisioningModel"] == "STANDARD"
    assert cfg["provider"]["cache_stopped_nodes"] is False


def test_gpu_type_gets_accelerators_and_a_driver():
    spec = SPECS["gpu"]
    cfg = render_gcp(spec, FACTS)
    gpu = cfg["available_node_types"]["gpu-worker"]
    nc = gpu["node_config"]
    assert nc["guestAccelerators"] == [
        {"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 2}
    ]
    assert nc["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert gpu["resources"] == {"CPU": 8, "GPU": 2}
    # The type's own list replaces setup_commands + worker_setup_commands in Ray,
    # so it starts with the common setup and ends with the driver.
    cmds = gpu["worker_setup_commands"]
    assert cmds[: len(cfg["setup_commands"])] == cfg["setup_commands"]
    assert "nvidia-driver" in cmds[-1] and "nvidia-smi" in cmds[-1]
    assert "guestAccelerators" not in cfg["available_node_types"]["cpu-worker"]["node_config"]


# ---- zero-write bootstrap provider --------------------------------------------------


def test_provider_is_our_read_only_external_provider(cfg):
    from ray.autoscaler._private.providers import _get_node_provider_cls

    from cluster.gcp_provider import ReadOnlyGCPNodeProvider

    provider = cfg["provider"]
    assert provider["type"] == "external"
    assert provider["module"] == PROVIDER_MODULE
    assert (provider["project_id"], provider["region"], provider["availability_zone"]) == (
        FACTS.project,
        FACTS.region,
        FACTS.zone,
    )
    cls = _get_node_provider_cls(provider)  # Ray's loader for type: external
    assert cls is ReadOnlyGCPNodeProvider
    assert issubclass(cls, GCPNodeProvider)


# ---- versions, token, bundle ---------------------------------------------------------


def test_nodes_install_exactly_the_lock_with_pinned_uv(cfg):
    setup = "\n".join(cfg["setup_commands"])
    # uv's wheel checked against the bundle's hashes; the version check keeps it exact.
    assert f'= "{layout.UV_VERSION}" ]' in setup
    assert f"--no-deps --require-hashes -r {layout.NODE_SRC}/{layout.UV_REQUIREMENTS}" in setup
    pins = (ROOT / layout.UV_REQUIREMENTS).read_text()
    assert f"\nuv=={layout.UV_VERSION} \\\n" in pins and pins.count("--hash=sha256:") == 2
    assert (
        f"pip sync --require-hashes --python {layout.NODE_VENV}/bin/python "
        f"{layout.NODE_SRC}/cluster/requirements-node.txt"
    ) in setup
    assert f"/usr/bin/python{layout.PYTHON_MINOR}" in setup
    assert "UV_PYTHON_DOWNLOADS=never" in setup
    assert "rsync" in cfg["initialization_commands"][0]
    requirements = (ROOT / "cluster/requirements-node.txt").read_text()
    assert re.search(
        rf"^ray(\[default\])?=={re.escape(layout.RAY_VERSION)} ", requirements, re.MULTILINE
    )


def test_ray_start_is_refused_on_a_version_mismatch(cfg):
    check = (
        f"{layout.NODE_VENV}/bin/python -m cluster.node_check "
        f"--ray {layout.RAY_VERSION} --python {layout.PYTHON_MINOR}"
    )
    for key, extra in (("head_start_ray_commands", " --head"), ("worker_start_ray_commands", "")):
        cmds = cfg[key]
        assert cmds[0] == check + extra
        starts = [i for i, c in enumerate(cmds) if " start " in c]
        assert starts and min(starts) > 0  # Ray starts only after the check passed


def test_token_auth_and_loopback_dashboard(cfg):
    head = cfg["head_start_ray_commands"][-1]
    worker = cfg["worker_start_ray_commands"][-1]
    for cmd in (head, worker):
        assert "export RAY_AUTH_MODE=token" in cmd
    assert "--dashboard-host=127.0.0.1" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert cfg["file_mounts"][layout.NODE_AUTH_TOKEN] == layout.OPERATOR_AUTH_TOKEN
    assert f"chmod 600 {layout.NODE_AUTH_TOKEN}" in "\n".join(cfg["setup_commands"])
    # Drivers on the head: token auth via ~/.ray-gcp-env, sourced by ~/.bashrc.
    assert "'export RAY_AUTH_MODE=token'" in cfg["setup_commands"][-2]
    assert cfg["setup_commands"][-1].endswith("echo '. ~/.ray-gcp-env' >> ~/.bashrc")


def test_bundle_reaches_every_node(cfg):
    assert cfg["file_mounts"][layout.NODE_SRC] == layout.PROVIDER_SRC
    assert "ray-gcp-src.pth" in "\n".join(cfg["setup_commands"])


def test_pth_and_node_check_commands_work_in_a_sandbox(tmp_path):
    """Run the rendered .pth and node-check commands for real in a fresh venv.

    The venv has no Ray (nothing can be installed offline), so the check must
    refuse to start Ray with a clear message, after the bundle became importable.
    """
    home = tmp_path / "home"
    src = home / layout.NODE_SRC.removeprefix("~/")
    src.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(build_bundle(ROOT)), mode="r:gz") as tar:
        tar.extractall(src, filter="data")
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(home / "ray-venv")], check=True)
    cfg = render_gcp(ClusterSpec(), FACTS)
    pth_cmd = next(c for c in cfg["setup_commands"] if "ray-gcp-src.pth" in c)
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    subprocess.run(["bash", "-c", pth_cmd], env=env, check=True)
    imported = subprocess.run(
        [
            str(home / "ray-venv/bin/python"),
            "-c",
            "import cluster, workloads; print(cluster.__file__)",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert imported.stdout.strip() == str(src / "cluster" / "__init__.py")
    check = subprocess.run(
        ["bash", "-c", cfg["worker_start_ray_commands"][0]],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert check.returncode == 1
    assert "Ray is not installed" in check.stderr
    assert "refusing to start Ray" in check.stderr


# ---- YAML text -------------------------------------------------------------------
# That the text is the same in every process: tests/infra/test_vm_inputs_reproducible.py.


def test_yaml_round_trips_without_anchors(cfg):
    text = to_yaml(cfg)
    assert yaml.safe_load(text) == cfg
    assert "&id" not in text and "*id" not in text  # no anchors/aliases


# ---- local -------------------------------------------------------------------------


def test_render_local_is_valid_and_mirrors_the_spec():
    spec = local_default_spec()
    cfg = render_local(spec, gcs_port=43210)
    # Through the external loader, so prepare_config (autoscaler v2) works too.
    validate_config(prepare_config(copy.deepcopy(cfg)))
    assert cfg["provider"]["type"] == "external"
    assert cfg["provider"]["module"] == LOCAL_PROVIDER_MODULE
    from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
    from ray.autoscaler._private.providers import _get_node_provider_cls

    from cluster.local_provider import LocalZonalNodeProvider

    assert _get_node_provider_cls(cfg["provider"]) is LocalZonalNodeProvider
    assert issubclass(LocalZonalNodeProvider, FakeMultiNodeProvider)
    assert cfg["provider"]["availability_zone"] == "local-a"
    assert cfg["provider"]["fallback_zones"] == ["local-b"]
    assert cfg["provider"]["full_zones"] == []
    assert cfg["provider"]["gcs_address"] == "127.0.0.1:43210"
    assert cfg["head_node_type"] == LOCAL_HEAD_TYPE
    assert cfg["available_node_types"][LOCAL_HEAD_TYPE]["resources"] == {"CPU": 0}
    worker = cfg["available_node_types"]["cpu-worker"]
    assert worker["resources"]["CPU"] == 2
    assert worker["max_workers"] == spec.worker_types["cpu-worker"].max_workers
    for key in COMMAND_LISTS:
        assert cfg[key] == []


# ---- logs (issue 23) -------------------------------------------------------------


def test_every_node_starts_its_log_shipper_between_ray_stop_and_ray_start(cfg, spec):
    """After `ray stop` (which leaves the shipper alone: tests/cluster/test_logship.py),
    before `ray start` (so even a failing start is shipped); the shipper's own
    parser accepts the rendered options once the shell has expanded them."""
    import shlex

    from cluster import logship_cli

    for key, role in (("head_start_ray_commands", "head"), ("worker_start_ray_commands", "worker")):
        cmds = cfg[key]
        stop = next(i for i, c in enumerate(cmds) if c.endswith("/ray stop"))
        ship = next(i for i, c in enumerate(cmds) if "-m cluster.logship start" in c)
        start = next(i for i, c in enumerate(cmds) if "/ray start " in c)
        assert stop < ship < start, cmds
        argv = shlex.split(cmds[ship].replace("$(hostname)", "ray-x-worker-1a2b3c4d-compute")
                           .replace("${RAY_NODE_TYPE_NAME:-}", "cpu-worker"))
        assert argv[:3] == [f"{layout.NODE_VENV}/bin/python", "-m", "cluster.logship"]
        args = logship_cli._parser().parse_args(argv[3:])
        assert (args.command, args.bucket, args.cluster, args.role) == (
            "start", FACTS.bucket, spec.cluster_name, role)
        assert args.logs_dir == "/tmp/ray/session_latest/logs"  # Ray's default temp dir
        assert (args.interval_s, args.max_file_bytes) == (
            spec.logs.interval_s, spec.logs.max_file_bytes)
        assert '--node "$(hostname)"' in cmds[ship]  # the VM's instance name
        assert '--node-type "${RAY_NODE_TYPE_NAME:-}"' in cmds[ship]  # set by `ray up`
        # Ray's own rotation, on both nodes' `ray start`.
        assert f"RAY_ROTATION_MAX_BYTES={spec.logs.rotate_bytes}" in cmds[start]


def test_drivers_copy_their_output_and_the_reader_finds_the_bucket(cfg):
    env_file = next(c for c in cfg["setup_commands"] if "~/.ray-gcp-env" in c and "printf" in c)
    assert "'export RAY_RUNTIME_ENV_HOOK=cluster.driver_log.hook'" in env_file
    assert cfg["provider"]["log_bucket"] == FACTS.bucket  # for `python -m cluster logs`


def test_without_log_shipping_nothing_ships():
    spec = ClusterSpec(logs={"ship": False})
    cfg = render_gcp(spec, FACTS)
    text = to_yaml(cfg)
    assert "cluster.logship" not in text and "RAY_RUNTIME_ENV_HOOK" not in text
    assert "log_bucket" not in cfg["provider"]
    # Ray's rotation stays: it bounds the node's disk either way.
    assert "RAY_ROTATION_MAX_BYTES" in cfg["worker_start_ray_commands"][-1]
    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_render_local_gives_each_fake_node_a_directory_and_a_shipper():
    spec = local_default_spec()
    plain = render_local(spec, gcs_port=6379)
    assert "log_shipping" not in plain["provider"] and "node_temp_root" not in plain["provider"]
    shipping = render_local(spec, gcs_port=6379, node_temp_root="/tmp/rg-x",
                            log_bucket="b-logs", log_endpoint="http://127.0.0.1:9")
    assert shipping["provider"]["node_temp_root"] == "/tmp/rg-x"
    assert shipping["provider"]["log_shipping"] == {
        "bucket": "b-logs", "endpoint": "http://127.0.0.1:9",
        "interval_s": spec.logs.interval_s, "max_file_bytes": spec.logs.max_file_bytes}
