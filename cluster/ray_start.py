"""The `ray start` parameters and environment of every Ray node, on every platform.

One source of truth for what a Ray node is started with, whoever starts it:

* ``cluster.render`` (GCE VMs, ``ray up``): joined into the
  ``head_start_ray_commands`` / ``worker_start_ray_commands`` shell lines;
* ``cluster.local`` (``LocalCluster``): the head's ``ray start`` argv and env,
  with its own free ports and extras (temp dir, loopback IP) on top;
* ``cluster.kuberay`` (KubeRay on GKE): ``rayStartParams`` (the same keys,
  without ``--``, values as strings) and the containers' ``env``.

Parameters are a dict ``{long option without "--": value}``; ``True`` is a
switch (``--disable-usage-stats``), anything else becomes ``--key=value``.
Ports are an input (:class:`RayPorts`): VMs and pods use the fixed
defaults, the local cluster passes ports it found free. The dashboard host is
an input too: 127.0.0.1 on VMs and locally, 0.0.0.0 on Kubernetes, where the
KubeRay operator reaches the dashboard through the head Service.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex

from cluster.spec import ClusterSpec

GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_SERVER_PORT = 10001
OBJECT_MANAGER_PORT = 8076

ParamValue = str | int | float | bool


@dataclasses.dataclass(frozen=True)
class RayPorts:
    """The ports a head listens on that clients and other nodes must know."""

    gcs: int = GCS_PORT
    dashboard: int = DASHBOARD_PORT
    client_server: int = CLIENT_SERVER_PORT
    object_manager: int = OBJECT_MANAGER_PORT


DEFAULT_PORTS = RayPorts()


def launch_concurrency(spec: ClusterSpec) -> int:
    """Nodes the autoscaler may launch at once: a whole burst up to max_workers.

    Ray's defaults (AUTOSCALER_MAX_LAUNCH_BATCH=5, ..._CONCURRENT_LAUNCHES=10)
    would split a 0 -> max_workers burst into several rounds.
    """
    return max(spec.max_workers, 10)


def _resource_params(resources: dict[str, float | int]) -> dict[str, ParamValue]:
    params: dict[str, ParamValue] = {"num-cpus": resources.get("CPU", 0)}
    if "GPU" in resources:
        params["num-gpus"] = resources["GPU"]
    custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
    if custom:
        params["resources"] = json.dumps(custom, sort_keys=True)
    return params


def head_params(
    spec: ClusterSpec,
    *,
    ports: RayPorts = DEFAULT_PORTS,
    dashboard_host: str = "127.0.0.1",
    autoscaling_config: str | None = None,
) -> dict[str, ParamValue]:
    """`ray start --head` options (without ``--head`` itself).

    ``autoscaling_config``: the autoscaler config path the head's monitor
    runs (VMs, local); None on Kubernetes, where KubeRay's sidecar autoscales.
    """
    params: dict[str, ParamValue] = {
        "port": ports.gcs,
        "object-manager-port": ports.object_manager,
        "ray-client-server-port": ports.client_server,
        "dashboard-host": dashboard_host,
        "dashboard-port": ports.dashboard,
    }
    if autoscaling_config is not None:
        params["autoscaling-config"] = autoscaling_config
    params["disable-usage-stats"] = True
    params.update(_resource_params(spec.head.ray_resources()))
    return params


def worker_params(
    spec: ClusterSpec, node_type: str | None = None, *, ports: RayPorts = DEFAULT_PORTS
) -> dict[str, ParamValue]:
    """`ray start` options of a worker (without ``--address``).

    With ``node_type`` the type's resources are included (Kubernetes: each
    worker group's pods say their own resources). Without it they are left
    out: on VMs and locally the autoscaler passes them in
    RAY_OVERRIDE_RESOURCES.
    """
    params: dict[str, ParamValue] = {
        "object-manager-port": ports.object_manager,
        "disable-usage-stats": True,
    }
    if node_type is not None:
        params.update(_resource_params(spec.node_types[node_type].ray_resources()))
    return params


def node_env(spec: ClusterSpec) -> dict[str, str]:
    """Environment of every Ray node process: token auth on, and Ray's own log
    rotation sized by the spec (without it a worker's stdout file grows without
    bound; Ray's default keeps 6 x 512 MiB of every file)."""
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_ROTATION_MAX_BYTES": str(spec.logs.rotate_bytes),
        "RAY_ROTATION_BACKUP_COUNT": str(spec.logs.rotate_backups),
    }


# Ray's runtime-env hook, which every driver's ray.init() calls: a copy of the
# output of drivers that are not Ray jobs in the node's Ray logs (cluster/driver_log.py).
DRIVER_LOG_HOOK = "cluster.driver_log.hook"


def driver_env(spec: ClusterSpec) -> dict[str, str]:
    """Environment of drivers (and, inherited, of every Ray process) on a node
    that has the ``cluster`` package: VMs and the local cluster. The copy of a
    driver's output rotates like Ray's own files. Empty when logs are not shipped."""
    if not spec.logs.ship:
        return {}
    return {
        "RAY_RUNTIME_ENV_HOOK": DRIVER_LOG_HOOK,
        "RAY_GCP_DRIVER_LOG_MAX_BYTES": str(spec.logs.rotate_bytes),
    }


def autoscaler_env(spec: ClusterSpec) -> dict[str, str]:
    """Environment of the autoscaler (the head's monitor, or KubeRay's sidecar)."""
    n = str(launch_concurrency(spec))
    return {
        **node_env(spec),
        "AUTOSCALER_MAX_LAUNCH_BATCH": n,
        "AUTOSCALER_MAX_CONCURRENT_LAUNCHES": n,
    }


def cli_args(params: dict[str, ParamValue]) -> list[str]:
    """argv items: ``--switch`` for True, ``--key=value`` otherwise (no shell quoting)."""
    out = []
    for key, value in params.items():
        if value is True:
            out.append(f"--{key}")
        elif value is False:
            continue
        else:
            out.append(f"--{key}={value}")
    return out


_SHELL_SAFE = re.compile(r"^[\w@%+=:,./~-]+$")


def shell_args(params: dict[str, ParamValue]) -> str:
    """The same for a shell command line: values quoted unless plainly safe
    (a leading ``~`` stays unquoted so the shell expands it)."""
    out = []
    for arg in cli_args(params):
        key, sep, value = arg.partition("=")
        if sep and not _SHELL_SAFE.match(value):
            arg = f"{key}={shlex.quote(value)}"
        out.append(arg)
    return " ".join(out)
