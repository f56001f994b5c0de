"""The GKE Standard cluster of `platform: gke`, and its node pools.

Secure by default, every choice here is checked by tests/infra/test_gke.py:

- On our VPC and subnet, VPC-native (Pods and Services in the subnet's
  secondary ranges), in the configured zone.
- Private nodes: no node has an external IP; egress goes through our Cloud NAT.
- Control plane: GKE's DNS-based endpoint only, its IP endpoints disabled. Every
  request to the DNS endpoint is authenticated and authorised by Google IAM
  (`container.clusters.connect` and the Kubernetes RBAC behind it), from
  anywhere, with no bastion and no authorized-network list to maintain; no IP
  address of the control plane accepts connections at all.
- Workload Identity Federation for GKE; nodes serve the GKE metadata server, so
  Pods never see the node's credentials.
- Shielded nodes with secure boot and integrity monitoring; Dataplane V2
  (ADVANCED_DATAPATH), so NetworkPolicy is enforced; a release channel;
  deletion protection from `gkeDeletionProtection`.
- The default node pool is removed; nodes run as the dedicated node account
  (identity.py), never the Compute Engine default account.

Node pools, one per node type of the cluster spec, named as the KubeRay
renderer's nodeSelector expects (`cluster.kuberay.gke_node_pool`):
- `ray-system`: the head's machine type, two nodes: the KubeRay operator,
  GKE's own system Pods, the autostop watcher and the Ray head. With autostop
  on, autoscaled between one and two, so the head's node can go while the
  RayCluster is suspended.
- `cpu-worker`: the worker machine type, autoscaled by the cluster autoscaler
  from 0 to maxWorkers nodes (one Ray worker Pod fills one node), Spot when
  spotWorkers is set.
- `gpu-worker` (only when gkeGpuType is set): autoscaled from 0 to
  gkeGpuMaxNodes, tainted so only Pods that tolerate GPUs land there, with the
  driver installed by GKE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s
import yaml

from cluster.kuberay import SYSTEM_NODE_POOL, gke_node_pool
from infra import names
from infra.components.base import Component, labels
from infra.components.network import PODS_RANGE, SERVICES_RANGE
from infra.settings import Settings

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# GKE labels every node with its pool's name; Pods choose a pool by it.
POOL_LABEL = "cloud.google.com/gke-nodepool"
SYSTEM_POOL = SYSTEM_NODE_POOL
# One node for the Ray head (its Pod requests most of a node of the head's
# machine type) and one for the operator and GKE's own system Pods.
SYSTEM_POOL_NODES = 2
# GKE also adds this taint to GPU nodes; set explicitly so it is visible here.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}


# kubectl and the Kubernetes provider get a short-lived token from the caller's
# gcloud login through this plugin (`gcloud components install gke-gcloud-auth-plugin`).
AUTH_PLUGIN = "gke-gcloud-auth-plugin"


def kubeconfig(cluster_name: str, dns_endpoint: str) -> str:
    """Kubeconfig of the cluster's DNS endpoint (pure, tested).

    No certificate-authority data: the DNS endpoint serves a certificate from a
    public CA (unlike the IP endpoints, whose cluster CA would be needed), and
    no static credential: every request carries the caller's IAM identity.
    """
    context = f"gke-{cluster_name}"
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": f"https://{dns_endpoint}"}}],
            "users": [
                {
                    "name": context,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": AUTH_PLUGIN,
                            "provideClusterInfo": True,
                            "installHint": "gcloud components install gke-gcloud-auth-plugin",
                        }
                    },
                }
            ],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
            "current-context": context,
        },
        sort_keys=False,
    )


def system_pool_size(settings: Settings) -> dict[str, Any]:
    """Fixed at two nodes; with autostop (idleTimeoutMinutes > 0) autoscaled from one to
    two, so the cluster autoscaler can remove the head's node while the RayCluster is
    suspended (the other node keeps the operator, the autostop watcher and GKE's Pods)."""
    if settings.idle_timeout_minutes == 0:
        return {"node_count": SYSTEM_POOL_NODES}
    return {
        "initial_node_count": SYSTEM_POOL_NODES,
        "autoscaling": {"min_node_count": 1, "max_node_count": SYSTEM_POOL_NODES},
    }


def workload_pool(project: str) -> str:
    """The Workload Identity pool of a project's GKE clusters."""
    return f"{project}.svc.id.goog"


def node_config(
    settings: Settings, service_account: pulumi.Input[str], **extra: Any
) -> dict[str, Any]:
    """What every node of every pool shares (pure, tested)."""
    return {
        # IAM on the node account decides what nodes may do; the scope does not narrow it.
        "service_account": service_account,
        "oauth_scopes": [CLOUD_PLATFORM],
        "shielded_instance_config": {"enable_secure_boot": True, "enable_integrity_monitoring": True},
        # Pods get the GKE metadata server (Workload Identity), never the node's token.
        "workload_metadata_config": {"mode": "GKE_METADATA"},
        "metadata": {"disable-legacy-endpoints": "true"},
        "image_type": "COS_CONTAINERD",
        "resource_labels": labels(settings.cluster_name),
        **extra,
    }


class GkeCluster(Component):
    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        network: pulumi.Input[str],
        subnetwork: pulumi.Input[str],
        node_service_account: pulumi.Input[str],
        depends_on: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("GkeCluster", name, depends_on=depends_on, opts=opts)
        project = settings.project
        self.cluster = gcp.container.Cluster(
            f"{name}-cluster",
            name=names.resource_name(settings.cluster_name, "gke"),
            project=project,
            location=settings.zone,
            network=network,
            subnetwork=subnetwork,
            networking_mode="VPC_NATIVE",
            ip_allocation_policy={
                "cluster_secondary_range_name": PODS_RANGE,
                "services_secondary_range_name": SERVICES_RANGE,
            },
            private_cluster_config={"enable_private_nodes": True},
            control_plane_endpoints_config={
                "dns_endpoint_config": {"allow_external_traffic": True},
                "ip_endpoints_config": {"enabled": False},
            },
            workload_identity_config={"workload_pool": workload_pool(project)},
            release_channel={"channel": settings.gke_release_channel},
            datapath_provider="ADVANCED_DATAPATH",
            enable_shielded_nodes=True,
            # GKE cannot create a cluster without a pool; this one is deleted
            # right away, and even it never runs as the default account.
            remove_default_node_pool=True,
            initial_node_count=1,
            node_config=node_config(settings, node_service_account),
            resource_labels=labels(settings.cluster_name),
            deletion_protection=settings.gke_deletion_protection,
            opts=self.child(),
        )

        def pool(role: str, **kwargs: Any) -> gcp.container.NodePool:
            return gcp.container.NodePool(
                f"{name}-{role}-pool",
                name=role,
                project=project,
                location=settings.zone,
                cluster=self.cluster.name,
                # Explicit per pool too, so no pool can ever get external IPs.
                network_config={"enable_private_nodes": True},
                management={"auto_repair": True, "auto_upgrade": True},
                opts=self.child(),
                **kwargs,
            )

        # One pool per node type of the cluster spec, named as the KubeRay
        # renderer's nodeSelector expects (cluster.kuberay.gke_node_pool).
        spec = settings.cluster_spec()
        self.pools: dict[str, gcp.container.NodePool] = {
            SYSTEM_POOL: pool(
                SYSTEM_POOL,
                node_config=node_config(
                    settings, node_service_account, machine_type=spec.head.machine_type
                ),
                **system_pool_size(settings),
            )
        }
        for type_name, t in sorted(spec.worker_types.items()):
            extra: dict[str, Any] = {}
            if t.is_gpu:
                extra = {
                    "guest_accelerators": [
                        {
                            "type": t.accelerator_type,
                            "count": t.accelerator_count,
                            "gpu_driver_installation_config": {"gpu_driver_version": "DEFAULT"},
                        }
                    ],
                    "taints": [GPU_TAINT],
                }
            pool_name = gke_node_pool(spec, type_name)
            self.pools[pool_name] = pool(
                pool_name,
                # The cluster autoscaler adds a node when a Ray worker Pod is
                # pending and removes it when the Pod is gone: 0 to one node per
                # worker (a worker Pod requests nearly all of its node).
                autoscaling={"min_node_count": 0, "max_node_count": max(t.max_workers, 1)},
                node_config=node_config(
                    settings, node_service_account,
                    machine_type=t.machine_type, spot=t.spot, **extra,
                ),
            )

        self.name = self.cluster.name
        self.dns_endpoint: pulumi.Output[str] = self.cluster.control_plane_endpoints_config.apply(
            lambda c: c.dns_endpoint_config.endpoint
        )
        # Everything Pulumi creates inside the cluster goes through this provider,
        # after the pools exist (the operator and the head need nodes to run on).
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=pulumi.Output.all(self.cluster.name, self.dns_endpoint).apply(
                lambda a: kubeconfig(a[0], a[1])
            ),
            opts=self.child(depends_on=list(self.pools.values())),
        )
        self.register_outputs({"name": self.cluster.name, "dnsEndpoint": self.dns_endpoint})
