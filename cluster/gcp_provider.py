"""Ray's GCP node provider with a bootstrap that only reads.

Ray's own ``bootstrap_gcp`` (ray/autoscaler/_private/gcp/config.py) may create
a project and a service account, rewrite the project IAM policy, append to
project-wide ``ssh-keys`` metadata and attach a public IP. None of that may
happen here: ``pulumi up`` created everything with least privilege, and the
launcher's credentials cannot (and must not) write IAM.

``ReadOnlyGCPNodeProvider`` is loaded by Ray's official extension point::

    provider:
      type: external
      module: cluster.gcp_provider.ReadOnlyGCPNodeProvider
      project_id: ...          # GCPNodeProvider still reads these three
      region: ...
      availability_zone: ...

Ray imports it by that dotted path (``providers._import_external`` ->
``load_function_or_class``) wherever an autoscaler runs: on the provider VM
for ``ray up``/``ray down`` (which call the static ``bootstrap_config``), and on
the head, whose autoscaler (v1 ``StandardAutoscaler`` or v2
``NodeProviderAdapter``) instantiates the class from the already bootstrapped
``~/ray_bootstrap_config.yaml``. Instance creation and deletion is
GCPNodeProvider's code; only the choice of zone is ours (below).

Zone fallback (``ZonalGCPCompute``): ``availability_zone`` is the preferred
zone and ``fallback_zones`` (optional, ordered) the others. A create goes to
the first zone not cooling down; when ``instances.insert`` or its zone
operation answers a capacity or availability error (``cluster.zones.zone_error``:
ZONE_RESOURCE_POOL_EXHAUSTED[_WITH_DETAILS], QUOTA_EXCEEDED, a machine or
accelerator type the zone lacks) the rest of the request goes to the next zone
and the exhausted one is skipped for ``zone_cooldown_s`` (default 300 s). Any
other error (bad request, permission denied) surfaces at once. Every call that
addresses a node (list, get, setLabels, delete) goes to the node's own zone.
The GCP methods stay Ray's: instances.insert/list/get/setLabels/delete and
zoneOperations.get, once per zone where Ray made one call.

API endpoints (``api_endpoints``, optional): ``{compute: URL, iam: URL,
cloudresourcemanager: URL}``, each the API's whole base URL (Private Service
Connect endpoints, or a fake API in tests). Both the bootstrap and the node
provider build their clients through ``cluster.gcp_clients.construct_clients``,
which passes each URL as ``client_options.api_endpoint``; the key stays in the
head's copy of the config, so the head's autoscaler uses the same endpoints.
Ray's own ``gcp_credentials`` (``credentials_token``) works with it unchanged.

``bootstrap_config`` checks, top-down, one function per step, and calls only
GET APIs (``projects.get``, ``serviceAccounts.get`` per account,
``subnetworks.get`` per subnet). Every failure names the thing and the fix.
"""

from __future__ import annotations

import copy
import os
import stat
from typing import Any

from googleapiclient import errors
from ray.autoscaler._private.command_runner import SSHCommandRunner
from ray.autoscaler._private.gcp.config import get_node_type
from ray.autoscaler._private.gcp.node import GCPCompute, GCPNodeType
from ray.autoscaler._private.gcp.node_provider import GCPNodeProvider
from ray.autoscaler._private.util import check_legacy_fields

from cluster import api_endpoints
from cluster.gcp_clients import construct_clients
from cluster.render import apt_install_command
from cluster.zones import DEFAULT_COOLDOWN_S, ZonePlacement, rezone, zone_error

FIX = "run `pulumi up` (it creates and grants these) and regenerate cluster.yaml"


class BootstrapCheckError(RuntimeError):
    """The GCP environment is not what `pulumi up` should have created."""


# ---- the bootstrap: read, check, never write ------------------------------------


def bootstrap_readonly(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's bootstrap step for GCP, as checks only. Returns the config to launch with."""
    config = copy.deepcopy(config)
    check_legacy_fields(config)
    # Ray's commands merge config["head_node"] into the head's node_config.
    config["head_node"] = {}

    _check_provider_section(config)
    _check_node_types(config)
    _check_ssh(config)

    crm, iam, compute, _tpu = construct_clients(config["provider"])
    _check_project(config, crm)
    _check_service_accounts(config, iam)
    _check_subnetworks(config, compute)
    return config


def _check_provider_section(config: dict[str, Any]) -> None:
    provider = config["provider"]
    missing = [k for k in ("project_id", "region", "availability_zone") if not provider.get(k)]
    if missing:
        raise BootstrapCheckError(f"provider: missing {', '.join(missing)}; {FIX}")
    fallback = provider.get("fallback_zones", [])
    if not isinstance(fallback, list) or not all(isinstance(z, str) for z in fallback):
        raise BootstrapCheckError(
            f"provider.fallback_zones must be a list of zone names, got {fallback!r}"
        )
    region = provider["region"]
    zones = provider_zones(provider)
    for zone in zones:
        if not zone.startswith(region + "-"):
            raise BootstrapCheckError(
                f"provider zone {zone!r} is not in region {region!r}: every zone in "
                "availability_zone and fallback_zones must lie in the region of the subnet"
            )
    if len(set(zones)) != len(zones):
        raise BootstrapCheckError(
            f"provider zones {zones} list a zone twice (availability_zone first, then "
            "fallback_zones): name each zone once"
        )
    endpoint_problems = api_endpoints.problems(provider.get("api_endpoints") or {})
    if endpoint_problems:
        raise BootstrapCheckError("; ".join(endpoint_problems))
    if provider.get("use_internal_ips") is not True:
        raise BootstrapCheckError(
            "provider.use_internal_ips must be true: Ray nodes have no external IP and "
            "are reached from the provider VM over the VPC"
        )


def _check_node_types(config: dict[str, Any]) -> None:
    for name, node_type in config["available_node_types"].items():
        node_config = node_type.get("node_config") or {}
        if get_node_type(node_config) != GCPNodeType.COMPUTE:
            raise BootstrapCheckError(
                f"available_node_types.{name}: TPU nodes are not supported by ray-gcp; "
                "use Compute Engine machine types"
            )
        interfaces = node_config.get("networkInterfaces")
        if not interfaces:
            # Ray would pick the region's first subnet and add a public IP.
            raise BootstrapCheckError(
                f"available_node_types.{name}.node_config.networkInterfaces is missing: "
                f"every node type must name the cluster subnet; {FIX}"
            )
        for i, nic in enumerate(interfaces):
            if not nic.get("subnetwork"):
                raise BootstrapCheckError(
                    f"available_node_types.{name}.node_config.networkInterfaces[{i}] "
                    f"has no subnetwork; {FIX}"
                )
            if nic.get("accessConfigs"):
                raise BootstrapCheckError(
                    f"available_node_types.{name}.node_config.networkInterfaces[{i}]."
                    "accessConfigs gives the node a public IP; Ray nodes must stay private "
                    "(remove accessConfigs)"
                )
        accounts = node_config.get("serviceAccounts") or []
        if len(accounts) != 1 or not accounts[0].get("email"):
            raise BootstrapCheckError(
                f"available_node_types.{name}.node_config.serviceAccounts must name exactly "
                "one account (the head or the worker account), otherwise GCE attaches the "
                f"over-privileged default compute account; {FIX}"
            )


def _check_ssh(config: dict[str, Any]) -> None:
    auth = config.get("auth") or {}
    user = auth.get("ssh_user")
    key = auth.get("ssh_private_key")
    if not user or not key:
        # Without a key Ray would generate one and append it to project metadata.
        raise BootstrapCheckError(
            "auth.ssh_user and auth.ssh_private_key must be set (the launcher key that "
            "the provider VM copies to ~/.ray-gcp/); Ray must not create project SSH keys"
        )
    path = os.path.expanduser(key)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        raise BootstrapCheckError(
            f"auth.ssh_private_key {key} does not exist: log in to the provider VM again "
            "(its login hook copies the launcher key for members of the ray-operators "
            "group) or check the provider VM's boot log"
        ) from None
    if mode & 0o077:
        raise BootstrapCheckError(
            f"auth.ssh_private_key {key} has mode {mode:o}; ssh refuses keys others can "
            f"read: chmod 600 {key}"
        )
    for name, node_type in config["available_node_types"].items():
        items = (node_type["node_config"].get("metadata") or {}).get("items") or []
        meta = {i.get("key"): i.get("value", "") for i in items}
        keys = [line for line in meta.get("ssh-keys", "").splitlines() if line.strip()]
        if not any(line.startswith(f"{user}:") for line in keys):
            raise BootstrapCheckError(
                f"available_node_types.{name}.node_config.metadata has no ssh-keys entry "
                f"for user {user!r}: the launcher could not log in to that node; {FIX}"
            )
        if str(meta.get("enable-oslogin", "")).upper() != "FALSE":
            raise BootstrapCheckError(
                f"available_node_types.{name}.node_config.metadata must set "
                "enable-oslogin to FALSE: GCE ignores metadata SSH keys under OS Login"
            )


def _http_status(e: errors.HttpError) -> int:
    return int(getattr(e.resp, "status", 0) or 0)


def _check_project(config: dict[str, Any], crm: Any) -> None:
    project_id = config["provider"]["project_id"]
    try:
        project = crm.projects().get(projectId=project_id).execute()
    except errors.HttpError as e:
        if _http_status(e) in (403, 404):
            raise BootstrapCheckError(
                f"project {project_id!r} does not exist or this machine's credentials may "
                f"not read it (HTTP {_http_status(e)}): check provider.project_id; {FIX}"
            ) from None
        raise
    state = project.get("lifecycleState")
    if state != "ACTIVE":
        raise BootstrapCheckError(f"project {project_id!r} is {state}, not ACTIVE")


def _accounts_by_email(config: dict[str, Any]) -> dict[str, list[str]]:
    """email -> node types using it, in first-use order (stable API call order)."""
    out: dict[str, list[str]] = {}
    head_type = config.get("head_node_type")
    names = sorted(config["available_node_types"], key=lambda n: (n != head_type, n))
    for name in names:
        for acct in config["available_node_types"][name]["node_config"]["serviceAccounts"]:
            out.setdefault(acct["email"], []).append(name)
    return out


def _check_service_accounts(config: dict[str, Any], iam: Any) -> None:
    project_id = config["provider"]["project_id"]
    for email, users in _accounts_by_email(config).items():
        account_project = email.split("@", 1)[1].split(".", 1)[0]
        name = f"projects/{account_project}/serviceAccounts/{email}"
        try:
            iam.projects().serviceAccounts().get(name=name).execute()
        except errors.HttpError as e:
            what = "does not exist" if _http_status(e) == 404 else "cannot be read"
            if _http_status(e) in (403, 404):
                raise BootstrapCheckError(
                    f"service account {email} (node types: {', '.join(users)}) {what} "
                    f"in project {project_id} (HTTP {_http_status(e)}); {FIX}"
                ) from None
            raise


def _subnet_parts(link: str) -> tuple[str, str, str]:
    """(project, region, name) of a subnetwork self-link (full or partial URL)."""
    tail = link.split("projects/", 1)[1]
    parts = tail.split("/")
    if len(parts) != 5 or parts[1] != "regions" or parts[3] != "subnetworks":
        raise BootstrapCheckError(
            f"subnetwork {link!r} is not a self-link "
            "projects/PROJECT/regions/REGION/subnetworks/NAME"
        )
    return parts[0], parts[2], parts[4]


def _check_subnetworks(config: dict[str, Any], compute: Any) -> None:
    region = config["provider"]["region"]
    seen: dict[str, list[str]] = {}
    for name, node_type in config["available_node_types"].items():
        for nic in node_type["node_config"]["networkInterfaces"]:
            seen.setdefault(nic["subnetwork"], []).append(name)
    for link, users in seen.items():
        project, subnet_region, subnet = _subnet_parts(link)
        if subnet_region != region:
            raise BootstrapCheckError(
                f"subnetwork {link} (node types: {', '.join(users)}) is in region "
                f"{subnet_region}, but provider.region is {region}"
            )
        try:
            compute.subnetworks().get(
                project=project, region=subnet_region, subnetwork=subnet
            ).execute()
        except errors.HttpError as e:
            if _http_status(e) in (403, 404):
                raise BootstrapCheckError(
                    f"subnetwork {subnet} in region {subnet_region} of project {project} "
                    f"(node types: {', '.join(users)}) does not exist or cannot be read "
                    f"(HTTP {_http_status(e)}); {FIX}"
                ) from None
            raise


# ---- the provider -----------------------------------------------------------------


class _RsyncEnsuringSSHCommandRunner(SSHCommandRunner):
    """Installs rsync on the node before Ray's first file-mount sync.

    Ray syncs file_mounts (step 2) before it runs initialization_commands
    (step 4), so a node image without rsync would fail the very first sync.
    """

    _rsync_checked = False

    def _ensure_rsync(self) -> None:
        if not self._rsync_checked:
            self.run(apt_install_command(("rsync",)), run_env="host")
            self._rsync_checked = True

    def run_rsync_up(self, source, target, options=None):
        self._ensure_rsync()
        return super().run_rsync_up(source, target, options)

    def run_rsync_down(self, source, target, options=None):
        self._ensure_rsync()
        return super().run_rsync_down(source, target, options)


class ZonalGCPCompute(GCPCompute):
    """Ray's GCPCompute over several zones: creates in the first zone with room,
    finds every node in its own zone.

    Each zone is served by an unchanged ``GCPCompute`` of Ray's (its insert,
    get, setLabels, delete and zoneOperations.get calls, with that zone); this
    class only decides which zone a call goes to. ``availability_zone`` stays
    the preferred zone.
    """

    def __init__(
        self,
        resource: Any,
        project_id: str,
        placement: ZonePlacement,
        cluster_name: str,
    ) -> None:
        super().__init__(resource, project_id, placement.zones[0], cluster_name)
        self.placement = placement
        self.per_zone = {
            z: GCPCompute(resource, project_id, z, cluster_name) for z in placement.zones
        }
        # node name -> zone, learnt from creates and lists (GCE's own `zone`
        # field wins when a node dict carries it).
        self._zone_of: dict[str, str] = {}

    # ---- where a node lives --------------------------------------------------

    def _zone_for(self, node_id: str, node: dict | None = None) -> str:
        if node is not None and node.get("zone"):
            return str(node["zone"]).rsplit("/", 1)[-1]
        if node_id in self._zone_of:
            return self._zone_of[node_id]
        # Unknown (e.g. `ray down` from a fresh process): ask each zone.
        for zone, compute in self.per_zone.items():
            try:
                compute.get_instance(node_id)
            except errors.HttpError as e:
                if _http_status(e) == 404:
                    continue
                raise
            self._zone_of[node_id] = zone
            return zone
        return self.availability_zone  # not anywhere: Ray's own 404 handling applies

    def _compute_for(self, node_id: str, node: dict | None = None) -> GCPCompute:
        return self.per_zone.get(self._zone_for(node_id, node), self)

    # ---- GCPResource, routed by zone -------------------------------------------

    def wait_for_operation(self, operation: dict, *args: Any, **kwargs: Any) -> dict:
        zone = str(operation.get("zone") or self.availability_zone).rsplit("/", 1)[-1]
        return GCPCompute.wait_for_operation(self.per_zone.get(zone, self), operation, *args, **kwargs)

    def list_instances(self, label_filters=None, is_terminated=False):
        nodes = []
        for zone, compute in self.per_zone.items():
            for node in compute.list_instances(label_filters, is_terminated):
                self._zone_of[node["name"]] = zone
                nodes.append(node)
        return nodes

    def get_instance(self, node_id: str):
        return self._compute_for(node_id).get_instance(node_id)

    def set_labels(self, node, labels: dict, wait_for_operation: bool = True) -> dict:
        compute = self._compute_for(node["name"], node)
        return compute.set_labels(node, labels, wait_for_operation=wait_for_operation)

    def delete_instance(self, node_id: str, wait_for_operation: bool = True) -> dict:
        result = self._compute_for(node_id).delete_instance(
            node_id, wait_for_operation=wait_for_operation
        )
        self._zone_of.pop(node_id, None)
        return result

    def stop_instance(self, node_id: str, wait_for_operation: bool = True) -> dict:
        return self._compute_for(node_id).stop_instance(
            node_id, wait_for_operation=wait_for_operation
        )

    def start_instance(self, node_id: str, wait_for_operation: bool = True) -> dict:
        return self._compute_for(node_id).start_instance(
            node_id, wait_for_operation=wait_for_operation
        )

    def create_instance(self, base_config: dict, labels: dict, wait_for_operation: bool = True):
        return self.create_instances(base_config, labels, 1, wait_for_operation)[0]

    def create_instances(
        self, base_config: dict, labels: dict, count: int, wait_for_operation: bool = True
    ) -> list[tuple[dict, str]]:
        """All inserts of a zone go out before waiting on any (as Ray's own
        create_instances); what a zone could not take goes to the next zone."""

        def launch(zone: str, n: int) -> tuple[list[tuple[dict, str]], str | None]:
            compute = self.per_zone[zone]
            node_config = zonal_node_config(base_config, zone)
            issued: list[tuple[dict, str]] = []
            reason = None
            for _ in range(n):
                try:
                    operation, name = compute.create_instance(
                        node_config, labels, wait_for_operation=False
                    )
                except errors.HttpError as e:
                    reason = zone_error(e)
                    if reason is None:
                        raise
                    break
                self._zone_of[name] = zone
                issued.append((operation, name))
            if not wait_for_operation:
                return issued, reason
            done: list[tuple[dict, str]] = []
            for operation, name in issued:
                try:
                    done.append((compute.wait_for_operation(operation), name))
                except Exception as e:  # Ray raises a bare Exception(operation["error"])
                    why = zone_error(e)
                    if why is None:
                        raise
                    self._zone_of.pop(name, None)  # a failed insert leaves no VM
                    reason = reason or why
            return done, reason

        return self.placement.place(count, launch)


# node_config fields that carry a zone (Ray expands bare machine and
# accelerator type names itself, with the zone it is given).
def zonal_node_config(node_config: dict[str, Any], zone: str) -> dict[str, Any]:
    """``node_config`` with every zonal URL (machine, disk, accelerator types) moved to ``zone``."""
    cfg = copy.deepcopy(node_config)
    if isinstance(cfg.get("machineType"), str):
        cfg["machineType"] = rezone(cfg["machineType"], zone)
    for disk in cfg.get("disks") or []:
        params = disk.get("initializeParams") or {}
        if isinstance(params.get("diskType"), str):
            params["diskType"] = rezone(params["diskType"], zone)
    for acc in cfg.get("guestAccelerators") or []:
        if isinstance(acc.get("acceleratorType"), str):
            acc["acceleratorType"] = rezone(acc["acceleratorType"], zone)
    return cfg


def provider_zones(provider_config: dict[str, Any]) -> list[str]:
    """The preferred zone, then ``fallback_zones`` in order."""
    return [provider_config["availability_zone"], *(provider_config.get("fallback_zones") or [])]


class ReadOnlyGCPNodeProvider(GCPNodeProvider):
    """GCPNodeProvider whose bootstrap only reads and whose nodes fall back across zones
    (see module docstring)."""

    @staticmethod
    def bootstrap_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
        return bootstrap_readonly(cluster_config)

    def _construct_clients(self) -> None:
        # As GCPNodeProvider._construct_clients (Compute Engine only, TPUs are
        # refused at bootstrap), with provider.api_endpoints honoured
        # (cluster.gcp_clients), through this module's name so one patch covers
        # both the bootstrap and the provider in tests. The placement (and its
        # cool-downs) survives Ray rebuilding the clients after a BrokenPipeError.
        _, _, compute, _tpu = construct_clients(self.provider_config)
        if getattr(self, "placement", None) is None:
            self.placement = ZonePlacement(
                provider_zones(self.provider_config),
                cooldown_s=float(
                    self.provider_config.get("zone_cooldown_s", DEFAULT_COOLDOWN_S)
                ),
            )
        self.resources = {
            GCPNodeType.COMPUTE: ZonalGCPCompute(
                compute,
                self.provider_config["project_id"],
                self.placement,
                self.cluster_name,
            )
        }

    def get_command_runner(self, *args: Any, **kwargs: Any):
        runner = super().get_command_runner(*args, **kwargs)
        if type(runner) is SSHCommandRunner:
            runner.__class__ = _RsyncEnsuringSSHCommandRunner
        return runner
