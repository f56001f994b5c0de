"""What every ray-gcp component shares: a type token and options for its children."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi

TYPE_PREFIX = "ray-gcp:infra"
# Applied to every resource that takes labels, so a project owner can tell
# what belongs to which cluster (and to Pulumi) in the console and in billing.
MANAGED_BY = {"managed-by": "pulumi", "app": "ray-gcp"}


def labels(cluster_name: str) -> dict[str, str]:
    return {**MANAGED_BY, "ray-gcp-cluster": cluster_name}


class Component(pulumi.ComponentResource):
    """A ComponentResource whose children all wait for `depends_on` (e.g. the APIs).

    Pulumi does not pass a component's depends_on down to its children, so
    `child()` adds it to every child explicitly.
    """

    def __init__(
        self,
        kind: str,
        name: str,
        *,
        depends_on: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(f"{TYPE_PREFIX}:{kind}", name, None, opts)
        self._depends_on = list(depends_on)

    def child(
        self, *, depends_on: Sequence[pulumi.Resource] = (), **kwargs
    ) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(
            parent=self, depends_on=[*self._depends_on, *depends_on], **kwargs
        )
