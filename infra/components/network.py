"""Private network of the cluster: custom-mode VPC, one subnet, NAT, and a closed firewall.

On `platform: gke` the subnet also carries the Pod and Service secondary
ranges (VPC-native cluster), and the VM firewall rules are not created: there
are no provider or Ray VMs, GKE writes the rules its nodes need, and Ray's
ports are guarded inside the cluster by a NetworkPolicy.

Nothing inbound from outside the VPC except SSH (22) to the provider VM, from
IAP's range and from `sshSourceRanges`. Ray's ports (GCS 6379, dashboard 8265,
client 10001, ...) are reachable only from inside: Ray's job API runs code, so
exposing it is remote code execution (CVE-2023-48022).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pulumi
import pulumi_gcp as gcp

from infra import names
from infra.components.base import Component
from infra.settings import IAP_SOURCE_RANGE, Settings

# Names of the subnet's secondary ranges on gke (the cluster refers to them by name).
PODS_RANGE = "gke-pods"
SERVICES_RANGE = "gke-services"
ALL_PROTOCOLS = [{"protocol": "all"}]
SSH = [{"protocol": "tcp", "ports": ["22"]}]
# Firewall rule logs for the only doors from outside: who connected, when.
_LOG = {"metadata": "INCLUDE_ALL_METADATA"}


class ClusterNetwork(Component):
    """VPC, subnet with Private Google Access, Cloud Router + NAT, firewall rules.

    Firewall rules match VMs by service account, not by network tag: anyone who
    can edit a VM can change its tags, but attaching an account needs actAs.
    """

    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        emails: Mapping[str, pulumi.Input[str]],
        depends_on: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("ClusterNetwork", name, depends_on=depends_on, opts=opts)
        cluster, project, region = settings.cluster_name, settings.project, settings.region
        secondary: dict = {}
        if settings.platform == "gke":
            secondary["secondary_ip_ranges"] = [
                {"range_name": PODS_RANGE, "ip_cidr_range": settings.gke_pods_cidr},
                {"range_name": SERVICES_RANGE, "ip_cidr_range": settings.gke_services_cidr},
            ]

        self.network = gcp.compute.Network(
            f"{name}-vpc",
            name=names.resource_name(cluster, "vpc"),
            project=project,
            auto_create_subnetworks=False,
            routing_mode="REGIONAL",
            description=f"ray-gcp cluster {cluster}",
            opts=self.child(),
        )
        self.subnetwork = gcp.compute.Subnetwork(
            f"{name}-subnet",
            name=names.resource_name(cluster, "subnet"),
            project=project,
            region=region,
            network=self.network.id,
            ip_cidr_range=settings.subnet_cidr,
            # Nodes have no external IP; this lets them reach Google APIs (GCS,
            # Secret Manager, Logging) anyway.
            private_ip_google_access=True,
            opts=self.child(),
            **secondary,
        )
        # Cloud NAT: outbound-only internet for private VMs (uv/pip installs, apt).
        router = gcp.compute.Router(
            f"{name}-router",
            name=names.resource_name(cluster, "router"),
            project=project,
            region=region,
            network=self.network.id,
            opts=self.child(),
        )
        self.nat = gcp.compute.RouterNat(
            f"{name}-nat",
            name=names.resource_name(cluster, "nat"),
            project=project,
            region=region,
            router=router.name,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
            subnetworks=[
                {"name": self.subnetwork.id, "source_ip_ranges_to_nats": ["ALL_IP_RANGES"]}
            ],
            log_config={"enable": True, "filter": "ERRORS_ONLY"},
            opts=self.child(),
        )

        self.firewalls: list[gcp.compute.Firewall] = []
        if settings.platform == "vm":
            self._vm_firewall(name, settings, emails)

        self.register_outputs(
            {
                "network": self.network.name,
                "subnetwork": self.subnetwork.name,
                "subnetworkSelfLink": self.subnetwork.self_link,
            }
        )

    def _vm_firewall(
        self, name: str, settings: Settings, emails: Mapping[str, pulumi.Input[str]]
    ) -> None:
        cluster, project = settings.cluster_name, settings.project
        nodes = [emails["head"], emails["worker"]]

        def rule(suffix: str, description: str, **kwargs) -> gcp.compute.Firewall:
            return gcp.compute.Firewall(
                f"{name}-{suffix}",
                name=names.resource_name(cluster, suffix),
                project=project,
                network=self.network.id,
                direction="INGRESS",
                priority=1000,
                description=description,
                opts=self.child(),
                **kwargs,
            )

        self.firewalls = [
            # Ray needs every port between its nodes (GCS, raylets, object
            # manager, worker ports 10002-19999, SSH from head to workers).
            rule(
                "allow-ray-internal",
                "Ray nodes to Ray nodes: all ports",
                allows=ALL_PROTOCOLS,
                source_service_accounts=nodes,
                target_service_accounts=nodes,
            ),
            # The provider VM runs `ray up` (SSH), `ray job submit` (8265) and
            # `ray attach`: it needs the nodes' ports; the nodes never call it.
            rule(
                "allow-provider-to-ray",
                "Provider VM to Ray nodes: all ports (ray up, ray job submit)",
                allows=ALL_PROTOCOLS,
                source_service_accounts=[emails["provider"]],
                target_service_accounts=nodes,
            ),
            rule(
                "allow-ssh-iap",
                "SSH to the provider VM through IAP TCP forwarding",
                allows=SSH,
                source_ranges=[IAP_SOURCE_RANGE],
                target_service_accounts=[emails["provider"]],
                log_config=_LOG,
            ),
        ]
        if settings.ssh_source_ranges:
            self.firewalls.append(
                rule(
                    "allow-ssh-admin",
                    "SSH to the provider VM from ray-gcp:sshSourceRanges",
                    allows=SSH,
                    source_ranges=list(settings.ssh_source_ranges),
                    target_service_accounts=[emails["provider"]],
                    log_config=_LOG,
                )
            )
