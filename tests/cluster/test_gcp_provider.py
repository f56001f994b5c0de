"""Ray's own bootstrap and launch paths with cluster.gcp_provider, against recording fakes.

* ``ray up`` on the provider VM: ``commands._bootstrap_config`` (prepare_config,
  the external-provider loader, fillout, validate_config, our static
  ``bootstrap_config``) must make exactly four GET calls and change nothing.
* The head's autoscaler: v1 (``BaseNodeLauncher``, what ``StandardAutoscaler``
  uses) and v2 (``NodeProviderAdapter`` over ``FileConfigReader``) load the
  provider from the bootstrapped config and launch private VMs.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private import commands
from ray.autoscaler._private.command_runner import SSHCommandRunner
from ray.autoscaler._private.event_summarizer import EventSummarizer
from ray.autoscaler._private.node_launcher import BaseNodeLauncher
from ray.autoscaler._private.node_provider_availability_tracker import (
    NodeProviderAvailabilityTracker,
)
from ray.autoscaler._private.providers import _get_node_provider
from ray.autoscaler._private.util import validate_config
from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE
from ray.autoscaler.v2.instance_manager.config import FileConfigReader
from ray.autoscaler.v2.instance_manager.node_provider import NodeProviderAdapter

from cluster.gcp_provider import BootstrapCheckError, ReadOnlyGCPNodeProvider
from cluster.render import example_gcp_facts, launch_concurrency, render_gcp
from cluster.spec import ClusterSpec
from tests.cluster.fakes import Call, FakeGcp, RecordingProcessRunner

FACTS = example_gcp_facts()
SUBNET_KEY = f"{FACTS.project}/{FACTS.region}/{FACTS.subnetwork_name}"


@pytest.fixture
def cfg(launcher_key) -> dict:
    cfg = render_gcp(ClusterSpec(), FACTS)
    # On the provider VM this is ~/.ray-gcp/ray-launcher-key (the operator's copy).
    cfg["auth"]["ssh_private_key"] = str(launcher_key)
    return cfg


READS = [
    Call("crm", "projects.get", {"projectId": FACTS.project}),
    Call(
        "iam",
        "projects.serviceAccounts.get",
        {"name": f"projects/{FACTS.project}/serviceAccounts/{FACTS.head_service_account}"},
    ),
    Call(
        "iam",
        "projects.serviceAccounts.get",
        {"name": f"projects/{FACTS.project}/serviceAccounts/{FACTS.worker_service_account}"},
    ),
    Call(
        "compute",
        "subnetworks.get",
        {"project": FACTS.project, "region": FACTS.region, "subnetwork": "ray-gcp-subnet"},
    ),
]


def bootstrap(cfg: dict) -> dict:
    """What `ray up` / `ray down` / `ray attach` run first on the provider VM."""
    return commands._bootstrap_config(copy.deepcopy(cfg), no_config_cache=True)


# ---- ray up: the bootstrap ---------------------------------------------------------


def test_bootstrap_makes_exactly_four_reads(fake_gcp, cfg):
    bootstrap(cfg)
    assert fake_gcp.calls == READS


def test_bootstrap_changes_nothing_in_the_node_configs(fake_gcp, cfg):
    resolved = bootstrap(cfg)
    # No subnet auto-pick, no public IP, no Ray service account, no generated key.
    assert resolved["available_node_types"] == cfg["available_node_types"]
    assert resolved["auth"] == cfg["auth"]
    # No `head_node: {}` as Ray's bootstrap_gcp adds: not a schema field, and unused.
    assert "head_node" not in resolved
    validate_config(resolved)
    provider = dict(resolved["provider"])
    provider.pop("_config_cache_path")
    assert provider == cfg["provider"]


@pytest.mark.parametrize(
    ("break_it", "needle", "calls_made"),
    [
        (
            lambda f: f.service_accounts.discard(FACTS.worker_service_account),
            (
                f"service account {FACTS.worker_service_account} (node types: cpu-worker) "
                "does not exist in project my-ray-project (HTTP 404); run `pulumi up`"
            ),
            3,
        ),
        (
            lambda f: f.service_accounts.discard(FACTS.head_service_account),
            f"service account {FACTS.head_service_account} (node types: head) does not exist",
            2,
        ),
        (
            lambda f: f.subnetworks.clear(),
            (
                "subnetwork ray-gcp-subnet in region asia-northeast3 of project my-ray-project "
                "(node types: cpu-worker, head) does not exist or cannot be read (HTTP 404); "
                "run `pulumi up`"
            ),
            4,
        ),
        (
            lambda f: setattr(f, "project", "someone-elses"),
            (
                "project 'my-ray-project' does not exist or this machine's credentials may not "
                "read it (HTTP 403)"
            ),
            1,
        ),
        (
            lambda f: setattr(f, "lifecycle_state", "DELETE_REQUESTED"),
            "project 'my-ray-project' is DELETE_REQUESTED, not ACTIVE",
            1,
        ),
    ],
    ids=["worker-account", "head-account", "subnet", "project", "project-state"],
)
def test_missing_cloud_resources_fail_clearly(fake_gcp, cfg, break_it, needle, calls_made):
    break_it(fake_gcp)
    with pytest.raises(BootstrapCheckError) as exc:
        bootstrap(cfg)
    assert needle in str(exc.value)
    # Stops at the first failure; never falls back to creating anything.
    assert fake_gcp.calls == READS[:calls_made]


def _drop_interfaces(cfg):
    del cfg["available_node_types"]["cpu-worker"]["node_config"]["networkInterfaces"]


def _public_ip(cfg):
    nic = cfg["available_node_types"]["head"]["node_config"]["networkInterfaces"][0]
    nic["accessConfigs"] = [{"type": "ONE_TO_ONE_NAT"}]


def _no_account(cfg):
    del cfg["available_node_types"]["head"]["node_config"]["serviceAccounts"]


def _no_key(cfg):
    del cfg["auth"]["ssh_private_key"]


def _missing_key_file(cfg):
    cfg["auth"]["ssh_private_key"] = "/nonexistent/ray-launcher-key"


def _open_key(cfg):
    Path(cfg["auth"]["ssh_private_key"]).chmod(0o644)


def _no_ssh_keys_metadata(cfg):
    items = cfg["available_node_types"]["cpu-worker"]["node_config"]["metadata"]["items"]
    items[:] = [i for i in items if i["key"] != "ssh-keys"]


def _os_login(cfg):
    items = cfg["available_node_types"]["head"]["node_config"]["metadata"]["items"]
    items[:] = [i for i in items if i["key"] != "enable-oslogin"]


def _external_ips(cfg):
    cfg["provider"]["use_internal_ips"] = False


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (
            _drop_interfaces,
            "available_node_types.cpu-worker.node_config.networkInterfaces is missing",
        ),
        (_public_ip, "accessConfigs gives the node a public IP"),
        (
            _no_account,
            "available_node_types.head.node_config.serviceAccounts must name exactly one",
        ),
        (_no_key, "auth.ssh_user and auth.ssh_private_key must be set"),
        (_missing_key_file, "auth.ssh_private_key /nonexistent/ray-launcher-key does not exist"),
        (_open_key, "has mode 644; ssh refuses keys others can read"),
        (
            _no_ssh_keys_metadata,
            "cpu-worker.node_config.metadata has no ssh-keys entry for user 'ray'",
        ),
        (_os_login, "must set enable-oslogin to FALSE"),
        (_external_ips, "provider.use_internal_ips must be true"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_unsafe_or_incomplete_configs_fail_before_any_api_call(fake_gcp, cfg, mutate, needle):
    mutate(cfg)
    with pytest.raises(BootstrapCheckError) as exc:
        bootstrap(cfg)
    assert needle in str(exc.value)
    assert fake_gcp.calls == []


def test_rays_own_gcp_bootstrap_would_write(monkeypatch, tmp_path, launcher_key):
    """Contrast: the same config with `type: gcp` makes Ray create and set IAM."""
    fake = FakeGcp(
        project=FACTS.project,
        service_accounts={FACTS.head_service_account, FACTS.worker_service_account},
        subnetworks={SUBNET_KEY},
    )
    import ray.autoscaler._private.gcp.config as ray_gcp_config

    monkeypatch.setattr(ray_gcp_config, "construct_clients_from_provider_config", fake.clients)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    cfg = render_gcp(ClusterSpec(), FACTS)
    cfg["auth"]["ssh_private_key"] = str(launcher_key)
    cfg["provider"]["type"] = "gcp"
    del cfg["provider"]["module"]
    with pytest.raises(
        AssertionError, match="unexpected GCP API call iam.projects.serviceAccounts.create"
    ):
        bootstrap(cfg)
    assert fake.methods()[:2] == [("crm", "projects.get"), ("iam", "projects.serviceAccounts.get")]


# ---- the head: autoscaler v1 and v2 launch workers ---------------------------------------


def test_v1_node_launcher_creates_private_spot_workers(fake_gcp, launcher_key):
    # The default spec runs standard VMs (spotWorkers=false); this one opts into Spot.
    cfg = render_gcp(ClusterSpec.from_settings(spot_workers=True), FACTS)
    cfg["auth"]["ssh_private_key"] = str(launcher_key)
    resolved = bootstrap(cfg)
    fake_gcp.calls.clear()
    provider = _get_node_provider(resolved["provider"], resolved["cluster_name"])
    assert type(provider) is ReadOnlyGCPNodeProvider

    class Pending:
        def dec(self, *_args):
            pass

    launcher = BaseNodeLauncher(
        provider,
        Pending(),
        EventSummarizer(),
        NodeProviderAvailabilityTracker(),
        node_types=resolved["available_node_types"],
    )
    launcher.launch_node(resolved, 3, "cpu-worker")
    # All three inserts go out before waiting on any operation (one launch round).
    assert (
        fake_gcp.methods()
        == [("compute", "instances.insert")] * 3 + [("compute", "zoneOperations.get")] * 3
    )
    for call in fake_gcp.calls[:3]:
        assert (call.kwargs["project"], call.kwargs["zone"]) == (FACTS.project, FACTS.zone)
        body = call.kwargs["body"]
        assert len(body["name"]) <= 63
        assert body["name"].startswith("ray-ray-gcp-worker-") and body["name"].endswith("-compute")
        assert body["machineType"] == f"zones/{FACTS.zone}/machineTypes/n2-standard-4"
        assert body["networkInterfaces"] == [
            {"subnetwork": FACTS.subnetwork, "stackType": "IPV4_ONLY"}
        ]
        assert body["serviceAccounts"][0]["email"] == FACTS.worker_service_account
        assert body["scheduling"]["provisioningModel"] == "SPOT"
        assert body["labels"]["ray-cluster-name"] == "ray-gcp"
        assert body["labels"]["ray-gcp-role"] == "worker"
    assert len(provider.non_terminated_nodes({TAG_RAY_NODE_KIND: "worker"})) == 3


def test_v2_adapter_launches_a_burst_from_the_head_config(fake_gcp, cfg, tmp_path):
    resolved = bootstrap(cfg)
    fake_gcp.calls.clear()
    # What the head's autoscaler reads: ~/ray_bootstrap_config.yaml with the key
    # path rewritten to ~/ray_bootstrap_key.pem (commands.get_or_create_head_node).
    on_head = copy.deepcopy(resolved)
    key = tmp_path / "ray_bootstrap_key.pem"
    key.write_text("fake key")
    on_head["auth"]["ssh_private_key"] = str(key)
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(on_head))
    reader = FileConfigReader(str(path), skip_content_hash=True)
    v1 = _get_node_provider(on_head["provider"], on_head["cluster_name"])
    adapter = NodeProviderAdapter(v1_provider=v1, config_reader=reader)
    adapter.launch({"cpu-worker": 6}, request_id="burst-1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if fake_gcp.methods().count(("compute", "zoneOperations.get")) == 6:
            break
        time.sleep(0.05)
    assert adapter.poll_errors() == []
    inserts = [c for c in fake_gcp.calls if c.method == "instances.insert"]
    assert len(inserts) == 6
    nodes = adapter.get_non_terminated()
    assert len(nodes) == 6
    assert {n.node_type for n in nodes.values()} == {"cpu-worker"}
    for c in inserts:
        assert c.kwargs["body"]["labels"][TAG_RAY_USER_NODE_TYPE] == "cpu-worker"
        assert "accessConfigs" not in str(c.kwargs["body"])


# ---- rsync is ensured before Ray's first file-mount sync -----------------------------------


def test_command_runner_installs_rsync_before_the_first_sync(
    fake_gcp, cfg, tmp_path, monkeypatch, ssh_control_dirs
):
    resolved = bootstrap(cfg)
    provider = _get_node_provider(resolved["provider"], resolved["cluster_name"])
    provider.create_node(
        resolved["available_node_types"]["head"]["node_config"],
        {"ray-node-name": "ray-ray-gcp-head", "ray-node-kind": "head"},
        1,
    )
    (node_id,) = provider.non_terminated_nodes({})
    runner_proc = RecordingProcessRunner()
    monkeypatch.setenv("HOME", str(tmp_path))  # ssh control path dirs
    runner = provider.get_command_runner(
        log_prefix="",
        node_id=node_id,
        auth_config=resolved["auth"],
        cluster_name=resolved["cluster_name"],
        process_runner=runner_proc,
        use_internal_ip=True,
    )
    assert isinstance(runner, SSHCommandRunner)
    runner.run_rsync_up(str(tmp_path), "~/ray-gcp/")
    runner.run_rsync_up(str(tmp_path), "~/ray-gcp/")
    flat = [" ".join(c) for c in runner_proc.commands]
    assert "rsync" in flat[0] and "dpkg-query" in flat[0] and flat[0].startswith("ssh ")
    assert flat[1].startswith("rsync ") and flat[2].startswith("rsync ")
    assert len(flat) == 3  # the check runs once per node
    assert "ray@10.0.0.2:~/ray-gcp/" in flat[1]  # the internal IP, no public address


def test_launch_concurrency_env_reaches_both_autoscalers():
    """The head's `ray start` exports the knobs; both autoscalers read them at import."""
    spec = ClusterSpec.from_settings(max_workers=24)
    start = render_gcp(spec, FACTS)["head_start_ray_commands"][-1]
    env = dict(re.findall(r"(AUTOSCALER_\w+)=(\d+)", start))
    n = launch_concurrency(spec)
    assert env == {
        "AUTOSCALER_MAX_LAUNCH_BATCH": str(n),
        "AUTOSCALER_MAX_CONCURRENT_LAUNCHES": str(n),
    }
    probe = (
        "import inspect\n"
        "from ray.autoscaler._private.autoscaler import StandardAutoscaler as V1\n"
        "from ray.autoscaler.v2.instance_manager.node_provider import NodeProviderAdapter as V2\n"
        "from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig\n"
        "p1 = inspect.signature(V1.__init__).parameters\n"
        "p2 = inspect.signature(V2.__init__).parameters\n"
        "print(p1['max_launch_batch'].default, p1['max_concurrent_launches'].default,\n"
        "      p2['max_launch_batch_per_type'].default, p2['max_concurrent_launches'].default,\n"
        "      AutoscalingConfig.get_max_concurrent_launches(None))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [str(n)] * 5
