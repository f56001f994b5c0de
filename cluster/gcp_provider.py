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

Zone fallback (``cluster.gcp_zonal.ZonalGCPCompute``): ``availability_zone`` is the preferred
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

Vanished nodes (``cluster.gcp_gone.GoneNodeAware``): a 404 from GCE for an
instance (a Spot VM preempted between the autoscaler's list and its next
call) means the node is gone: deleting it succeeds, labelling it is skipped
with a warning, and reads see it terminated, instead of Ray's
``UnboundLocalError`` in ``terminate_node`` and raw ``HttpError`` elsewhere.

``bootstrap_config`` checks, top-down, one function per step, and calls only
GET APIs (``projects.get``, ``serviceAccounts.get`` per account,
``subnetworks.get`` per subnet). Every failure names the thing and the fix.
"""

from __future__ import annotations

import copy
import logging
import os
import stat
from typing import Any

from googleapiclient import errors
from ray.autoscaler._private import util as ray_autoscaler_util
from ray.autoscaler._private.command_runner import SSHCommandRunner
from ray.autoscaler._private.gcp.config import get_node_type
from ray.autoscaler._private.gcp.node import GCPNodeType
from ray.autoscaler._private.gcp.node_provider import GCPNodeProvider, _retry
from ray.autoscaler._private.util import check_legacy_fields

from cluster import api_endpoints
from cluster.gcp_clients import construct_clients
from cluster.gcp_gone import GoneNodeAware, is_not_found
from cluster.gcp_zonal import ZonalGCPCompute, http_status, provider_zones
from cluster.render import apt_install_command
from cluster.zones import DEFAULT_COOLDOWN_S, ZonePlacement

logger = logging.getLogger(__name__)

FIX = "run `pulumi up` (it creates and grants these) and regenerate cluster.yaml"


# ---- Ray's per-round warning about fields no config of ours has ---------------------


class _EmptyLegacyFieldFilter(logging.Filter):
    """Drops Ray's "Dropping the empty legacy field head_node/worker_nodes" warnings.

    For ``type: external`` Ray's ``prepare_config`` starts from
    ``MINIMAL_EXTERNAL_CONFIG`` (ray/autoscaler/_private/providers.py), which
    holds ``head_node: {}`` and ``worker_nodes: {}``, and ``fillout_defaults``
    then drops both again (``translate_trivial_legacy_config``), warning each
    time. The config we render has neither key; the head's copy could not
    carry them anyway (``ray up`` pops ``head_node`` from it and Ray's schema
    forbids both). Autoscaler v2 re-reads the config every round, so the
    head's log got both lines every round. Only these two messages are dropped.
    """

    MESSAGES = tuple(
        f"Dropping the empty legacy field {field}." for field in ("head_node", "worker_nodes")
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.MESSAGES)


def quiet_empty_legacy_field_warnings() -> None:
    """Install the filter on the logger of ``ray.autoscaler._private.util`` (once).

    Runs when this module is imported: on the head that is when the
    autoscaler loads this provider, so every later config read is quiet (the
    autoscaler's very first read, before it loads a provider, still logs the
    pair once).
    """
    ray_util_logger = logging.getLogger(ray_autoscaler_util.__name__)
    if not any(isinstance(f, _EmptyLegacyFieldFilter) for f in ray_util_logger.filters):
        ray_util_logger.addFilter(_EmptyLegacyFieldFilter())


quiet_empty_legacy_field_warnings()


class BootstrapCheckError(RuntimeError):
    """The GCP environment is not what `pulumi up` should have created."""


# ---- the bootstrap: read, check, never write ------------------------------------


def bootstrap_readonly(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's bootstrap step for GCP, as checks only. Returns the config to launch with."""
    config = copy.deepcopy(config)
    check_legacy_fields(config)
    # No `config["head_node"] = {}` as in Ray's bootstrap_gcp (which fills it with
    # the head's service account): `get_or_create_head_node` reads it with
    # `.get("head_node", {})`, Ray's schema does not allow the key, and our head
    # node_config is complete.

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


def _check_project(config: dict[str, Any], crm: Any) -> None:
    project_id = config["provider"]["project_id"]
    try:
        project = crm.projects().get(projectId=project_id).execute()
    except errors.HttpError as e:
        if http_status(e) in (403, 404):
            raise BootstrapCheckError(
                f"project {project_id!r} does not exist or this machine's credentials may "
                f"not read it (HTTP {http_status(e)}): check provider.project_id; {FIX}"
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
            what = "does not exist" if http_status(e) == 404 else "cannot be read"
            if http_status(e) in (403, 404):
                raise BootstrapCheckError(
                    f"service account {email} (node types: {', '.join(users)}) {what} "
                    f"in project {project_id} (HTTP {http_status(e)}); {FIX}"
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
            if http_status(e) in (403, 404):
                raise BootstrapCheckError(
                    f"subnetwork {subnet} in region {subnet_region} of project {project} "
                    f"(node types: {', '.join(users)}) does not exist or cannot be read "
                    f"(HTTP {http_status(e)}); {FIX}"
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


class ReadOnlyGCPNodeProvider(GoneNodeAware, GCPNodeProvider):
    """GCPNodeProvider whose bootstrap only reads, whose nodes fall back across zones
    and for which a 404 means the node is gone (see module docstring)."""

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

    @_retry
    def set_node_tags(self, node_id: str, tags: dict) -> dict:
        """Ray's set_node_tags, and the cached node then shows what was written.

        Ray 2.60's ``GCPNodeProvider.set_node_tags`` labels the instance but
        leaves its cached node (what ``node_tags`` reads) with the old labels.
        Autoscaler v2's ``RayInstaller`` reads ``node_tags`` right after the
        updater set ``ray-node-status: up-to-date``, sees the old status, calls
        the install failed and retries; the retry's ``ray stop`` makes v2
        terminate a healthy worker. So the cache here is updated to exactly the
        labels ``GCPCompute.set_labels`` sent (the node's labels merged with
        ``tags``). setLabels answers with a zone operation, not the new
        ``labelFingerprint``: the cached copy drops the old one, and the next
        write reads a fresh one (Ray's ``_get_node`` lists first;
        ``ZonalGCPCompute.set_labels`` fetches the node if it has none).
        A node GCE answers 404 for is gone (``cluster.gcp_gone``): nothing is
        written, a warning says so, and the caller goes on (Ray's
        ``NodeUpdater`` then sees it terminated).
        """
        with self.lock:
            node = self._get_node(node_id)
            if self.is_gone(node_id):
                logger.warning("NodeProvider: %s: gone, its tags %s are not set", node_id, tags)
                return None
            resource = self._get_resource_depending_on_node_name(node_id)
            try:
                result = resource.set_labels(node=node, labels=tags)
            except errors.HttpError as e:  # gone between the list and this write
                if not is_not_found(e, node_id):
                    raise
                self._mark_gone(node_id, "instances.setLabels")
                logger.warning("NodeProvider: %s: gone, its tags %s are not set", node_id, tags)
                return None
            written = copy.copy(node)  # a GCPNode: a dict plus its resource
            written["labels"] = dict(node.get("labels") or {}, **tags)
            written.pop("labelFingerprint", None)
            self.cached_nodes[node_id] = written
            return result

    def get_command_runner(self, *args: Any, **kwargs: Any):
        runner = super().get_command_runner(*args, **kwargs)
        if type(runner) is SSHCommandRunner:
            runner.__class__ = _RsyncEnsuringSSHCommandRunner
        return runner
