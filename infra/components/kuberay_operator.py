"""The KubeRay operator, installed from its official Helm chart (`platform: gke`).

The chart, its repository and version are cluster/layout.py's KUBERAY_CHART,
KUBERAY_HELM_REPO and KUBERAY_VERSION (the one place they are pinned; chart
versions are the KubeRay release tags without the `v`). The
chart also installs KubeRay's CRDs, so the Ray objects wait for this release.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from cluster import layout
from cluster.kuberay import KubeFacts
from infra.components.base import Component
from infra.components.gke import POOL_LABEL, SYSTEM_POOL

# Where the operator runs; the Ray NetworkPolicy admits it to the dashboard
# port by this namespace's name (the renderer's default, so one place).
OPERATOR_NAMESPACE: str = KubeFacts.model_fields["operator_namespace"].default


def operator_values() -> dict[str, Any]:
    """Helm values: the chart's defaults, except where the operator runs (pure)."""
    return {
        # The fixed system pool: the operator must not hold up scaling the
        # worker pool down to zero, nor be evicted with a Spot node.
        "nodeSelector": {POOL_LABEL: SYSTEM_POOL},
    }


class KubeRayOperator(Component):
    def __init__(
        self,
        name: str,
        *,
        provider: k8s.Provider,
        depends_on: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("KubeRayOperator", name, depends_on=depends_on, opts=opts)
        self.release = k8s.helm.v3.Release(
            f"{name}-release",
            name=layout.KUBERAY_CHART,
            chart=layout.KUBERAY_CHART,
            version=layout.KUBERAY_VERSION,
            repository_opts={"repo": layout.KUBERAY_HELM_REPO},
            namespace=OPERATOR_NAMESPACE,
            create_namespace=True,
            values=operator_values(),
            # Roll back a failed upgrade instead of leaving a half-installed operator.
            atomic=True,
            opts=self.child(provider=provider),
        )
        self.namespace = OPERATOR_NAMESPACE
        self.chart_version = layout.KUBERAY_VERSION
        self.register_outputs(
            {"release": self.release.name, "chartVersion": layout.KUBERAY_VERSION}
        )
