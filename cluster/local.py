"""A real Ray cluster on this machine whose autoscaler launches fake worker nodes.

``LocalCluster`` runs the spec's node types with Ray's ``fake_multinode``
provider: the head is a normal ``ray start --head`` (token auth on, dashboard
on 127.0.0.1, every port chosen free at ``up()``) and the autoscaler starts
each "node" as another raylet process on this machine. Workloads scale,
fail and retry as on GCP, without a cloud.

Everything ``up()`` starts is tracked so that ``down()`` stops exactly that:

* ``ray start`` runs in a new session, so the head's daemons share its
  process group (recorded in ``state.json``);
* every process also inherits ``RAY_GCP_LOCAL_STATE=<state dir>``, which
  survives even a process that changes its group (fake nodes are spawned by
  the autoscaler and inherit it too). ``down()`` signals the union of both,
  and nothing else: never ``ray stop``, which would kill every Ray of the user.

State under ``state_dir``: ``state.json`` (ports, pgid, temp dir),
``auth_token`` (mode 0600), ``local-cluster.yaml`` (the rendered autoscaler
config), ``ray-start.log``, ``launches.json`` (the provider's launch ledger,
see ``status()``); for users' own jobs (``cluster/userjob.py``), as a
fresh node has them: ``bin/uv`` (a link to the pinned uv, on the cluster's
PATH), ``job-envs/`` (``$RAY_GCP_JOB_ENVS``, one environment per lock) and
``uv-cache/`` (the cluster's own ``UV_CACHE_DIR``, empty at first). Ray's
session files go to a short temp dir
``/tmp/rg-XXXX`` (unix socket paths must stay under 107 bytes), removed by
``down()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cluster import ray_start
from cluster.bundle import find_uv
from cluster.local_provider import node_temp_dir
from cluster.procs import (
    all_pids,
    cmdline,
    descendants,
    free_ports,
    is_shipper,
    pid_alive,
    port_open,
    proc_env,
    proc_pgid,
)
from cluster.render import LOCAL_HEAD_TYPE, render_local, to_yaml
from cluster.spec import ClusterSpec, local_default_spec

MARKER_ENV = "RAY_GCP_LOCAL_STATE"
DRIVER_LOG_DIR_ENV = "RAY_GCP_DRIVER_LOG_DIR"  # cluster.driver_log.LOG_DIR_ENV
# ray/autoscaler/_private/fake_multi_node/node_provider.py: the head's fixed id.
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"
STATE_FILE = "state.json"
TOKEN_FILE = "auth_token"
CONFIG_FILE = "local-cluster.yaml"
LOG_FILE = "ray-start.log"
LEDGER_FILE = "launches.json"
SHIPPER_LOG = "logship-head.log"
# The head's name in the shipped logs; fake workers are local-<type>-<id>.
HEAD_LOG_NAME = "local-head"
# How long down() gives the log shippers for their last pass.
SHIPPER_GRACE_S = 15.0
HOST = "127.0.0.1"
# A driver's ray.init replaces 127.0.0.1 in RAY_ADDRESS with the machine's own
# interface IP (services.resolve_ip_for_localhost) unless clusters are
# "disabled", which for a driver only means: stay on loopback.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# The head keeps a small object store; fake workers get theirs from render_local.
HEAD_OBJECT_STORE_BYTES = 256 * 1024 * 1024
_PORT_NAMES = (
    "gcs",
    "dashboard",
    "client_server",
    "metrics_export",
    "dashboard_agent_listen",
    "dashboard_agent_grpc",
    "runtime_env_agent",
    "node_manager",
    "object_manager",
    "autoscaler_metrics",
    "dashboard_metrics",
)


# Autoscaler v2's failed launches (ray.autoscaler.v2.sdk), as one JSON line.
_V2_STATUS_PROBE = """
import json, sys
from ray.autoscaler.v2.sdk import get_cluster_status
st = get_cluster_status(sys.argv[1])
failed = [f"{r.ray_node_type_name} x{r.count}: {r.details}" for r in st.failed_launches]
failed += [f"{n.ray_node_type_name} {n.instance_id}: {n.details}" for n in st.failed_nodes]
print(json.dumps({"failed": failed}))
"""


class LocalClusterError(RuntimeError):
    """The local cluster failed to start or answer; the message says where to look."""


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    node_id: str
    is_head: bool
    node_type: str | None
    resources: dict[str, float]


@dataclasses.dataclass(frozen=True)
class ClusterStatus:
    """Alive nodes from GCS plus what the autoscaler is still launching."""

    nodes: tuple[NodeInfo, ...]
    # Node type -> nodes launched that GCS does not know yet (see LocalCluster.status).
    pending: dict[str, int]
    failed: tuple[str, ...]

    @property
    def workers(self) -> tuple[NodeInfo, ...]:
        return tuple(n for n in self.nodes if not n.is_head)

    @property
    def worker_count(self) -> int:
        return len(self.workers)

    @property
    def pending_count(self) -> int:
        return sum(self.pending.values())

    def summary(self) -> str:
        by_type: dict[str, int] = {}
        for n in self.workers:
            by_type[n.node_type or "?"] = by_type.get(n.node_type or "?", 0) + 1
        types = ", ".join(f"{t}: {c}" for t, c in sorted(by_type.items())) or "none"
        pending = ", ".join(f"{t}: {c}" for t, c in sorted(self.pending.items())) or "none"
        lines = [
            f"alive nodes: {len(self.nodes)} (head + {self.worker_count} workers)",
            f"workers by type: {types}",
            f"pending/launching: {pending}",
        ]
        if self.failed:
            lines.append(f"failed: {', '.join(self.failed)}")
        return "\n".join(lines)


def read_launch_ledger(path: Path) -> dict[str, int]:
    """Node type -> nodes asked of the local provider whose processes it has not
    started yet (written by cluster/local_provider.py; none if absent)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(t): int(n) for t, n in (data.get("not_started") or {}).items() if int(n) > 0}


class LocalCluster:
    """One local autoscaling Ray cluster, owned by ``state_dir``."""

    def __init__(
        self,
        state_dir: Path | str,
        spec: ClusterSpec | None = None,
        *,
        autoscaler_v2: bool = False,
        full_zones: tuple[str, ...] = (),
        log_bucket: str | None = None,
        log_endpoint: str | None = None,
    ):
        """``autoscaler_v2``: run Ray's v2 autoscaler (what `ray up` uses on GCP)
        instead of v1 (the default of `ray start --autoscaling-config`).
        ``full_zones``: local zones (``render.LOCAL_ZONES``) that refuse every
        node with ZONE_RESOURCE_POOL_EXHAUSTED, to watch zone fallback.
        ``log_bucket`` and ``log_endpoint`` (a Cloud Storage emulator,
        ``http://127.0.0.1:PORT``): the head and every fake node ship their Ray
        logs there as VMs do (``cluster/logship.py``, the spec's ``logs``
        settings), and drivers keep a copy of their output; None (the
        default): nothing is shipped and no bucket is needed."""
        self.state_dir = Path(state_dir).resolve()
        self.spec = spec or local_default_spec()
        self.autoscaler_v2 = autoscaler_v2
        self.full_zones = tuple(full_zones)
        if log_bucket and not log_endpoint:
            raise LocalClusterError(
                "log_bucket needs log_endpoint: the local cluster ships to a Cloud Storage "
                "emulator (e.g. STORAGE_EMULATOR_HOST=http://127.0.0.1:9023), not to GCP"
            )
        self.log_bucket = log_bucket if self.spec.logs.ship else None
        self.log_endpoint = log_endpoint
        self._state: dict[str, Any] = {}
        self._load_state()

    # ---- public API --------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{HOST}:{self._require_state()['ports']['gcs']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self._require_state()['ports']['dashboard']}"

    @property
    def token_path(self) -> Path:
        return self.state_dir / TOKEN_FILE

    @property
    def config_path(self) -> Path:
        return self.state_dir / CONFIG_FILE

    @property
    def job_envs_dir(self) -> Path:
        """$RAY_GCP_JOB_ENVS of every (fake) node: users' job environments, one per lock."""
        return self.state_dir / "job-envs"

    @property
    def uv_cache_dir(self) -> Path:
        """The cluster's own uv cache (its nodes' UV_CACHE_DIR), not the user's."""
        return self.state_dir / "uv-cache"

    @property
    def bin_dir(self) -> Path:
        """On the cluster's PATH: a link to the pinned uv, for `uv run` of users' jobs."""
        return self.state_dir / "bin"

    @property
    def temp_dir(self) -> Path:
        return Path(self._require_state()["temp_dir"])

    def token(self) -> str:
        return self.token_path.read_text().strip()

    @property
    def shipping(self) -> bool:
        """True when this cluster ships its logs (``log_bucket``)."""
        return bool(self._state.get("log_bucket", self.log_bucket))

    @property
    def head_logs_dir(self) -> Path:
        """The head's Ray log directory (each fake node has its own, like a VM)."""
        return self.temp_dir / "session_latest" / "logs"

    def node_logs_dir(self, node_id: str) -> Path:
        """A fake worker node's Ray log directory."""
        return Path(node_temp_dir(str(self.temp_dir), node_id)) / "session_latest" / "logs"

    def _shipping_env(self) -> dict[str, str]:
        """With shipping: drivers copy their output into the head's logs
        (cluster/driver_log.py), as on a VM."""
        if not self.shipping:
            return {}
        return {
            **ray_start.driver_env(self.spec),
            DRIVER_LOG_DIR_ENV: str(self.head_logs_dir),
        }

    def driver_env(self) -> dict[str, str]:
        """Env vars a driver subprocess needs (merge into os.environ)."""
        return {
            "RAY_ADDRESS": self.address,
            # `ray job` reads this before RAY_ADDRESS and --address: the dashboard.
            "RAY_API_SERVER_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_USAGE_STATS_ENABLED": "0",
            **LOOPBACK_ENV,
            **self._shipping_env(),
        }

    def is_up(self) -> bool:
        """True when state is recorded, the head's processes live and GCS answers."""
        if not self._state:
            return False
        return bool(self._owned_pids()) and port_open(self._state["ports"]["gcs"])

    def up(self, timeout: float = 90.0, attempts: int = 2) -> LocalCluster:
        """Start the head (idempotent); wait until GCS and the dashboard answer.

        A failed start is stopped and retried once with fresh ports (another
        cluster on the machine may grab a port between choosing and binding).
        On final failure Ray's logs are kept in ``state_dir/failed-logs``.
        """
        self._load_state()
        if self.is_up():
            self._wait_ready(timeout)
            return self
        if self._state or self._owned_pids():
            # Leftovers of a crashed or half-stopped run: clear them first.
            self.down()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            try:
                self._start_head(timeout)
                self._wait_ready(timeout)
                return self
            except LocalClusterError:
                if attempt == attempts:
                    self._keep_logs()
                    self.down()
                    raise
                self.down()
        raise AssertionError("unreachable")

    def _keep_logs(self) -> None:
        logs = Path(self._state.get("temp_dir", "/nonexistent")) / "session_latest" / "logs"
        if logs.is_dir():
            dest = self.state_dir / "failed-logs"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(logs, dest, ignore_dangling_symlinks=True, dirs_exist_ok=True)

    def _start_head(self, timeout: float) -> None:
        self._ensure_token()
        self._link_uv()
        ports = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)), strict=True))
        temp_dir = tempfile.mkdtemp(prefix="rg-", dir="/tmp")
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / LEDGER_FILE).unlink()  # a crashed run's
        config = render_local(
            self.spec,
            gcs_port=ports["gcs"],
            host=HOST,
            full_zones=self.full_zones,
            launch_ledger=str(self.state_dir / LEDGER_FILE),
            node_temp_root=temp_dir,
            log_bucket=self.log_bucket,
            log_endpoint=self.log_endpoint,
        )
        self.config_path.write_text(to_yaml(config))
        # Record before starting anything, so a crash in between is cleanable.
        self._state = {
            "ports": ports,
            "temp_dir": temp_dir,
            "pgid": None,
            "started": time.time(),
            "autoscaler_v2": self.autoscaler_v2,
            "log_bucket": self.log_bucket,
        }
        self._save_state()

        cmd = [sys.executable, "-m", "ray.scripts.scripts", *self.head_argv()]
        shipper = self._head_shipper_argv()
        if shipper:
            # As on a VM, the shipper starts first and waits for the session; both
            # run in the head's new session and process group.
            log_path = shlex.quote(str(self.state_dir / SHIPPER_LOG))
            script = (
                f"{shlex.join(shipper)} >>{log_path} 2>&1 </dev/null & exec {shlex.join(cmd)}"
            )
            cmd = ["/bin/sh", "-c", script]
        with open(self.state_dir / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                env=self._head_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.state_dir,
            )
            self._state["pgid"] = proc.pid
            self._save_state()
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise LocalClusterError(
                    f"`ray start --head` did not return in {timeout:.0f}s; "
                    f"see {self.state_dir / LOG_FILE}"
                ) from None
        if rc != 0:
            raise LocalClusterError(
                f"`ray start --head` failed (exit {rc}); see {self.state_dir / LOG_FILE}"
            )

    def _head_shipper_argv(self) -> list[str]:
        """The head's log shipper (as a VM runs it), or [] without shipping."""
        if not self.shipping:
            return []
        from cluster.logship import ShipConfig, run_argv

        cfg = ShipConfig(
            bucket=self.log_bucket,
            cluster=self.spec.cluster_name,
            node=HEAD_LOG_NAME,
            role="head",
            node_type=LOCAL_HEAD_TYPE,
            logs_dir=str(self.head_logs_dir),
            interval_s=self.spec.logs.interval_s,
            max_file_bytes=self.spec.logs.max_file_bytes,
        )
        return ["env", f"STORAGE_EMULATOR_HOST={self.log_endpoint}", sys.executable, "-m",
                "cluster.logship", "run", *run_argv(cfg)]

    def head_argv(self) -> list[str]:
        """`ray start` arguments of the head: cluster.ray_start's head parameters
        (the same as on VMs and pods) with this cluster's free ports, plus the
        local-only extras (loopback IP, every other port, temp dir)."""
        state = self._require_state()
        ports = state["ports"]
        shared = ray_start.head_params(
            self.spec,
            ports=ray_start.RayPorts(
                gcs=ports["gcs"],
                dashboard=ports["dashboard"],
                client_server=ports["client_server"],
                object_manager=ports["object_manager"],
            ),
            dashboard_host=HOST,
            autoscaling_config=str(self.config_path),
        )
        local_only = {
            "node-ip-address": HOST,
            "metrics-export-port": ports["metrics_export"],
            "dashboard-agent-listen-port": ports["dashboard_agent_listen"],
            "dashboard-agent-grpc-port": ports["dashboard_agent_grpc"],
            "runtime-env-agent-port": ports["runtime_env_agent"],
            "node-manager-port": ports["node_manager"],
            # 0 = let the OS pick worker ports, so parallel clusters cannot collide.
            "min-worker-port": 0,
            "max-worker-port": 0,
            "object-store-memory": HEAD_OBJECT_STORE_BYTES,
            "temp-dir": state["temp_dir"],
        }
        return ["start", "--head", *ray_start.cli_args({**shared, **local_only})]

    def down(self, grace: float = 5.0) -> list[int]:
        """Stop only what up() started; remove our temp dir. Returns the pids signalled.

        SIGTERM first; whatever is still alive after ``grace`` seconds gets
        SIGKILL (gcs_server takes >10 s to exit on SIGTERM, nothing of a
        throwaway cluster needs a graceful shutdown).
        """
        self._load_state()
        pids = self._owned_pids()
        # Ray first, the log shippers after it (their last pass then holds
        # Ray's last lines), as when a VM shuts down.
        shippers = {p for p in pids if is_shipper(p)}
        self._signal(pids - shippers, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            # Ray's daemons may fork late children; re-scan, not just re-check.
            remaining = {p for p in self._owned_pids() if not is_shipper(p)}
            if not remaining:
                break
            time.sleep(0.2)
        self._signal({p for p in self._owned_pids() if not is_shipper(p)}, signal.SIGKILL)
        shippers = {p for p in self._owned_pids() if is_shipper(p)}
        self._signal(shippers, signal.SIGTERM)
        deadline = time.monotonic() + SHIPPER_GRACE_S
        while shippers and time.monotonic() < deadline:
            shippers = {p for p in shippers if pid_alive(p)}
            time.sleep(0.2)
        pids = pids | shippers
        leftovers = self._owned_pids()
        self._signal(leftovers, signal.SIGKILL)
        kill_deadline = time.monotonic() + 5
        while self._owned_pids() and time.monotonic() < kill_deadline:
            time.sleep(0.1)
        if self._state.get("temp_dir"):
            shutil.rmtree(self._state["temp_dir"], ignore_errors=True)
        for name in (LEDGER_FILE, STATE_FILE):
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / name).unlink()
        self._state = {}
        return sorted(set(pids) | set(leftovers))

    def owned_pids(self) -> list[int]:
        """Live processes this cluster started (for leak checks)."""
        return sorted(self._owned_pids())

    def status(self) -> ClusterStatus:
        """Alive nodes (GCS, through the dashboard) and the nodes still launching.

        A worker is *launching* from the autoscaler's create call until GCS
        knows its node: while the provider has not started its processes (the
        provider's launch ledger, cluster/local_provider.py), then while its
        raylet runs and GCS has not registered it. Ray's own reports cannot
        say this: v1's ``pendingLaunches`` counts a batch until the create call
        returns, after nodes of the batch are up, and both v1's pending nodes
        and v2's instance states lag GCS by an autoscaler round; summed with the
        alive nodes they counted nodes twice ("3 alive, 3 launching" with at
        most 3). Read in the order a node moves (GCS, then the processes, then
        the ledger), a node that moves meanwhile is counted once or not at
        all, never twice: alive + launching never exceeds what was launched.
        Failed launches: v1's report, or v2's own state API."""
        nodes_raw = self._api("/api/v0/nodes?detail=1&limit=1000")["data"]["result"]["result"]
        known_to_gcs = {n["node_id"] for n in nodes_raw}  # alive or dead
        nodes = [
            NodeInfo(
                node_id=n["node_id"],
                is_head=bool(n.get("is_head_node")),
                node_type=None,
                resources=dict(n.get("resources_total") or {}),
            )
            for n in nodes_raw
            if n.get("state") == "ALIVE"
        ]
        raylet_types = self._raylet_node_types()
        pending: dict[str, int] = {}
        for node_id, node_type in raylet_types.items():
            if node_id != FAKE_HEAD_NODE_ID and node_id not in known_to_gcs:
                pending[node_type] = pending.get(node_type, 0) + 1
        for node_type, count in read_launch_ledger(self.state_dir / LEDGER_FILE).items():
            pending[node_type] = pending.get(node_type, 0) + count
        failed: list[str] = []
        if self._state.get("autoscaler_v2", self.autoscaler_v2):
            # The running cluster's own choice (`local status` may not repeat the flag).
            failed = self._v2_failed()
            report: dict[str, Any] = {}
        else:
            cs = (self._api("/api/cluster_status").get("data") or {}).get("clusterStatus") or {}
            report = cs.get("autoscalerReport") or {}
            failed = [" ".join(str(x) for x in entry) for entry in report.get("failedNodes") or []]
        # v1's report maps node ids to types; under v2 the raylets' environment does.
        type_of = {**raylet_types, **(report.get("nodeTypeMapping") or {})}
        nodes = [dataclasses.replace(n, node_type=type_of.get(n.node_id)) for n in nodes]
        return ClusterStatus(
            nodes=tuple(sorted(nodes, key=lambda n: (not n.is_head, n.node_id))),
            pending=pending,
            failed=tuple(failed),
        )

    def wait_for_workers(
        self, n: int, timeout: float = 120.0, exact: bool = False
    ) -> ClusterStatus:
        """Block until at least n (exactly n with exact=True) workers are alive."""
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            st = self.status()
            if st.worker_count == n or (not exact and st.worker_count >= n):
                return st
            time.sleep(1.0)
        raise TimeoutError(
            f"waited {timeout:.0f}s for {'exactly ' if exact else ''}{n} alive workers; "
            f"last status:\n{st.summary() if st else 'no answer'}"
        )

    def kill_worker_node(self, node_id: str | None = None) -> str:
        """SIGKILL one fake worker's raylet and its children (like a lost VM).

        The fake provider gives each node's raylet its id in
        RAY_OVERRIDE_NODE_ID_FOR_TESTING; the node's processes are that raylet
        and its descendants (workers, agents). Tasks running there fail with
        NODE_DIED and are retried; the autoscaler sees the node gone.
        """
        workers = self.status().workers
        if not workers:
            raise LocalClusterError("no alive worker node to kill")
        ids = {w.node_id for w in workers}
        if node_id is None:
            node_id = min(ids)
        elif node_id not in ids:
            raise LocalClusterError(
                f"node {node_id!r} is not an alive worker; alive: {sorted(ids)}"
            )
        owned = self._owned_pids()
        # The raylet and the node's shipper carry its id; its log monitor (a child
        # of the autoscaler) names the node's own directory.
        node_dir = node_temp_dir(str(self.temp_dir), node_id) + "/"
        roots = {
            pid
            for pid in owned
            if proc_env(pid).get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") == node_id
            or node_dir in cmdline(pid)
        }
        victims = descendants(roots, owned)
        if not roots:
            raise LocalClusterError(f"found no process of node {node_id}")
        self._signal(victims, signal.SIGKILL)
        return node_id

    # ---- internals ---------------------------------------------------------

    def _v2_failed(self) -> list[str]:
        """Failed launches from autoscaler v2's own state API.

        v2 publishes no report to the dashboard; ``ray.autoscaler.v2.sdk``
        reads its state from GCS. That needs this cluster's token, so it runs
        in a short driver process with ``driver_env()`` (a token loaded into
        this process would stick to it, and it may talk to other clusters).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(self.driver_env())
        proc = subprocess.run(
            [sys.executable, "-c", _V2_STATUS_PROBE, self.address],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise LocalClusterError(
                f"autoscaler v2 state query failed (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}"
            )
        return json.loads(proc.stdout.strip().splitlines()[-1])["failed"]

    def _raylet_node_types(self) -> dict[str, str]:
        """node id -> node type of the fake workers, from their raylets' environment."""
        out = {}
        for pid in self._owned_pids():
            env = proc_env(pid)
            node_id = env.get("RAY_OVERRIDE_NODE_ID_FOR_TESTING")
            if node_id and env.get("RAY_NODE_TYPE_NAME"):
                out[node_id] = env["RAY_NODE_TYPE_NAME"]
        out[FAKE_HEAD_NODE_ID] = LOCAL_HEAD_TYPE
        return out

    def _head_env(self) -> dict[str, str]:
        # The caller's RAY_* (an address, a token, another mode) must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            {
                MARKER_ENV: str(self.state_dir),
                "RAY_FAKE_CLUSTER": "1",
                "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                # Token auth for the head and, by inheritance through the
                # autoscaler that spawns them, every fake worker node
                # (cluster.ray_start.node_env, as on VMs and pods). The
                # autoscaler's launch knobs (ray_start.autoscaler_env) stay
                # opt-in here: the scale-up benchmark compares them with
                # Ray's defaults.
                **ray_start.node_env(self.spec),
                "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                "RAY_USAGE_STATS_ENABLED": "0",
                # What `ray up` exports for the head; autoscaler v2 matches the
                # head's Ray node to its cloud instance by these.
                "RAY_enable_autoscaler_v2": "1" if self.autoscaler_v2 else "0",
                # Python's own temp files (multiprocessing's pymp-* dirs of the
                # dashboard) land in our temp dir, which down() removes.
                "TMPDIR": self._state["temp_dir"],
                "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
                # Their default ports (44217, 44227) would collide between clusters.
                "AUTOSCALER_METRIC_PORT": str(self._state["ports"]["autoscaler_metrics"]),
                "DASHBOARD_METRIC_PORT": str(self._state["ports"]["dashboard_metrics"]),
                # With log shipping: job drivers record their job id, as on a VM.
                **self._shipping_env(),
                # `ray job submit -- python x.py` runs this venv's python, as on a node,
                # and users' jobs find the pinned uv.
                # (No LOOPBACK_ENV here: fake nodes are told apart by their
                # node-id "IPs", which it would collapse into 127.0.0.1.)
                "PATH": os.pathsep.join(
                    [str(Path(sys.executable).parent), str(self.bin_dir), env.get("PATH", "")]
                ),
                # Users' jobs (cluster/userjob.py): environments and downloads stay
                # in the state dir, like a node's own disk.
                "RAY_GCP_JOB_ENVS": str(self.job_envs_dir),
                "UV_CACHE_DIR": str(self.uv_cache_dir),
            }
        )
        env.pop("AUTOSCALER_MAX_NUM_FAILURES", None)
        return env

    def _link_uv(self) -> None:
        uv = find_uv(Path(__file__).resolve().parent.parent)
        if uv is None:
            return  # users' jobs then fail with "no `uv` on PATH" (cluster/userjob.py)
        self.bin_dir.mkdir(exist_ok=True)
        link = self.bin_dir / "uv"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(uv).resolve())

    def _ensure_token(self) -> None:
        from ray._private.authentication.authentication_token_generator import (
            generate_new_authentication_token,
        )

        if self.token_path.exists() and self.token_path.read_text().strip():
            os.chmod(self.token_path, 0o600)
            return
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_new_authentication_token())
        os.chmod(self.token_path, 0o600)

    def _require_state(self) -> dict[str, Any]:
        if not self._state:
            raise LocalClusterError(f"no local cluster recorded in {self.state_dir}; run up()")
        return self._state

    def _load_state(self) -> None:
        try:
            self._state = json.loads((self.state_dir / STATE_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self._state = {}

    def _save_state(self) -> None:
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self._state, indent=2, sort_keys=True))
        tmp.replace(self.state_dir / STATE_FILE)

    def _owned_pids(self) -> set[int]:
        me = os.getpid()
        pgid = self._state.get("pgid")
        owned = set()
        for pid in all_pids():
            if pid == me:
                continue
            ours = (pgid and proc_pgid(pid) == pgid) or (
                proc_env(pid).get(MARKER_ENV) == str(self.state_dir)
            )
            if ours and pid_alive(pid):
                owned.add(pid)
        return owned

    @staticmethod
    def _signal(pids: set[int] | list[int], sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def _api(self, path: str, timeout: float = 10.0) -> dict[str, Any]:
        req = urllib.request.Request(
            self.dashboard_url + path, headers={"Authorization": f"Bearer {self.token()}"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if port_open(self._state["ports"]["gcs"]):
                try:
                    self.status()
                    return
                except (urllib.error.URLError, OSError, KeyError, ValueError, LocalClusterError) as e:
                    last_err = e  # LocalClusterError: v2's state not served yet
            time.sleep(0.5)
        raise LocalClusterError(
            f"cluster did not answer within {timeout:.0f}s (GCS {self.address}, dashboard "
            f"{self.dashboard_url}): {last_err}; see {self.state_dir / LOG_FILE} and "
            f"{self.state_dir / 'failed-logs'}"
        )
