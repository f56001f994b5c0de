"""The whole stack, top-down: settings in, resources declared, stack outputs out.

`infra/__main__.py` calls `build(load_settings())` and exports the result.
Rendering (cluster YAML, boot script, bundle) is pure code in cluster/ and
infra/boot.py; this module only wires Pulumi outputs into it.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pulumi
import pulumi_gcp as gcp

from cluster.bundle import build_bundle
from cluster.render import render_gcp, to_yaml
from cluster.spec import GcpFacts
from infra.boot import render_boot_script
from infra.components.apis import ProjectServices
from infra.components.gke import GkeCluster
from infra.components.identity import Identity
from infra.components.kuberay_operator import KubeRayOperator
from infra.components.network import ClusterNetwork
from infra.components.operators import OperatorAccess
from infra.components.provider_vm import ProviderVm
from infra.components.ray_on_gke import RayOnGke
from infra.components.secrets import LauncherSecrets
from infra.components.storage import WorkloadBucket
from infra.settings import Settings

# The provider VM and every Ray node boot this family, resolved to one exact
# image at deploy time (a family link would move under a running cluster).
IMAGE_FAMILY = "debian-12"
IMAGE_PROJECT = "debian-cloud"


def project_root() -> Path:
    """Where Pulumi.yaml is: Pulumi's language host runs the program from there (--pwd)."""
    root = Path(os.getcwd())
    if not (root / "Pulumi.yaml").is_file():
        raise pulumi.RunError(f"{root} has no Pulumi.yaml: run pulumi from the project root")
    return root


def render_cluster_yaml(settings: Settings, facts: dict[str, Any]) -> str:
    """The `ray up` config text for these settings and deployed facts (pure)."""
    return to_yaml(render_gcp(settings.cluster_spec(), GcpFacts(**facts)))


def ssh_command(instance: str, zone: str, project: str) -> str:
    return f"gcloud compute ssh {instance} --zone {zone} --project {project} --tunnel-through-iap"


def build(settings: Settings) -> dict[str, Any]:
    """Declare every resource; return the stack outputs."""
    apis = ProjectServices("apis", project=settings.project, platform=settings.platform)
    after_apis = [apis]

    storage = WorkloadBucket("storage", settings=settings, depends_on=after_apis)
    identity = Identity(
        "identity", settings=settings, bucket=storage.name, depends_on=after_apis
    )
    network = ClusterNetwork(
        "network", settings=settings, emails=identity.emails, depends_on=after_apis
    )
    if settings.platform == "gke":
        return build_gke(settings, after_apis, storage, identity, network)
    secrets = LauncherSecrets(
        "secrets",
        settings=settings,
        reader=identity.members["provider"],
        provider_account=identity.accounts["provider"].name,
        depends_on=after_apis,
    )

    image = gcp.compute.get_image_output(
        family=IMAGE_FAMILY,
        project=IMAGE_PROJECT,
        opts=pulumi.InvokeOutputOptions(depends_on=after_apis),
    )

    cluster_yaml = pulumi.Output.all(
        subnetwork=network.subnetwork.self_link,
        head_service_account=identity.emails["head"],
        worker_service_account=identity.emails["worker"],
        ssh_public_key=secrets.ssh_public_key,
        image=image.self_link,
        bucket=storage.name,
    ).apply(
        lambda facts: render_cluster_yaml(
            settings,
            {
                "project": settings.project,
                "region": settings.region,
                "zone": settings.zone,
                "fallback_zones": settings.node_fallback_zones,
                "api_endpoints": settings.node_api_endpoints,
                **facts,
            },
        )
    )

    vm = ProviderVm(
        "provider",
        settings=settings,
        subnetwork=network.subnetwork.self_link,
        service_account=identity.emails["provider"],
        image=image.self_link,
        startup_script=render_boot_script(),
        cluster_yaml=cluster_yaml,
        bundle_b64=base64.b64encode(build_bundle(project_root())).decode(),
        secret_versions=secrets.version_names,
        # The boot script reads secrets and the head is created with these
        # grants: both must exist before the VM starts.
        depends_on=[*after_apis, identity, secrets, network],
    )

    OperatorAccess(
        "operators",
        settings=settings,
        instance=vm.instance,
        provider_account=identity.accounts["provider"],
        depends_on=after_apis,
    )

    return {
        "providerInstance": vm.name,
        "providerZone": vm.zone,
        "sshCommand": pulumi.Output.all(vm.name, vm.zone).apply(
            lambda a: ssh_command(a[0], a[1], settings.project)
        ),
        "clusterConfig": cluster_yaml,
        "serviceAccounts": identity.emails,
        "network": network.network.name,
        "subnetwork": network.subnetwork.name,
        "bucket": storage.name,
        "image": image.self_link,
    }


def get_credentials_command(cluster: str, zone: str, project: str) -> str:
    return (
        f"gcloud container clusters get-credentials {cluster} --zone {zone} "
        f"--project {project} --dns-endpoint"
    )


def build_gke(
    settings: Settings,
    after_apis: list[pulumi.Resource],
    storage: WorkloadBucket,
    identity: Identity,
    network: ClusterNetwork,
) -> dict[str, Any]:
    """platform gke: the GKE cluster, the KubeRay operator and the Ray objects."""
    gke = GkeCluster(
        "gke",
        settings=settings,
        network=network.network.id,
        subnetwork=network.subnetwork.id,
        node_service_account=identity.emails["gke-node"],
        # Nodes log and report metrics from their first minute: grants first.
        depends_on=[*after_apis, identity, network],
    )
    operator = KubeRayOperator("kuberay", provider=gke.provider, depends_on=[gke])
    ray = RayOnGke(
        "ray",
        settings=settings,
        provider=gke.provider,
        bucket=storage.name,
        operator_namespace=operator.namespace,
        # The RayCluster's CRD comes with the operator's chart.
        depends_on=[operator],
    )
    return {
        "platform": settings.platform,
        "gkeCluster": gke.name,
        "gkeLocation": settings.zone,
        "gkeDnsEndpoint": gke.dns_endpoint,
        "getCredentials": gke.name.apply(
            lambda n: get_credentials_command(n, settings.zone, settings.project)
        ),
        "kuberayChartVersion": operator.chart_version,
        "rayNamespace": ray.namespace,
        "rayCluster": ray.ray_cluster_name,
        "rayServiceAccount": ray.service_account_name,
        # What `python -m cluster render --target kuberay --spec ... --facts ...`
        # needs to print this stack's RayJob / RayService (README: the GKE path).
        "clusterSpec": settings.cluster_spec().model_dump(mode="json"),
        "kubeFacts": ray.facts.model_dump(mode="json"),
        "serviceAccounts": identity.emails,
        "network": network.network.name,
        "subnetwork": network.subnetwork.name,
        "bucket": storage.name,
    }
