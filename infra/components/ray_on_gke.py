"""The Ray side of `platform: gke`: namespace, service account, NetworkPolicy,
the auth token Secret, the workloads ConfigMap, the log shipper's ConfigMap
(with logShipping), the RayCluster and its autostop watcher
(cluster/kuberay_autostop.py).

Every object is rendered by cluster/kuberay.py (spec and facts in, manifest
dict out, the same objects `python -m cluster render --target kuberay`
prints); this component only hands them to Pulumi. Two things only Pulumi
can make:

- the Secret with key `auth_token`: a random token Pulumi generates, kept as
  a Pulumi secret, never rendered or printed; KubeRay injects it into every
  Ray container (authOptions.secretName);
- bucket access for the Ray Pods' Kubernetes service account, granted to its
  Workload Identity principal directly (no Google service account, no key).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s
import pulumi_random as random

from cluster import kube_logship
from cluster.kuberay import (
    AUTH_TOKEN_KEY,
    KubeFacts,
    read_workloads,
    render_core_objects,
    render_raycluster,
    workload_identity_principal,
)
from cluster.kuberay_autostop import read_autostop_sources, render_autostop_objects
from infra import names
from infra.components.base import Component
from infra.components.secrets import AUTH_TOKEN_LENGTH
from infra.settings import Settings

# The Ray Pods read inputs and write results in the workload bucket, nothing else.
BUCKET_ROLE = "roles/storage.objectUser"

_Maker = Callable[..., pulumi.CustomResource]

# How each rendered kind becomes a Pulumi resource (inputs are the manifest's own
# fields, camelCase as rendered; the provider sends them to the API unchanged).
# tests/infra/test_gke.py checks the declared inputs equal the rendered manifests.
_MAKERS: dict[tuple[str, str], _Maker] = {
    ("v1", "Namespace"): lambda name, m, opts: k8s.core.v1.Namespace(
        name, metadata=m["metadata"], opts=opts),
    ("v1", "ServiceAccount"): lambda name, m, opts: k8s.core.v1.ServiceAccount(
        name, metadata=m["metadata"],
        automount_service_account_token=m.get("automountServiceAccountToken"), opts=opts),
    ("v1", "ConfigMap"): lambda name, m, opts: k8s.core.v1.ConfigMap(
        name, metadata=m["metadata"], data=m["data"], opts=opts),
    ("networking.k8s.io/v1", "NetworkPolicy"): lambda name, m, opts: (
        k8s.networking.v1.NetworkPolicy(name, metadata=m["metadata"], spec=m["spec"], opts=opts)),
    ("rbac.authorization.k8s.io/v1", "Role"): lambda name, m, opts: k8s.rbac.v1.Role(
        name, metadata=m["metadata"], rules=m["rules"], opts=opts),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): lambda name, m, opts: (
        k8s.rbac.v1.RoleBinding(name, metadata=m["metadata"], role_ref=m["roleRef"],
                                subjects=m["subjects"], opts=opts)),
    ("apps/v1", "Deployment"): lambda name, m, opts: k8s.apps.v1.Deployment(
        name, metadata=m["metadata"], spec=m["spec"], opts=opts),
}


def manifest_resource(
    name: str, manifest: dict[str, Any], opts: pulumi.ResourceOptions
) -> pulumi.CustomResource:
    """A Pulumi resource declaring one rendered manifest: KubeRay's kinds
    (`ray.io/...`) as CustomResource, the core kinds of _MAKERS as their typed
    resource; anything else is refused rather than declared half right."""
    key = (manifest["apiVersion"], manifest["kind"])
    if key in _MAKERS:
        return _MAKERS[key](name, manifest, opts)
    if not manifest["apiVersion"].startswith("ray.io/"):
        raise ValueError(f"no Pulumi type for {key}; add one to _MAKERS")
    return k8s.apiextensions.CustomResource(
        name,
        api_version=manifest["apiVersion"],
        kind=manifest["kind"],
        metadata=manifest["metadata"],
        spec=manifest["spec"],
        opts=opts,
    )


def _object_key(manifest: dict[str, Any]) -> str:
    """The Pulumi name suffix of a core object: its kind; the log shipper's
    ConfigMap (cluster/kube_logship.py) is `logship-configmap`."""
    kind = manifest["kind"].lower()
    if manifest["kind"] == "ConfigMap" and manifest["metadata"]["name"] == kube_logship.CONFIGMAP:
        return f"logship-{kind}"
    return kind


def kube_facts(settings: Settings, operator_namespace: str) -> KubeFacts:
    """The facts the renderers need. The bucket's name is known before it exists
    (names.bucket_name, as storage.py names it); every other name is the
    renderer's default, the same on every stack (one namespace per cluster)."""
    return KubeFacts(
        bucket=names.bucket_name(settings.project, settings.cluster_name),
        operator_namespace=operator_namespace,
    )


class RayOnGke(Component):
    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        provider: k8s.Provider,
        bucket: pulumi.Input[str],
        operator_namespace: str,
        depends_on: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("RayOnGke", name, depends_on=depends_on, opts=opts)
        spec = settings.cluster_spec()
        facts = kube_facts(settings, operator_namespace)
        self.namespace = facts.namespace
        self.service_account_name = facts.service_account
        self.ray_cluster_name = spec.cluster_name
        self.facts = facts

        def in_cluster(*after: pulumi.Resource) -> pulumi.ResourceOptions:
            return self.child(provider=provider, depends_on=list(after))

        autostop = settings.idle_timeout_minutes > 0
        core = {
            _object_key(m): m
            for m in render_core_objects(spec, facts, read_workloads(), autostop=autostop)
        }
        namespace = manifest_resource(f"{name}-namespace", core.pop("namespace"), in_cluster())
        self.objects = {
            key: manifest_resource(f"{name}-{key}", manifest, in_cluster(namespace))
            for key, manifest in core.items()
        }

        token = random.RandomPassword(
            f"{name}-auth-token", length=AUTH_TOKEN_LENGTH, special=False, opts=self.child()
        )
        self.auth_secret = k8s.core.v1.Secret(
            f"{name}-auth-secret",
            metadata={
                "name": facts.auth_secret_name,
                "namespace": facts.namespace,
                "labels": {"app.kubernetes.io/part-of": "ray-gcp"},
            },
            type="Opaque",
            string_data={AUTH_TOKEN_KEY: pulumi.Output.secret(token.result)},
            opts=in_cluster(namespace),
        )

        # Bucket access for the Ray Pods' KSA, as its Workload Identity principal.
        project = gcp.organizations.get_project_output(
            project_id=settings.project, opts=pulumi.InvokeOutputOptions(parent=self)
        )
        self.bucket_access = gcp.storage.BucketIAMMember(
            f"{name}-ksa-bucket-access",
            bucket=bucket,
            role=BUCKET_ROLE,
            member=project.number.apply(
                lambda number: workload_identity_principal(number, settings.project, facts)
            ),
            opts=self.child(),
        )

        self.ray_cluster = manifest_resource(
            f"{name}-raycluster",
            render_raycluster(spec, facts),
            # Its Pods need the Secret, the KSA (and its bucket access) and the
            # ConfigMap; the NetworkPolicy guards the ports before a Pod listens.
            in_cluster(self.auth_secret, self.bucket_access, *self.objects.values()),
        )
        # Autostop: the watcher that suspends this RayCluster once it has been idle for
        # ray-gcp:idleTimeoutMinutes (nothing when 0). It needs the RayCluster (its
        # Role names it) and the token Secret.
        self.autostop = {
            obj["kind"]: manifest_resource(
                f"{name}-autostop-{obj['kind'].lower()}",
                obj,
                in_cluster(namespace, self.auth_secret, self.ray_cluster),
            )
            for obj in render_autostop_objects(
                spec, facts, settings.idle_timeout_minutes, read_autostop_sources()
            )
        }
        self.register_outputs(
            {
                "namespace": self.namespace,
                "serviceAccount": self.service_account_name,
                "rayCluster": self.ray_cluster_name,
            }
        )
