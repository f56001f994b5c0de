"""The bucket Ray workloads read their inputs from and write their results to,
and where every node ships Ray's logs (``logs/``, cluster/logship.py)."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_gcp as gcp

from cluster.logpaths import LOG_PREFIX
from infra import names
from infra.components.base import Component, labels
from infra.settings import Settings

# Versioning keeps overwritten results recoverable; old versions go after this.
NONCURRENT_VERSION_DAYS = 30


def lifecycle_rules(settings: Settings) -> list[dict]:
    """Old versions go after 30 days; shipped logs after ``logRetentionDays``.

    The logs rule matches live and noncurrent objects (``withState: ANY``): a
    log object this old is deleted, and in this versioned bucket its
    noncurrent copy too (age counts from creation), so nothing under
    ``logs/`` outlives the retention by more than GCS's lifecycle delay
    (up to a day). Together with the shippers' cap per file this bounds the
    logs' volume.
    """
    return [
        {
            "action": {"type": "Delete"},
            "condition": {"days_since_noncurrent_time": NONCURRENT_VERSION_DAYS},
        },
        {
            "action": {"type": "Delete"},
            "condition": {
                "age": settings.log_retention_days,
                "matches_prefixes": [f"{LOG_PREFIX}/"],
                "with_state": "ANY",
            },
        },
    ]


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
            lifecycle_rules=lifecycle_rules(settings),
            labels=labels(settings.cluster_name),
            # Results are data: `pulumi destroy` refuses a non-empty bucket.
            force_destroy=False,
            opts=self.child(),
        )
        self.name = self.bucket.name
        self.register_outputs({"name": self.bucket.name, "url": self.bucket.url})
