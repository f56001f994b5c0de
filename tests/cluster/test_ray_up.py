"""`ray up` end to end, offline: Ray's own create path with our provider and config.

``commands._bootstrap_config`` + ``commands.get_or_create_head_node`` (what
``ray up`` runs on the provider VM, autoscaler v2 by default) against the
recording GCP fakes and a recording process runner in place of ssh/rsync.
Checks the GCP calls (4 reads, then only the head's insert and labels), the
order of what Ray runs on the head (rsync ensured, file mounts, init, setup,
the node check, `ray start`) and the config the head's autoscaler receives.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private import commands

from cluster import layout
from cluster.bundle import build_bundle
from cluster.render import PROVIDER_MODULE, example_gcp_facts, render_gcp
from cluster.spec import ClusterSpec
from tests.cluster.fakes import RecordingProcessRunner

ROOT = Path(__file__).resolve().parents[2]
FACTS = example_gcp_facts()


class CapturingRunner(RecordingProcessRunner):
    """Also keeps what each rsync uploads (Ray deletes its temp files afterwards)."""

    def __init__(self):
        super().__init__()
        self.uploads: dict[str, str] = {}

    def check_call(self, cmd, *args, **kwargs):
        if cmd[0] == "rsync":
            source, target = cmd[-2], cmd[-1].split(":", 1)[1]
            if Path(source).is_file():
                self.uploads[target] = Path(source).read_text()
            else:
                self.uploads[target] = "<dir>"
        return super().check_call(cmd, *args, **kwargs)


@pytest.fixture
def provider_vm(tmp_path, launcher_key):
    """The provider VM's files (infra/'s boot script makes them) under tmp_path."""
    src = tmp_path / "opt-ray-gcp-src"
    src.mkdir()
    with tarfile.open(fileobj=io.BytesIO(build_bundle(ROOT)), mode="r:gz") as tar:
        tar.extractall(src, filter="data")
    token = tmp_path / "ray-auth-token"
    token.write_text("0" * 64)
    token.chmod(0o600)
    cfg = render_gcp(ClusterSpec(), FACTS)
    assert cfg["file_mounts"] == {
        layout.NODE_SRC: layout.PROVIDER_SRC,
        layout.NODE_AUTH_TOKEN: layout.OPERATOR_AUTH_TOKEN,
    }
    cfg["file_mounts"] = {layout.NODE_SRC: str(src), layout.NODE_AUTH_TOKEN: str(token)}
    cfg["auth"]["ssh_private_key"] = str(launcher_key)
    yield cfg
    shutil.rmtree(src, ignore_errors=True)


def ray_up(cluster_yaml, runner) -> None:
    """What `ray up` does up to the head's setup: Ray's bootstrap, then head creation."""
    config = commands._bootstrap_config(cluster_yaml, no_config_cache=True)
    commands.get_or_create_head_node(
        config,
        printable_config_file="/etc/ray-gcp/cluster.yaml",
        no_restart=False,
        restart_only=False,
        yes=True,
        override_cluster_name=None,
        _runner=runner,
    )


def test_ray_up_creates_a_private_head_and_runs_our_commands(
    fake_gcp, provider_vm, monkeypatch, ssh_control_dirs
):
    monkeypatch.delenv("RAY_UP_enable_autoscaler_v2", raising=False)  # Ray's default: v2
    runner = CapturingRunner()
    ray_up(provider_vm, runner)

    # -- GCP: the bootstrap's four reads, then only the head's own instance calls.
    methods = fake_gcp.methods()
    assert methods[:4] == [
        ("crm", "projects.get"),
        ("iam", "projects.serviceAccounts.get"),
        ("iam", "projects.serviceAccounts.get"),
        ("compute", "subnetworks.get"),
    ]
    assert set(methods[4:]) <= {
        ("compute", "instances.list"),
        ("compute", "instances.get"),
        ("compute", "instances.insert"),
        ("compute", "instances.setLabels"),
        ("compute", "zoneOperations.get"),
    }
    (insert,) = [c for c in fake_gcp.calls if c.method == "instances.insert"]
    body = insert.kwargs["body"]
    assert body["name"].startswith("ray-ray-gcp-head-")
    assert body["serviceAccounts"][0]["email"] == FACTS.head_service_account
    assert "accessConfigs" not in str(body["networkInterfaces"])
    assert body["labels"]["ray-gcp-role"] == "head"
    (head,) = fake_gcp.instances.values()
    assert head["labels"]["ray-node-type"] == "head"  # TAG_RAY_NODE_KIND
    assert head["labels"]["ray-node-status"] == "up-to-date"

    # -- What Ray ran, in order, all over ssh to the head's internal IP.
    flat = [" ".join(c) for c in runner.commands]
    assert all("10.0.0.2" in c for c in flat)

    def first(needle: str) -> int:
        return next(i for i, c in enumerate(flat) if needle in c)

    order = [
        first("uptime"),
        first("for p in rsync; do dpkg-query"),  # our runner, before the first rsync
        first(f"ray@10.0.0.2:{layout.NODE_SRC}/"),
        first(f"ray@10.0.0.2:{layout.NODE_AUTH_TOKEN}"),
        first("for p in rsync python3-venv; do dpkg-query"),  # initialization_commands
        first(f"--require-hashes -r {layout.NODE_SRC}/{layout.UV_REQUIREMENTS}"),
        first("pip sync --require-hashes"),
        first("chmod 600 ~/.ray/auth_token"),
        first("-m cluster.node_check --ray 2.60.0 --python 3.11 --head"),
        first("ray stop"),
        first("ray start --head"),
    ]
    assert order == sorted(order), flat
    start = flat[first("ray start --head")]
    assert "export RAY_enable_autoscaler_v2=1" in start  # `ray up` runs the head on v2
    assert "RAY_AUTH_MODE=token" in start and "--dashboard-host=127.0.0.1" in start

    # -- The config the head's autoscaler reads (~/ray_bootstrap_config.yaml).
    on_head = yaml.safe_load(runner.uploads["~/ray_bootstrap_config.yaml"])
    assert on_head["provider"]["module"] == PROVIDER_MODULE
    assert on_head["auth"]["ssh_private_key"] == "~/ray_bootstrap_key.pem"
    assert on_head["file_mounts"][layout.NODE_SRC] == layout.NODE_SRC  # head -> workers
    assert on_head["file_mounts"][layout.NODE_AUTH_TOKEN] == layout.NODE_AUTH_TOKEN
    assert runner.uploads["~/ray_bootstrap_key.pem"].startswith("-----BEGIN OPENSSH")
    assert runner.uploads[layout.NODE_AUTH_TOKEN] == "0" * 64


def test_ray_up_creates_the_head_in_the_next_zone_when_the_first_is_full(
    fake_gcp, provider_vm, monkeypatch, ssh_control_dirs
):
    """Zone fallback covers the head too: `ray up` goes through the same create_node."""
    full, spare = FACTS.zone, FACTS.fallback_zones[0]
    fake_gcp.operation_fault = lambda zone, body: (
        {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": f"{zone} is full"}]}
        if zone == full
        else None
    )
    monkeypatch.delenv("RAY_UP_enable_autoscaler_v2", raising=False)
    ray_up(provider_vm, CapturingRunner())
    assert [c.kwargs["zone"] for c in fake_gcp.calls if c.method == "instances.insert"] == [
        full,
        spare,
    ]
    (name,) = fake_gcp.instances
    assert fake_gcp.zone_of(name) == spare
    head = fake_gcp.instances[name]
    assert head["labels"]["ray-node-status"] == "up-to-date"  # setLabels found it in its zone
    for c in fake_gcp.calls:
        if c.method in ("instances.get", "instances.setLabels"):
            assert c.kwargs["zone"] == spare, c


def test_the_heads_config_keeps_api_endpoints_and_credentials(
    fake_gcp, provider_vm, monkeypatch, ssh_control_dirs
):
    """The head's autoscaler is another process: only its copy of the config can tell it
    where the APIs are (and with which credentials)."""
    endpoints = {
        "compute": "http://10.99.0.1:8080/compute/v1/",
        "iam": "http://10.99.0.1:8080/iam/",
        "cloudresourcemanager": "http://10.99.0.1:8080/crm/",
    }
    credentials = {"type": "credentials_token", "credentials": "ya29.offline"}
    provider_vm["provider"]["api_endpoints"] = endpoints
    provider_vm["provider"]["gcp_credentials"] = credentials
    monkeypatch.delenv("RAY_UP_enable_autoscaler_v2", raising=False)
    runner = CapturingRunner()
    ray_up(provider_vm, runner)
    on_head = yaml.safe_load(runner.uploads["~/ray_bootstrap_config.yaml"])
    assert on_head["provider"]["api_endpoints"] == endpoints
    assert on_head["provider"]["gcp_credentials"] == credentials


# ---- the head's autoscaler does not warn about legacy fields every round ----------------------

LEGACY_WARNING = "Dropping the empty legacy field"


def _heads_config(provider_vm, monkeypatch, tmp_path) -> Path:
    monkeypatch.delenv("RAY_UP_enable_autoscaler_v2", raising=False)
    runner = CapturingRunner()
    ray_up(provider_vm, runner)
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(runner.uploads["~/ray_bootstrap_config.yaml"])
    return path


def test_the_heads_config_makes_the_autoscaler_log_no_legacy_field_line(
    fake_gcp, provider_vm, monkeypatch, tmp_path, caplog, ssh_control_dirs
):
    """v2 re-reads (prepare_config) the head's config every round: no legacy-field line."""
    import logging

    from ray.autoscaler._private import util as ray_util
    from ray.autoscaler.v2.instance_manager.config import FileConfigReader

    path = _heads_config(provider_vm, monkeypatch, tmp_path)
    assert "head_node" not in yaml.safe_load(path.read_text())
    caplog.set_level(logging.WARNING)
    reader = FileConfigReader(str(path), skip_content_hash=True)
    for _ in range(3):  # three autoscaler rounds
        reader.refresh_cached_autoscaling_config()
    assert [r for r in caplog.records if LEGACY_WARNING in r.getMessage()] == []

    # The premise: without our filter, Ray itself warns on every read, because its
    # defaults for `type: external` add both fields (MINIMAL_EXTERNAL_CONFIG).
    monkeypatch.setattr(logging.getLogger(ray_util.__name__), "filters", [])
    caplog.clear()
    reader.refresh_cached_autoscaling_config()
    dropped = sorted(r.getMessage().split()[5] for r in caplog.records if LEGACY_WARNING in r.getMessage())
    assert dropped == ["head_node.", "worker_nodes."]


def test_on_the_head_only_the_read_before_the_provider_loads_logs_it(
    fake_gcp, provider_vm, monkeypatch, tmp_path, ssh_control_dirs
):
    """A fresh process in the v2 monitor's order: read the config, load the provider
    through Ray's external loader, then autoscaler rounds."""
    import subprocess
    import sys

    path = _heads_config(provider_vm, monkeypatch, tmp_path)
    cfg = yaml.safe_load(path.read_text())
    # Offline clients: a bearer token (no metadata-server probe) and a loopback endpoint
    # that is never called (building the provider makes no request).
    cfg["provider"]["gcp_credentials"] = {"type": "credentials_token", "credentials": "t"}
    cfg["provider"]["api_endpoints"] = {"compute": "http://127.0.0.1:9/compute/v1/"}
    path.write_text(yaml.safe_dump(cfg))
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, stream=sys.stderr)\n"
        "from ray.autoscaler.v2.instance_manager.config import FileConfigReader\n"
        "from ray.autoscaler._private.providers import _get_node_provider\n"
        f"reader = FileConfigReader({str(path)!r}, skip_content_hash=True)\n"
        "print('--- provider', file=sys.stderr, flush=True)\n"
        "config = reader.get_cached_autoscaling_config()\n"
        "provider = _get_node_provider(config.get_config('provider'), config.get_config('cluster_name'))\n"
        "print(type(provider).__name__, file=sys.stderr)\n"
        "print('--- rounds', file=sys.stderr, flush=True)\n"
        "for _ in range(3):\n"
        "    reader.refresh_cached_autoscaling_config()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False,
        cwd=ROOT, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    before, after = out.stderr.split("--- provider", 1)
    assert "ReadOnlyGCPNodeProvider" in after
    assert before.count(LEGACY_WARNING) == 2  # Ray's first read, before our module is loaded
    assert after.split("--- rounds", 1)[1].count(LEGACY_WARNING) == 0
