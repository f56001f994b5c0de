"""Service accounts of the provider VM, the Ray head and the Ray workers, and every grant.

Every grant is an `*IAMMember` (adds one member, never overwrites a policy)
and as narrow as a predefined role allows:

| who      | role                            | on                | why |
|----------|---------------------------------|-------------------|-----|
| provider | compute.instanceAdmin.v1        | project           | `ray up`/`ray down` create and delete the head VM |
| provider | compute.networkViewer           | project           | read-only bootstrap: subnetworks.get (and projects.get) |
| provider | logging.logWriter               | project           | the guest agent ships the boot script's log to Cloud Logging |
| provider | iam.serviceAccountUser          | head account      | attach the head account to the head VM (actAs); also serviceAccounts.get |
| provider | iam.serviceAccountViewer        | worker account    | read-only bootstrap: serviceAccounts.get of the worker account |
| head     | compute.instanceAdmin.v1        | project           | the autoscaler creates and deletes worker VMs |
| head     | iam.serviceAccountUser          | worker account    | attach the worker account to worker VMs (actAs) |
| head     | logging.logWriter, monitoring.metricWriter | project | node logs and metrics |
| head     | storage.objectUser              | workload bucket   | drivers read inputs and write results |
| worker   | logging.logWriter, monitoring.metricWriter | project | node logs and metrics |
| worker   | storage.objectUser              | workload bucket   | tasks read inputs and write results |

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

from infra import names
from infra.components.base import Component
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
    Grant("head", "roles/logging.logWriter", PROJECT),
    Grant("head", "roles/monitoring.metricWriter", PROJECT),
    Grant("head", "roles/storage.objectUser", BUCKET),
    # Ray workers: logs, metrics and the workload bucket, nothing else.
    Grant("worker", "roles/logging.logWriter", PROJECT),
    Grant("worker", "roles/monitoring.metricWriter", PROJECT),
    Grant("worker", "roles/storage.objectUser", BUCKET),
)

GKE_GRANTS: tuple[Grant, ...] = (
    # Node and Pod logs (kubelet, container runtime, Ray's stdout/stderr).
    Grant("gke-node", "roles/logging.logWriter", PROJECT),
    # Node and system metrics from GKE's monitoring agent.
    Grant("gke-node", "roles/monitoring.metricWriter", PROJECT),
)


class Identity(Component):
    """The three service accounts and GRANTS (vm), or the GKE node account and GKE_GRANTS."""

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
            "worker": "Ray workers: logs, metrics, workload bucket",
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

        self.grants: list[pulumi.CustomResource] = []
        for grant in GKE_GRANTS if gke else GRANTS:
            member = self.members[grant.who]
            short_role = grant.role.removeprefix("roles/").replace(".", "-")
            resource_name = f"{name}-{grant.who}-{short_role}-on-{grant.scope}"
            if grant.scope == PROJECT:
                res = gcp.projects.IAMMember(
                    resource_name,
                    project=settings.project,
                    role=grant.role,
                    member=member,
                    opts=self.child(),
                )
            elif grant.scope == BUCKET:
                res = gcp.storage.BucketIAMMember(
                    resource_name, bucket=bucket, role=grant.role, member=member, opts=self.child()
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
