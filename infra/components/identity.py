"""Service accounts of the provider VM, the Ray head and the Ray workers, and every grant.

Every grant is an `*IAMMember` (adds one member, never overwrites a policy).
With `customRoles: true` (the default) the provider and head accounts' compute
access is a custom role each, `launcher` and `autoscaler`, holding exactly the
project-level permissions of their recorded GCP calls (infra/iam/,
`custom_role_permissions`); everything else is as below. With
`customRoles: false` it is these predefined roles, as narrow as they allow:

| who      | role                            | on                | why |
|----------|---------------------------------|-------------------|-----|
| provider | compute.instanceAdmin.v1        | project           | `ray up`/`ray down` create and delete the head VM |
| provider | compute.networkViewer           | project           | read-only bootstrap: subnetworks.get (and projects.get) |
| provider | logging.logWriter               | project           | the guest agent ships the boot script's log to Cloud Logging |
| provider | iam.serviceAccountUser          | head account      | attach the head account to the head VM (actAs); also serviceAccounts.get |
| provider | iam.serviceAccountViewer        | worker account    | read-only bootstrap: serviceAccounts.get of the worker account |
| provider | storage.objectViewer            | logs/ of the bucket | `python -m cluster logs` on the provider VM (only with logShipping) |
| head     | compute.instanceAdmin.v1        | project           | the autoscaler creates and deletes worker VMs |
| head     | iam.serviceAccountUser          | worker account    | attach the worker account to worker VMs (actAs) |
| head     | storage.objectUser              | workload bucket   | drivers read inputs and write results; the node ships its Ray logs |
| worker   | storage.objectUser              | workload bucket   | tasks read inputs and write results; the node ships its Ray logs |

No Ray node holds a logging or monitoring role: their logs go to the bucket
(cluster/logship.py), and nothing on them writes to Cloud Logging or Cloud
Monitoring. The provider's logWriter is used by Google's guest agent
(infra/iam AGENT_CALLS, declared: it runs only on a real VM).

Secret Manager access (provider only, per secret) is granted in secrets.py.

On `platform: gke` there are no provider or Ray VMs, so none of the above
exists. The only account is the GKE nodes' own (never the Compute Engine
default account, which has Editor on the project in many projects):

| who      | role                            | on                | why |
|----------|---------------------------------|-------------------|-----|
| gke-node | logging.logWriter               | project           | kubelet and GKE's logging agent ship node and Pod logs |
| gke-node | monitoring.metricWriter         | project           | GKE's metrics agent writes node and system metrics |

No Artifact Registry reader: the images (rayproject/ray, quay.io/kuberay)
come from public registries through Cloud NAT. Ray Pods do not use this
account: they reach the bucket as their Kubernetes service account through
Workload Identity (the grant is in gke_ray.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import pulumi
import pulumi_gcp as gcp
import pulumi_random as random

from cluster.logpaths import LOG_PREFIX
from infra import names
from infra.components.base import Component
from infra.iam import CUSTOM_ROLES, custom_role_permissions
from infra.settings import Settings

ROLES = ("provider", "head", "worker")
GKE_ROLES = ("gke-node",)


class Grant(NamedTuple):
    """One role for one of our accounts on one scope: 'project', 'bucket' or an account role."""

    who: str
    role: str
    scope: str


PROJECT = "project"
BUCKET = "bucket"
# Objects under logs/ of the workload bucket only: a bucket grant with an IAM
# condition (infra.iam.LOGS is the same scope in the recorded calls).
LOGS = "bucket:logs/"

GRANTS: tuple[Grant, ...] = (
    # Provider VM: runs `ray up` / `ray down`, which create and delete the head VM.
    Grant("provider", "roles/compute.instanceAdmin.v1", PROJECT),
    # The read-only bootstrap that replaces Ray's mutating one reads the subnet
    # (compute.subnetworks.get) and the project (resourcemanager.projects.get);
    # networkViewer has both and nothing that changes anything.
    Grant("provider", "roles/compute.networkViewer", PROJECT),
    # google-guest-agent sends the startup script's output to Cloud Logging, so
    # `gcloud logging read` shows the boot progress.
    Grant("provider", "roles/logging.logWriter", PROJECT),
    # Creating the head VM with the head account attached needs actAs on that
    # account only; the role also allows iam.serviceAccounts.get (bootstrap check).
    Grant("provider", "roles/iam.serviceAccountUser", "head"),
    # The bootstrap also checks that the worker account exists (serviceAccounts.get),
    # but the provider never attaches it: viewer, not user.
    Grant("provider", "roles/iam.serviceAccountViewer", "worker"),
    # Ray head: its autoscaler creates and deletes worker VMs...
    Grant("head", "roles/compute.instanceAdmin.v1", PROJECT),
    # ...with the worker account attached (actAs on that account only).
    Grant("head", "roles/iam.serviceAccountUser", "worker"),
    # Drivers' inputs and results; the node's shipped Ray logs (logs/).
    Grant("head", "roles/storage.objectUser", BUCKET),
    # Ray workers: the workload bucket, nothing else (their logs go there too).
    Grant("worker", "roles/storage.objectUser", BUCKET),
)

# With logShipping: operators read the shipped logs from the provider VM
# (`python -m cluster logs`), after the cluster is gone. Only logs/: the
# condition admits objects there and listings of that prefix.
LOG_READER_GRANTS: tuple[Grant, ...] = (
    Grant("provider", "roles/storage.objectViewer", LOGS),
)

GKE_GRANTS: tuple[Grant, ...] = (
    # Node and Pod logs (kubelet, container runtime, Ray's stdout/stderr).
    Grant("gke-node", "roles/logging.logWriter", PROJECT),
    # Node and system metrics from GKE's monitoring agent.
    Grant("gke-node", "roles/monitoring.metricWriter", PROJECT),
)


# customRoles: each actor's custom role (CUSTOM_ROLES) replaces these predefined roles.
CUSTOM = "custom:"  # Grant.role prefix: one of CUSTOM_ROLES, created by this stack
REPLACED_BY_CUSTOM = {"roles/compute.instanceAdmin.v1", "roles/compute.networkViewer"}


def grants(custom_roles: bool, log_shipping: bool = True) -> tuple[Grant, ...]:
    """GRANTS (with custom roles: each actor's predefined compute roles replaced by
    its role), plus the log reader's grant when logs are shipped."""
    out: list[Grant] = []
    if custom_roles:
        for role, who in CUSTOM_ROLES.items():
            out.append(Grant(who, CUSTOM + role, PROJECT))
        out += [g for g in GRANTS if g.role not in REPLACED_BY_CUSTOM]
    else:
        out += GRANTS
    if log_shipping:
        out += LOG_READER_GRANTS
    return tuple(out)


def logs_condition(bucket: str) -> dict[str, str]:
    """The IAM condition of a LOGS grant: objects under logs/, and listings of
    that prefix (Cloud Storage's `objectListPrefix` request attribute)."""
    prefix = f"{LOG_PREFIX}/"
    return {
        "title": "ray-gcp shipped logs only",
        "description": f"objects under {prefix} of this bucket and listings of that prefix",
        "expression": (
            f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{prefix}") || '
            f'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("{prefix}")'
        ),
    }


def custom_role_id(cluster_name: str, role: str, suffix: str) -> str:
    """`rayGcp_<cluster>_<role>_<suffix>`: custom role IDs allow [a-zA-Z0-9_.] only, up to 64.

    GCP keeps a deleted custom role for 7 days (and its ID for up to 44), refusing
    the ID meanwhile; the random suffix, new after each `pulumi destroy`, lets
    `pulumi up` run again at once.
    """
    role_id = f"rayGcp_{cluster_name.replace('-', '_')}_{role}_{suffix}"
    if len(role_id) > 64:
        raise ValueError(f"custom role ID {role_id!r} is longer than 64 characters")
    return role_id


class Identity(Component):
    """vm: the three service accounts, the custom roles (customRoles) and their grants;
    gke: the GKE node account and GKE_GRANTS."""

    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        bucket: pulumi.Input[str],
        depends_on: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("Identity", name, depends_on=depends_on, opts=opts)
        descriptions = {
            "provider": "runs `ray up` on the provider VM",
            "head": "Ray head: the autoscaler creates worker VMs",
            "worker": "Ray workers: the workload bucket",
            "gke-node": "GKE nodes: logs and metrics only",
        }
        gke = settings.platform == "gke"
        self.accounts: dict[str, gcp.serviceaccount.Account] = {
            who: gcp.serviceaccount.Account(
                f"{name}-{who}",
                project=settings.project,
                account_id=names.account_id(settings.cluster_name, who),
                display_name=f"ray-gcp {settings.cluster_name} {who}",
                description=f"ray-gcp cluster {settings.cluster_name}: {descriptions[who]}",
                opts=self.child(),
            )
            for who in (GKE_ROLES if gke else ROLES)
        }
        self.emails: dict[str, pulumi.Output[str]] = {
            who: account.email for who, account in self.accounts.items()
        }
        self.members: dict[str, pulumi.Output[str]] = {
            who: email.apply(lambda e: f"serviceAccount:{e}") for who, email in self.emails.items()
        }

        self.custom_roles: dict[str, gcp.projects.IAMCustomRole] = {}
        if settings.custom_roles and not gke:
            # New after every destroy (see custom_role_id), stable otherwise.
            suffix = random.RandomString(
                f"{name}-role-suffix", length=6, special=False, upper=False, opts=self.child()
            )
            for role, who in CUSTOM_ROLES.items():
                self.custom_roles[role] = gcp.projects.IAMCustomRole(
                    f"{name}-{role}-role",
                    project=settings.project,
                    role_id=suffix.result.apply(
                        lambda s, role=role: custom_role_id(settings.cluster_name, role, s)
                    ),
                    title=f"ray-gcp {settings.cluster_name} {role}",
                    description=(
                        f"ray-gcp cluster {settings.cluster_name}: exactly the permissions of "
                        f"the {who} account's recorded GCP calls (infra/iam/calls.yaml)"
                    ),
                    permissions=custom_role_permissions(who),
                    stage="GA",
                    opts=self.child(),
                )

        self.grants: list[pulumi.CustomResource] = []
        for grant in GKE_GRANTS if gke else grants(settings.custom_roles, settings.log_shipping):
            member = self.members[grant.who]
            short_role = grant.role.removeprefix("roles/").replace(".", "-").replace(":", "-")
            resource_name = f"{name}-{grant.who}-{short_role}-on-{grant.scope}"
            role: pulumi.Input[str] = grant.role
            if grant.role.startswith(CUSTOM):
                role = self.custom_roles[grant.role.removeprefix(CUSTOM)].name
            if grant.scope == PROJECT:
                res = gcp.projects.IAMMember(
                    resource_name,
                    project=settings.project,
                    role=role,
                    member=member,
                    opts=self.child(),
                )
            elif grant.scope == BUCKET:
                res = gcp.storage.BucketIAMMember(
                    resource_name, bucket=bucket, role=grant.role, member=member, opts=self.child()
                )
            elif grant.scope == LOGS:
                res = gcp.storage.BucketIAMMember(
                    f"{name}-{grant.who}-{short_role}-on-logs",
                    bucket=bucket,
                    role=grant.role,
                    member=member,
                    condition=pulumi.Output.from_input(bucket).apply(logs_condition),
                    opts=self.child(),
                )
            else:  # granted on one of our own service accounts
                res = gcp.serviceaccount.IAMMember(
                    resource_name,
                    service_account_id=self.accounts[grant.scope].name,
                    role=grant.role,
                    member=member,
                    opts=self.child(),
                )
            self.grants.append(res)

        self.register_outputs({f"{who}Email": email for who, email in self.emails.items()})
