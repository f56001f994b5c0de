"""Autostop on the VM path: the provider VM watches the head that `ray up` created.

Each check (``python -m cluster.autostop vm-check``, run once a minute by the
``ray-gcp-autostop.timer`` the boot script installs):

1. who is logged in to this VM (systemd-logind, ``loginctl``): the ``login`` rule;
2. the head: Ray's own node provider with the cluster's config lists the
   cluster's head VM (``compute.instances.list`` with Ray's labels, the call
   `ray up` already makes). None: the cluster is ``absent``;
3. an SSH tunnel to the head (the launcher key, as `ray up` uses it) forwards
   the dashboard (it listens on the head's loopback only) and the GCS; through
   it ``cluster.idle_probe.gather`` reads jobs, drivers, actors, tasks,
   placement groups and demand. No SSH connection or no answer: the head is
   ``unreachable``;
4. ``cluster.idle`` decides; when the cluster has been quiet for the whole
   timeout: ``ray down -y`` with the cluster's config (results in the bucket
   stay), a check that no node of the cluster is left, and only then
   ``systemctl poweroff``: the guest shuts down, Compute Engine marks the VM
   TERMINATED and bills only its disk. Needs no IAM permission at all. If
   ``ray down`` fails or leaves a node, the VM stays up and tries again at the
   next check (logged), rather than power off and leave a head billing with
   nobody watching it.

Bring it back with the stack output ``startCommand`` (``gcloud compute
instances start``), then ``ray up`` as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cluster import idle, layout
from cluster.autostop import (
    StateFile,
    StopFailed,
    VmConfig,
    Watcher,
    boot_id,
    journal_log,
)
from cluster.idle_probe import HeadUnreachable, ProbeError, gather
from cluster.ray_start import DASHBOARD_PORT, GCS_PORT

POWEROFF = ("systemctl", "poweroff")


# ---- who is logged in --------------------------------------------------------------------

Runner = Callable[..., subprocess.CompletedProcess]


def logged_in_users(run: Runner = subprocess.run) -> tuple[str, ...]:
    """Users with an open login session on this VM (systemd-logind), IAP SSH included.

    Sessions that are closing (the user logged out, something of theirs still
    runs) do not count: a driver they left running counts by itself.
    """
    try:
        listed = run(["loginctl", "list-sessions", "--no-legend"], capture_output=True,
                     text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProbeError(f"loginctl list-sessions: {exc}") from None
    if listed.returncode != 0:
        raise ProbeError(f"loginctl list-sessions failed: {listed.stderr.strip()[-200:]}")
    ids = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    if not ids:
        return ()
    shown = run(["loginctl", "show-session", *ids, "--property=Name", "--property=Class",
                 "--property=State"], capture_output=True, text=True, timeout=30, check=False)
    if shown.returncode != 0:
        raise ProbeError(f"loginctl show-session failed: {shown.stderr.strip()[-200:]}")
    users = set()
    for block in shown.stdout.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Class") == "user" and props.get("State") != "closing" and props.get("Name"):
            users.add(props["Name"])
    return tuple(sorted(users))


# ---- the head ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Head:
    node_id: str
    ip: str


def _provider(config: dict[str, Any]):
    from ray.autoscaler._private.providers import _get_node_provider

    return _get_node_provider(config["provider"], config["cluster_name"], use_cache=False)


def cluster_nodes(config: dict[str, Any], kind: str | None = None) -> list[str]:
    """The cluster's non-terminated VMs (``kind``: "head" or "worker" only)."""
    from ray.autoscaler.tags import TAG_RAY_NODE_KIND

    try:
        return list(_provider(config).non_terminated_nodes({TAG_RAY_NODE_KIND: kind} if kind else {}))
    except Exception as exc:  # noqa: BLE001 (an API error: cannot see the cluster clearly)
        raise ProbeError(f"listing the cluster's VMs failed: {type(exc).__name__}: {exc}") from None


def find_head(config: dict[str, Any]) -> Head | None:
    """The head VM of the cluster, through Ray's own provider and the config's labels."""
    from ray.autoscaler.tags import NODE_KIND_HEAD

    heads = cluster_nodes(config, NODE_KIND_HEAD)
    if not heads:
        return None
    provider = _provider(config)
    node = min(heads)
    internal = config["provider"].get("use_internal_ips")
    ip = provider.internal_ip(node) if internal else provider.external_ip(node)
    if not ip:
        raise HeadUnreachable(f"the head VM {node} has no IP address yet")
    return Head(node, ip)


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def ssh_tunnel(
    host: str,
    *,
    user: str,
    key: Path,
    remote_ports: Sequence[int],
    connect_timeout: float = 20.0,
) -> Iterator[dict[int, int]]:
    """Forward loopback ports to ``remote_ports`` on the head's loopback; yields {remote: local}.

    The head's dashboard listens on its loopback only (cluster/render.py), so
    the tunnel is the way in, with the launcher key `ray up` uses. No
    connection: HeadUnreachable. A refused key: ProbeError (we cannot see, but
    the head is there).
    """
    ports = {remote: _free_port() for remote in remote_ports}
    argv = [
        "ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", f"ConnectTimeout={int(connect_timeout)}", "-o", "ExitOnForwardFailure=yes",
        "-o", "ServerAliveInterval=10", "-o", "LogLevel=ERROR", "-N",
    ]
    for remote, local in ports.items():
        argv += ["-L", f"127.0.0.1:{local}:127.0.0.1:{remote}"]
    argv.append(f"{user}@{host}")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + connect_timeout + 5
        while not all(_port_open(p) for p in ports.values()):
            if proc.poll() is not None:
                err = (proc.stderr.read() if proc.stderr else "").strip()[-300:]
                if "Permission denied" in err or "Host key verification failed" in err:
                    raise ProbeError(f"ssh {user}@{host} refused the launcher key: {err}")
                raise HeadUnreachable(f"no SSH connection to the head {host}: {err or 'ssh exited'}")
            if time.monotonic() > deadline:
                raise HeadUnreachable(f"no SSH connection to the head {host} in {connect_timeout:.0f} s")
            time.sleep(0.2)
        yield ports
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


class VmProbe:
    """logins + head VM + tunnel + gather: one ClusterSnapshot per call."""

    def __init__(self, config: VmConfig, *, run: Runner = subprocess.run,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.run = run
        self.clock = clock

    def __call__(self) -> idle.ClusterSnapshot:
        users = logged_in_users(self.run)
        cluster = self.config.cluster_config()
        try:
            head = find_head(cluster)
        except HeadUnreachable as exc:  # a head VM without an address yet
            return idle.ClusterSnapshot(self.clock(), head=idle.HEAD_UNREACHABLE,
                                        head_detail=str(exc), logins=users)
        if head is None:
            return idle.ClusterSnapshot(
                self.clock(), head=idle.HEAD_ABSENT, logins=users,
                head_detail=(f"no head VM of Ray cluster {cluster['cluster_name']!r} exists "
                             "(`ray up` has not run, or `ray down` did)"),
            )
        token = self.config.token_file.read_text().strip()
        try:
            with ssh_tunnel(head.ip, user=cluster["auth"]["ssh_user"], key=self.config.ssh_key,
                            remote_ports=(DASHBOARD_PORT, GCS_PORT)) as ports:
                return gather(f"http://127.0.0.1:{ports[DASHBOARD_PORT]}", token,
                              gcs_address=f"127.0.0.1:{ports[GCS_PORT]}", logins=users,
                              now=self.clock())
        except HeadUnreachable as exc:
            return idle.ClusterSnapshot(self.clock(), head=idle.HEAD_UNREACHABLE,
                                        head_detail=f"head {head.node_id} ({head.ip}): {exc}",
                                        logins=users)


# ---- stop: ray down, then power off ----------------------------------------------------------


def prepare_launcher_home(config: VmConfig) -> Path:
    """A HOME where the cluster config's ``auth.ssh_private_key`` (``~/.ray-gcp/...``)
    is the launcher key, root-only, as `ray up`/`ray down` expect it. Returns HOME."""
    home = config.state_dir
    key_copy = home / layout.OPERATOR_SSH_KEY.removeprefix("~/")
    key_copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_copy.parent.chmod(0o700)
    tmp = key_copy.with_name(key_copy.name + ".tmp")
    shutil.copyfile(config.ssh_key, tmp)
    tmp.chmod(0o600)
    tmp.replace(key_copy)
    return home


def ray_down_command(config: VmConfig) -> Callable[[], str]:
    """`ray down -y <cluster.yaml>`: the venv's Ray CLI in a process of its own."""

    def ray_down() -> str:
        env = {**os.environ, "HOME": str(prepare_launcher_home(config))}
        proc = subprocess.run([str(config.ray), "down", "-y", str(config.cluster_yaml)],
                              env=env, capture_output=True, text=True, timeout=1800, check=False)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        if proc.returncode != 0:
            raise StopFailed(f"ray down exited {proc.returncode}: {' | '.join(tail)}")
        return " | ".join(tail[-2:])

    return ray_down


class VmStop:
    """``ray down`` (injectable), then check that no VM of the cluster is left."""

    def __init__(self, config: VmConfig, *, ray_down: Callable[[], str] | None = None,
                 nodes_left: Callable[[], list[str]] | None = None):
        self.config = config
        self.ray_down = ray_down or ray_down_command(config)
        self.nodes_left = nodes_left or (lambda: cluster_nodes(config.cluster_config()))

    def __call__(self, state: idle.WatchState) -> str:
        started = time.monotonic()
        said = self.ray_down()
        try:
            left = self.nodes_left()
        except ProbeError as exc:
            raise StopFailed(f"after ray down, cannot list the cluster's VMs: {exc}") from None
        if left:
            raise StopFailed(f"ray down left {len(left)} VM(s) of the cluster: {', '.join(left)}")
        return (f"ray down -y {self.config.cluster_yaml} finished in "
                f"{time.monotonic() - started:.0f} s, no VM of the cluster is left ({said})")


def power_off(run: Runner = subprocess.run, argv: Sequence[str] = POWEROFF) -> None:
    """Shut the guest down: Compute Engine then stops the VM (TERMINATED, disk billed only)."""
    journal_log(f"powering off the provider VM: {' '.join(argv)}")
    run(list(argv), check=False, timeout=60)


def check_once(config: VmConfig, *, run: Runner = subprocess.run) -> int:
    """What the systemd service runs: one check; stop and power off when due."""
    if config.timeout_minutes == 0:
        journal_log("autostop is off (idleTimeoutMinutes = 0); nothing to do")
        return 0
    watcher = Watcher(
        timeout_s=config.timeout_minutes * 60,
        probe=VmProbe(config, run=run),
        stop=VmStop(config),
        store=StateFile(config.state_file),
        log=journal_log,
        epoch=boot_id(),
        after_stop=lambda: power_off(run),
    )
    watcher.check()
    return 0
