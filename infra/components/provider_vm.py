"""The provider VM: a small private VM from which operators run `ray up`.

Its metadata carries everything the boot script needs, none of it secret: the
cluster YAML, the code bundle, the credential mode, and the *names* of the
Secret Manager versions it reads with its own service account.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pulumi
import pulumi_gcp as gcp

from cluster import layout
from cluster.autostop import DEFAULT_TIMEOUT_MINUTES, check_timeout_minutes
from infra import names
from infra.components.base import Component, labels
from infra.components.operators import operator_usernames
from infra.settings import Settings

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
NETWORK_TAG = "ray-gcp-provider"
BOOT_DISK_GB = 20
# GCE refuses a metadata value above 256 KiB.
METADATA_VALUE_LIMIT = 256 * 1024


def provider_metadata(
    *,
    startup_script: str,
    cluster_yaml: str,
    bundle_b64: str,
    secret_versions: Mapping[str, str],
    credential_mode: str,
    operator_usernames: Sequence[str] = (),
    idle_timeout_minutes: int = DEFAULT_TIMEOUT_MINUTES,
) -> dict[str, str]:
    """The VM's metadata items (pure, so tests can check it without Pulumi)."""
    items = {
        # Humans log in with their Google identity (OS Login + IAM), never with
        # keys pasted into project or instance metadata.
        "enable-oslogin": "TRUE",
        "block-project-ssh-keys": "TRUE",
        "serial-port-enable": "FALSE",
        "startup-script": startup_script,
        layout.META_CLUSTER_CONFIG: cluster_yaml,
        layout.META_BUNDLE: bundle_b64,
        layout.META_SECRETS: json.dumps(dict(secret_versions), sort_keys=True),
        layout.META_CREDENTIAL_MODE: credential_mode,
        # OS Login usernames the boot script lets into the ray-operators group.
        layout.META_OPERATORS: json.dumps(list(operator_usernames)),
        # Autostop (infra/provider_boot/autostop.sh): 0 = off.
        layout.META_IDLE_TIMEOUT: str(check_timeout_minutes(idle_timeout_minutes)),
    }
    for key, value in items.items():
        if len(value.encode()) > METADATA_VALUE_LIMIT:
            raise ValueError(
                f"metadata {key!r} is {len(value.encode())} bytes; GCE allows "
                f"{METADATA_VALUE_LIMIT}. Keep large files out of cluster/ and workloads/ "
                "(put data in the workload bucket)."
            )
    return items


class ProviderVm(Component):
    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        subnetwork: pulumi.Input[str],
        service_account: pulumi.Input[str],
        image: pulumi.Input[str],
        startup_script: str,
        cluster_yaml: pulumi.Input[str],
        bundle_b64: str,
        secret_versions: Mapping[str, pulumi.Input[str]],
        depends_on: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("ProviderVm", name, depends_on=depends_on, opts=opts)
        metadata = pulumi.Output.all(cluster_yaml, pulumi.Output.all(**secret_versions)).apply(
            lambda args: provider_metadata(
                startup_script=startup_script,
                cluster_yaml=args[0],
                bundle_b64=bundle_b64,
                secret_versions=args[1],
                credential_mode=settings.credential_mode,
                operator_usernames=operator_usernames(settings.operators),
                idle_timeout_minutes=settings.idle_timeout_minutes,
            )
        )
        interface: dict = {"subnetwork": subnetwork}
        if settings.ssh_needs_public_ip:
            # Only when sshSourceRanges holds a public range: direct SSH from
            # there needs an external IP; the firewall still admits port 22 only.
            interface["access_configs"] = [{"network_tier": "PREMIUM"}]

        self.instance = gcp.compute.Instance(
            f"{name}-instance",
            name=names.resource_name(settings.cluster_name, "provider"),
            project=settings.project,
            zone=settings.zone,
            machine_type=settings.provider_machine_type,
            boot_disk={
                "auto_delete": True,
                "initialize_params": {"image": image, "size": BOOT_DISK_GB, "type": "pd-balanced"},
            },
            network_interfaces=[interface],
            service_account={"email": service_account, "scopes": [CLOUD_PLATFORM]},
            shielded_instance_config={
                "enable_secure_boot": True,
                "enable_vtpm": True,
                "enable_integrity_monitoring": True,
            },
            metadata=metadata,
            tags=[NETWORK_TAG],
            labels={**labels(settings.cluster_name), "ray-gcp-role": "provider"},
            # Changing the machine type or account needs a stop; let Pulumi do it.
            allow_stopping_for_update=True,
            opts=self.child(),
        )
        self.name = self.instance.name
        self.zone = self.instance.zone
        self.register_outputs({"name": self.instance.name, "zone": self.instance.zone})
