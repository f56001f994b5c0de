"""Pure renderers: a ClusterSpec (plus GcpFacts) in, a Ray autoscaler config out.

* ``render_gcp(spec, facts)``: the config ``ray up`` runs on the provider VM
  (private nodes, token auth, read-only bootstrap, pinned software);
* ``render_local(spec, gcs_port=...)``: the same node types as fake nodes on
  this machine (``cluster.local.LocalCluster``);
* ``to_yaml(cfg)``: deterministic YAML text (sorted keys), what infra/ puts in
  the provider VM's metadata.

No I/O, no clock, no randomness: the same input gives byte-identical YAML.
"""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from cluster import layout, names, ray_start
from cluster.regions import DEFAULT_REGION, default_fallback_zones, zones_of
from cluster.spec import DEFAULT_CLUSTER_NAME, ClusterSpec, GcpFacts, NodeTypeSpec

# ---- shared -------------------------------------------------------------------

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
PROVIDER_MODULE = "cluster.gcp_provider.ReadOnlyGCPNodeProvider"
BUNDLE_REQUIREMENTS = layout.NODE_REQUIREMENTS  # inside the bundle

# Ray's ports on the nodes (pinned, so the firewall and docs can name them);
# `ray start` parameters and env of every platform live in cluster.ray_start.
GCS_PORT = ray_start.GCS_PORT
DASHBOARD_PORT = ray_start.DASHBOARD_PORT
CLIENT_SERVER_PORT = ray_start.CLIENT_SERVER_PORT
OBJECT_MANAGER_PORT = ray_start.OBJECT_MANAGER_PORT
launch_concurrency = ray_start.launch_concurrency

# Where the pinned uv lives on a node (a tiny venv of its own, like the provider VM).
NODE_TOOLS = "~/.ray-gcp-tools"
NODE_UV = f"{NODE_TOOLS}/bin/uv"
# A folder holding only a link to that uv, on every node's PATH: users' jobs run
# `uv run` (cluster/userjob.py), and the tools venv's own python/pip stay off PATH.
NODE_UV_PATH = f"{NODE_TOOLS}/path"
NODE_PYTHON = f"{layout.NODE_VENV}/bin/python"
NODE_RAY = f"{layout.NODE_VENV}/bin/ray"
NODE_ENV_FILE = "~/.ray-gcp-env"
# Debian packages a node needs before anything else: rsync for Ray's file
# mounts, python3-venv for the pinned uv's bootstrap venv.
NODE_APT_PACKAGES = ("rsync", "python3-venv")


def apt_install_command(packages: tuple[str, ...] = NODE_APT_PACKAGES) -> str:
    """Idempotent: installs only what is missing, waits for a held dpkg lock."""
    pkgs = " ".join(packages)
    apt = "sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq"
    return (
        f"missing=$(for p in {pkgs}; do dpkg-query -W -f='${{db:Status-Status}}' $p "
        f"2>/dev/null | grep -qx installed || echo $p; done); "
        f'if [ -n "$missing" ]; then {apt} update && {apt} install -y '
        f"--no-install-recommends $missing; fi"
    )


# ---- local (fake nodes) -------------------------------------------------------

# The fake_multinode provider hard-codes the head's node type name
# (ray/autoscaler/_private/fake_multi_node/node_provider.py: FAKE_HEAD_NODE_TYPE).
LOCAL_HEAD_TYPE = "ray.head.default"
# Ray's fake provider with zones, a per-batch lock and no log monitor per fake
# node (cluster/local_provider.py).
LOCAL_PROVIDER_MODULE = "cluster.local_provider.LocalZonalNodeProvider"
# Its config key for the launch ledger (see render_local).
LAUNCH_LEDGER_KEY = "launch_ledger"
# Two pretend zones, so zone fallback runs locally exactly as on GCP.
LOCAL_ZONES = ("local-a", "local-b")
# Fake workers otherwise reserve 30% of RAM each for their object store.
LOCAL_WORKER_OBJECT_STORE_BYTES = 256 * 1024 * 1024

_NO_COMMANDS: dict[str, list[str]] = {
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
}


def render_local(
    spec: ClusterSpec,
    *,
    gcs_port: int,
    host: str = "127.0.0.1",
    object_store_bytes: int = LOCAL_WORKER_OBJECT_STORE_BYTES,
    zones: tuple[str, ...] = LOCAL_ZONES,
    full_zones: tuple[str, ...] = (),
    launch_ledger: str | None = None,
    node_temp_root: str | None = None,
    log_bucket: str | None = None,
    log_endpoint: str | None = None,
) -> dict[str, Any]:
    """The spec's node types as fake nodes on this machine (fake_multinode provider).

    ``zones``: the preferred zone, then the fallback zones; ``full_zones``
    answer every create with ZONE_RESOURCE_POOL_EXHAUSTED (to watch fallback).
    ``launch_ledger``: the file where the provider keeps the nodes it has not
    started yet (cluster/local_provider.py; ``LocalCluster.status()`` reads it).
    ``node_temp_root``: each fake node gets its own Ray temp dir under it (its
    own logs, like a VM's disk). ``log_bucket`` (with the storage endpoint,
    an emulator here): each fake node runs a log shipper, as a VM does, with
    the spec's ``logs`` settings.

    The head type is renamed to ``ray.head.default`` (the fake provider's fixed
    name); worker types keep their names, resources and min/max. No command
    runs: fake nodes are raylet processes the autoscaler starts itself, and
    they inherit the head's environment (token auth included).
    """
    types: dict[str, Any] = {
        LOCAL_HEAD_TYPE: {
            "resources": spec.head.ray_resources(),
            "node_config": {},
            "min_workers": 0,
            "max_workers": 0,
        }
    }
    for name, t in sorted(spec.worker_types.items()):
        resources = t.ray_resources()
        resources["object_store_memory"] = object_store_bytes
        types[name] = {
            "resources": resources,
            "node_config": {},
            "min_workers": t.min_workers,
            "max_workers": t.max_workers,
        }
    return {
        **_scaling(spec),
        "provider": {
            # Ray's fake provider through the external loader: prepare_config
            # (run by autoscaler v2) would otherwise read fake_multi_node/example.yaml,
            # which the wheel lacks.
            "type": "external",
            "module": LOCAL_PROVIDER_MODULE,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            # One create call may ask for several nodes (autoscaler v2 batches).
            "launch_multiple": True,
            "gcs_address": f"{host}:{gcs_port}",
            "availability_zone": zones[0],
            "fallback_zones": list(zones[1:]),
            "full_zones": list(full_zones),
            **({LAUNCH_LEDGER_KEY: launch_ledger} if launch_ledger else {}),
            **({"node_temp_root": node_temp_root} if node_temp_root else {}),
            **(
                {
                    "log_shipping": {
                        "bucket": log_bucket,
                        "endpoint": log_endpoint or "",
                        "interval_s": spec.logs.interval_s,
                        "max_file_bytes": spec.logs.max_file_bytes,
                    }
                }
                if log_bucket and spec.logs.ship
                else {}
            ),
        },
        "auth": {"ssh_user": layout.NODE_SSH_USER},
        "available_node_types": types,
        "head_node_type": LOCAL_HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        **_NO_COMMANDS,
    }


# ---- GCP ----------------------------------------------------------------------

GCE_API = "https://www.googleapis.com/compute/v1"
# Placeholders for the two facts that exist only after `pulumi up` (previews, tests).
EXAMPLE_IMAGE = "projects/debian-cloud/global/images/debian-12-bookworm-v20261110"
EXAMPLE_SSH_PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExampleExampleExampleExample ray-launcher"
)


def _scaling(spec: ClusterSpec) -> dict[str, Any]:
    """The autoscaling keys both renderings share, so local behaves like GCP."""
    return {
        "cluster_name": spec.cluster_name,
        "max_workers": spec.max_workers,
        "upscaling_speed": spec.upscaling_speed,
        "idle_timeout_minutes": spec.idle_timeout_minutes,
    }


def _node_metadata(facts: GcpFacts) -> dict[str, Any]:
    return {
        "items": [
            # The launcher's key only; project-wide keys are ignored on Ray nodes.
            {"key": "ssh-keys", "value": f"{layout.NODE_SSH_USER}:{facts.ssh_public_key}"},
            {"key": "block-project-ssh-keys", "value": "TRUE"},
            # Metadata SSH keys are ignored under OS Login (often enforced by org policy).
            {"key": "enable-oslogin", "value": "FALSE"},
        ]
    }


def _scheduling(t: NodeTypeSpec) -> dict[str, Any]:
    if t.spot:
        # DELETE, not STOP: a stopped spot VM stays in the project and Ray never
        # sees it again (non_terminated_nodes lists only PROVISIONING..RUNNING).
        return {
            "provisioningModel": "SPOT",
            "instanceTerminationAction": "DELETE",
            "onHostMaintenance": "TERMINATE",
            "automaticRestart": False,
        }
    return {
        "provisioningModel": "STANDARD",
        # GPU VMs cannot live-migrate.
        "onHostMaintenance": "TERMINATE" if t.is_gpu else "MIGRATE",
        "automaticRestart": True,
    }


def _node_config(
    spec: ClusterSpec, facts: GcpFacts, type_name: str, t: NodeTypeSpec, *, head: bool
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "machineType": t.machine_type,
        "disks": [
            {
                "boot": True,
                "autoDelete": True,
                "type": "PERSISTENT",
                "initializeParams": {
                    "diskSizeGb": t.disk_size_gb,
                    "diskType": f"zones/{facts.zone}/diskTypes/pd-balanced",
                    "sourceImage": facts.image,
                },
            }
        ],
        # Private: no accessConfigs = no external IP; egress goes through Cloud NAT.
        "networkInterfaces": [{"subnetwork": facts.subnetwork, "stackType": "IPV4_ONLY"}],
        "serviceAccounts": [
            {
                "email": facts.head_service_account if head else facts.worker_service_account,
                "scopes": [CLOUD_PLATFORM_SCOPE],
            }
        ],
        "metadata": _node_metadata(facts),
        # Secure Boot would refuse the (unsigned, DKMS-built) NVIDIA kernel module.
        "shieldedInstanceConfig": {
            "enableSecureBoot": not t.is_gpu,
            "enableVtpm": True,
            "enableIntegrityMonitoring": True,
        },
        "labels": {
            "ray-gcp-cluster": spec.cluster_name,
            "ray-gcp-node-type": type_name,
            "ray-gcp-role": "head" if head else "worker",
        },
        "scheduling": _scheduling(t),
    }
    if t.is_gpu:
        cfg["guestAccelerators"] = [
            {"acceleratorType": t.accelerator_type, "acceleratorCount": t.accelerator_count}
        ]
    return cfg


def node_env_lines(spec: ClusterSpec, facts: GcpFacts) -> list[str]:
    """~/.ray-gcp-env on every node: sourced by ~/.bashrc, which Ray's SSH commands
    (the start commands, `ray submit`, `ray exec`, `ray attach`) run through an
    interactive bash; so Ray's daemons, and the jobs and workers they start, have it."""
    home = "$HOME/"
    return [
        (f"export PATH={home}{layout.NODE_VENV.removeprefix('~/')}/bin:"
        f"{home}{NODE_UV_PATH.removeprefix('~/')}:$PATH"),
        # Users' jobs: one environment per lock, built by `uv run` (cluster/userjob.py).
        f"export RAY_GCP_JOB_ENVS={home}{layout.NODE_JOB_ENVS.removeprefix('~/')}",
        # Drivers on the head authenticate with the token at Ray's default path.
        "export RAY_AUTH_MODE=token",
        f"export RAY_GCP_BUCKET={facts.bucket}",
        f"export RAY_GCP_CLUSTER={spec.cluster_name}",
        # Drivers started over ssh (`ray submit`) keep a copy of their output in
        # the Ray logs, which the node ships (cluster/driver_log.py).
        *(f"export {k}={v}" for k, v in ray_start.driver_env(spec).items()),
    ]


def node_setup_commands(spec: ClusterSpec, facts: GcpFacts) -> list[str]:
    """Every node: pinned uv, a venv with exactly the lock's packages, the bundle on its path."""
    venv = layout.NODE_VENV
    req = f"{layout.NODE_SRC}/{BUNDLE_REQUIREMENTS}"
    uv_env = "UV_PYTHON_DOWNLOADS=never UV_NO_CONFIG=1"
    env_file = " ".join(shlex.quote(line) for line in node_env_lines(spec, facts))
    return [
        # uv, exactly layout.UV_VERSION, its wheel checked against the bundle's hashes
        # (reinstalled if another version is there).
        (
            f'[ "$({NODE_UV} --version 2>/dev/null | cut -d" " -f2)" = "{layout.UV_VERSION}" ] || '
            f"{{ rm -rf {NODE_TOOLS} && python3 -m venv {NODE_TOOLS} && "
            f"{NODE_TOOLS}/bin/pip install -q --disable-pip-version-check --no-deps "
            f"--require-hashes -r {layout.NODE_SRC}/{layout.UV_REQUIREMENTS}; }}"
        ),
        # ... on PATH by itself (for `uv run` of users' jobs).
        f"mkdir -p {NODE_UV_PATH} && ln -sfn ../bin/uv {NODE_UV_PATH}/uv",
        # The venv on the image's python3.X (never a downloaded interpreter).
        (
            f"[ -x {NODE_PYTHON} ] || {uv_env} {NODE_UV} venv --python "
            f"/usr/bin/python{spec.python_minor} {venv}"
        ),
        # Exactly the locked packages, hashes checked, nothing else left installed.
        f"{uv_env} {NODE_UV} pip sync --require-hashes --python {NODE_PYTHON} {req}",
        # The bundle (cluster/, workloads/) importable by the venv's Python.
        (
            f'echo $HOME/{layout.NODE_SRC.removeprefix("~/")} > "$({NODE_PYTHON} -c '
            "'import site; print(site.getsitepackages()[0])')/ray-gcp-src.pth\""
        ),
        # The token arrived via file_mounts with the operator copy's mode; enforce it.
        f"chmod 700 ~/.ray && chmod 600 {layout.NODE_AUTH_TOKEN}",
        # Shells and drivers on a node: the venv, token auth, the workload bucket.
        f"printf '%s\\n' {env_file} > {NODE_ENV_FILE}",
        f"grep -qxF '. {NODE_ENV_FILE}' ~/.bashrc || echo '. {NODE_ENV_FILE}' >> ~/.bashrc",
    ]


def gpu_driver_commands() -> list[str]:
    """NVIDIA driver from Debian's non-free repository (DKMS), skipped when nvidia-smi works."""
    apt = "sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq"
    return [
        (
            "nvidia-smi >/dev/null 2>&1 || { "
            "sudo sed -i 's/^Components: main$/Components: main contrib non-free non-free-firmware/' "
            "/etc/apt/sources.list.d/debian.sources && "
            f"{apt} update && {apt} install -y --no-install-recommends "
            "linux-headers-$(uname -r) nvidia-driver firmware-misc-nonfree && "
            "sudo modprobe nvidia && nvidia-smi; }"
        ),
    ]


def _node_check(spec: ClusterSpec, *, head: bool) -> str:
    return (
        f"{NODE_PYTHON} -m cluster.node_check --ray {spec.ray_version} "
        f"--python {spec.python_minor}" + (" --head" if head else "")
    )


# Ray keeps many sockets and files open per node (a connection per worker
# process, object spilling, logs); Ray's own cluster examples raise the limit
# to 65536 before `ray start`.
OPEN_FILES_LIMIT = 65536


def raise_open_files_limit(limit: int = OPEN_FILES_LIMIT) -> str:
    """Shell: raise the soft open-files limit to ``limit``, or to the hard limit if that is lower.

    Without privileges only the soft limit can go up, and only as far as the
    hard limit: a plain ``ulimit -n 65536`` fails where the hard limit is lower
    (a container, a tighter limits.conf) and also lowers a higher hard limit.
    This never lowers a soft limit already at or above ``limit`` (or
    ``unlimited``), never touches the hard limit, and exits 0, so the start
    command joins it to ``ray start`` with ``&&``: any failure here is a real
    one and stops the start visibly.
    """
    return (
        'soft=$(ulimit -Sn); hard=$(ulimit -Hn); '
        f'if [ "$soft" != unlimited ] && [ "$soft" -lt {limit} ]; then '
        f'if [ "$hard" = unlimited ] || [ "$hard" -ge {limit} ]; then ulimit -Sn {limit}; '
        'else ulimit -Sn "$hard"; fi; fi'
    )


# Where Ray writes its logs on a VM (the default temp dir), which the shipper follows.
NODE_RAY_LOGS = "/tmp/ray/session_latest/logs"


def logship_start_command(spec: ClusterSpec, facts: GcpFacts, *, head: bool) -> list[str]:
    """Start (or replace) this node's log shipper (cluster/logship.py), detached.

    After `ray stop` and before `ray start`: the shipper survives `ray stop`
    (its command line matches none of the names `ray stop` kills), so the
    previous shipper has shipped the old session's last lines; the new one is
    already watching when `ray start` opens the new session, and ships what
    even a failing `ray start` wrote. The VM's hostname is the node's name
    (the instance name), the node type comes from the autoscaler's
    RAY_NODE_TYPE_NAME.
    """
    if not spec.logs.ship:
        return []
    args = [
        "--bucket", facts.bucket,
        "--cluster", spec.cluster_name,
        "--role", "head" if head else "worker",
        "--logs-dir", NODE_RAY_LOGS,
        "--interval", f"{spec.logs.interval_s:g}",
        "--max-file-bytes", str(spec.logs.max_file_bytes),
    ]
    return [
        f'{NODE_PYTHON} -m cluster.logship start --node "$(hostname)" '
        '--node-type "${RAY_NODE_TYPE_NAME:-}" ' + " ".join(shlex.quote(a) for a in args)
    ]


def head_start_commands(spec: ClusterSpec, facts: GcpFacts) -> list[str]:
    # Dashboard and Jobs API on loopback only: reached through `ray dashboard`
    # (an SSH tunnel from the provider VM), never from the network.
    params = ray_start.head_params(
        spec, dashboard_host="127.0.0.1", autoscaling_config="~/ray_bootstrap_config.yaml"
    )
    env = " ".join(f"{k}={v}" for k, v in ray_start.autoscaler_env(spec).items())
    return [
        _node_check(spec, head=True),
        # A dedicated VM: stop a previous Ray of this node so `ray up` can restart it.
        f"{NODE_RAY} stop",
        *logship_start_command(spec, facts, head=True),
        f"export {env}; {raise_open_files_limit()} && {NODE_RAY} start --head "
        + ray_start.shell_args(params),
    ]


def worker_start_commands(spec: ClusterSpec, facts: GcpFacts) -> list[str]:
    # Resources come from the node type: the autoscaler passes RAY_OVERRIDE_RESOURCES.
    env = " ".join(f"{k}={v}" for k, v in ray_start.node_env(spec).items())
    return [
        _node_check(spec, head=False),
        f"{NODE_RAY} stop",
        *logship_start_command(spec, facts, head=False),
        (
            f"export {env}; {raise_open_files_limit()} && "
            f"{NODE_RAY} start --address=$RAY_HEAD_IP:{GCS_PORT} "
            + ray_start.shell_args(ray_start.worker_params(spec))
        ),
    ]


def render_gcp(spec: ClusterSpec, facts: GcpFacts) -> dict[str, Any]:
    """The `ray up` config for GCP: private nodes, token auth, zero-write bootstrap."""
    types: dict[str, Any] = {}
    for name, t in sorted(spec.node_types.items()):
        head = name == spec.head_node_type
        entry: dict[str, Any] = {
            "resources": t.ray_resources(),
            "min_workers": t.min_workers,
            "max_workers": t.max_workers,
            "node_config": _node_config(spec, facts, name, t, head=head),
        }
        if t.is_gpu and not head:
            # A type's own worker_setup_commands replace the merged
            # setup_commands + worker_setup_commands, so repeat the common setup.
            entry["worker_setup_commands"] = (
                node_setup_commands(spec, facts) + gpu_driver_commands()
            )
        types[name] = entry
    return {
        **_scaling(spec),
        "provider": {
            "type": "external",
            "module": PROVIDER_MODULE,
            # GCPNodeProvider reads these three.
            "project_id": facts.project,
            "region": facts.region,
            "availability_zone": facts.zone,
            # Ours (cluster.gcp_zonal.ZonalGCPCompute): where nodes go when
            # availability_zone is out of capacity; [] = no fallback.
            "fallback_zones": list(facts.fallback_zones),
            "use_internal_ips": True,
            "cache_stopped_nodes": False,
            # Where the nodes ship Ray's logs (`python -m cluster logs` reads it here).
            **({"log_bucket": facts.bucket} if spec.logs.ship else {}),
            # Ours (cluster.gcp_clients): the APIs' base URLs, only when set.
            **(
                {"api_endpoints": facts.api_endpoints.as_config()}
                if facts.api_endpoints.as_config()
                else {}
            ),
        },
        "auth": {
            "ssh_user": layout.NODE_SSH_USER,
            "ssh_private_key": layout.OPERATOR_SSH_KEY,
        },
        "available_node_types": types,
        "head_node_type": spec.head_node_type,
        "file_mounts": {
            layout.NODE_SRC: layout.PROVIDER_SRC,
            layout.NODE_AUTH_TOKEN: layout.OPERATOR_AUTH_TOKEN,
        },
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": ["**/__pycache__", "**/*.pyc", "**/.ray-gcp-bundle.sha256"],
        "rsync_filter": [],
        "initialization_commands": [apt_install_command()],
        "setup_commands": node_setup_commands(spec, facts),
        "head_setup_commands": gpu_driver_commands() if spec.head.is_gpu else [],
        "worker_setup_commands": [],
        "head_start_ray_commands": head_start_commands(spec, facts),
        "worker_start_ray_commands": worker_start_commands(spec, facts),
    }


def example_gcp_facts(
    project: str = "my-ray-project",
    region: str = DEFAULT_REGION,
    cluster_name: str = DEFAULT_CLUSTER_NAME,
) -> GcpFacts:
    """The facts `pulumi up` would produce for this project, region and cluster name.

    Names (subnet, service accounts, bucket) come from cluster.names, as infra/
    names the resources, and the zone is the region's first (the stack's
    default zone for the default region). Only the deploy-time facts are
    placeholders: the pinned image and the launcher's public key.
    """
    subnet = names.resource_name(cluster_name, "subnet")
    return GcpFacts(
        project=project,
        region=region,
        zone=zones_of(region)[0],
        fallback_zones=default_fallback_zones(region, zones_of(region)[0]),
        # As GCE reports it: the subnet's selfLink.
        subnetwork=f"{GCE_API}/projects/{project}/regions/{region}/subnetworks/{subnet}",
        head_service_account=names.service_account_email(project, cluster_name, "head"),
        worker_service_account=names.service_account_email(project, cluster_name, "worker"),
        ssh_public_key=EXAMPLE_SSH_PUBLIC_KEY,
        image=EXAMPLE_IMAGE,
        bucket=names.bucket_name(project, cluster_name),
    )



def to_yaml(cfg: dict[str, Any]) -> str:
    """Deterministic YAML: sorted keys, block style, no anchors/aliases."""

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(cfg, Dumper=_NoAliases, sort_keys=True, default_flow_style=False, width=1000)
