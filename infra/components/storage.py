"""The bucket Ray workloads read their inputs from and write their results to."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_gcp as gcp

from infra import names
from infra.components.base import Component, labels
from infra.settings import Settings

# Versioning keeps overwritten results recoverable; old versions go after this.
NONCURRENT_VERSION_DAYS = 30


class WorkloadBucket(Component):
    """A private, versioned bucket in the cluster's region.

    Uniform bucket-level access (no per-object ACLs) and enforced public access
    prevention: nothing in it can be made public, whatever IAM says later.
    Access is granted on this bucket only (see identity.py), never project-wide.
    """

    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        depends_on: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("WorkloadBucket", name, depends_on=depends_on, opts=opts)
        self.bucket = gcp.storage.Bucket(
            f"{name}-bucket",
            name=names.bucket_name(settings.project, settings.cluster_name),
            project=settings.project,
            # GCS reports locations upper-case; writing it so avoids a diff on every run.
            location=settings.region.upper(),
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            versioning={"enabled": True},
            lifecycle_rules=[
                {
                    "action": {"type": "Delete"},
                    "condition": {"days_since_noncurrent_time": NONCURRENT_VERSION_DAYS},
                }
            ],
            labels=labels(settings.cluster_name),
            # Results are data: `pulumi destroy` refuses a non-empty bucket.
            force_destroy=False,
            opts=self.child(),
        )
        self.name = self.bucket.name
        self.register_outputs({"name": self.bucket.name, "url": self.bucket.url})
