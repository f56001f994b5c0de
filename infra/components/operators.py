"""Operator access from one setting, `ray-gcp:operators`, and nothing project-wide.

Per listed principal (user:EMAIL or group:EMAIL), on the provider VM and its
account only:

| role                          | on                         | why |
|-------------------------------|----------------------------|-----|
| iap.tunnelResourceAccessor    | the provider VM (instance) | `gcloud compute ssh --tunnel-through-iap` |
| compute.osLogin               | the provider VM (instance) | log in with their Google identity, no sudo |
| iam.serviceAccountUser        | the provider account       | OS Login to a VM that runs as a service account |

The boot script puts listed users into the `ray-operators` group at their first
login (metadata key layout.META_OPERATORS, see infra/BOOT.md), so
`$(pulumi stack output sshCommand)` then `ray up` works with no manual step.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import pulumi
import pulumi_gcp as gcp

from infra import names
from infra.components.base import Component
from infra.settings import Settings

IAP_ROLE = "roles/iap.tunnelResourceAccessor"
OS_LOGIN_ROLE = "roles/compute.osLogin"
ACT_AS_ROLE = "roles/iam.serviceAccountUser"


def operator_usernames(operators: Sequence[str]) -> list[str]:
    """OS Login usernames of the `user:` principals (groups' members are not known here)."""
    return [
        names.oslogin_username(p.split(":", 1)[1]) for p in operators if p.startswith("user:")
    ]


def _slug(principal: str) -> str:
    """A resource-name part: readable, plus a hash so a.b@x and a-b@x stay distinct."""
    readable = re.sub(r"[^a-z0-9]+", "-", principal.lower()).strip("-")
    return f"{readable}-{hashlib.sha256(principal.encode()).hexdigest()[:6]}"


class OperatorAccess(Component):
    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        instance: gcp.compute.Instance,
        provider_account: gcp.serviceaccount.Account,
        depends_on: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("OperatorAccess", name, depends_on=depends_on, opts=opts)
        self.bindings: list[pulumi.CustomResource] = []
        for principal in settings.operators:
            slug = _slug(principal)
            self.bindings += [
                gcp.iap.TunnelInstanceIAMMember(
                    f"{name}-{slug}-iap-tunnel",
                    project=settings.project,
                    zone=instance.zone,
                    instance=instance.name,
                    role=IAP_ROLE,
                    member=principal,
                    opts=self.child(),
                ),
                gcp.compute.InstanceIAMMember(
                    f"{name}-{slug}-os-login",
                    project=settings.project,
                    zone=instance.zone,
                    instance_name=instance.name,
                    role=OS_LOGIN_ROLE,
                    member=principal,
                    opts=self.child(),
                ),
                gcp.serviceaccount.IAMMember(
                    f"{name}-{slug}-act-as-provider",
                    service_account_id=provider_account.name,
                    role=ACT_AS_ROLE,
                    member=principal,
                    opts=self.child(),
                ),
            ]
        self.register_outputs({"operators": list(settings.operators)})
