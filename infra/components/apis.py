"""The Google APIs the cluster uses, enabled before anything that calls them."""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from infra.components.base import Component

# compute: VMs, network, firewall, NAT. iam: service accounts and their keys.
# iap: SSH to the provider VM without a public IP. secretmanager: launcher
# secrets. cloudresourcemanager: project IAM and Ray's projects.get.
# storage: workload bucket and the shipped Ray logs. logging: the provider VM's
# boot log (Google's guest agent).
SERVICES = (
    "compute.googleapis.com",
    "iam.googleapis.com",
    "iap.googleapis.com",
    "secretmanager.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "storage.googleapis.com",
    "logging.googleapis.com",
)
# platform gke: no provider VM (so no IAP SSH) and no Secret Manager (the Ray
# token is a Kubernetes Secret); the GKE API (clusters, node pools, Workload Identity)
# and monitoring, which GKE's metrics agent writes to (nothing on our VMs does).
VM_ONLY_SERVICES = ("iap.googleapis.com", "secretmanager.googleapis.com")
GKE_SERVICES = ("container.googleapis.com", "monitoring.googleapis.com")


def services_for(platform: str) -> tuple[str, ...]:
    if platform == "gke":
        return (*(s for s in SERVICES if s not in VM_ONLY_SERVICES), *GKE_SERVICES)
    return SERVICES


class ProjectServices(Component):
    """Enables services_for(platform). Destroying the stack leaves them on: other things in the
    project may use them, and turning an API off can break those."""

    def __init__(
        self,
        name: str,
        *,
        project: str,
        platform: str = "vm",
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("ProjectServices", name, opts=opts)
        self.services = [
            gcp.projects.Service(
                f"{name}-{service.split('.')[0]}",
                project=project,
                service=service,
                disable_on_destroy=False,
                disable_dependent_services=False,
                opts=self.child(),
            )
            for service in services_for(platform)
        ]
        self.register_outputs({"services": [s.service for s in self.services]})
