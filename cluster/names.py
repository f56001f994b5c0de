"""Names of the GCP resources of one cluster, derived from the cluster name.

Pure functions: the same settings always give the same names, and every name
fits its GCP limit (a long cluster name is shortened with a stable hash
rather than refused, since the cluster-name rule itself comes from Ray).
"""

from __future__ import annotations

import hashlib

# Service-account IDs: 6-30 characters, [a-z][a-z0-9-]*[a-z0-9].
_ACCOUNT_ID_MAX = 30
# Bucket names: 3-63 characters (without dots).
_BUCKET_MAX = 63


def _fit(base: str, suffix: str, limit: int) -> str:
    """`base-suffix`, or `<base cut>-<hash4>-suffix` when that is longer than limit."""
    name = f"{base}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:4]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{base[:keep].rstrip('-')}-{digest}-{suffix}"


def account_id(cluster_name: str, role: str) -> str:
    """Service-account ID of one role (`provider`, `head`, `worker`) of the cluster."""
    return _fit(cluster_name, role, _ACCOUNT_ID_MAX)


def service_account_email(project: str, cluster_name: str, role: str) -> str:
    """The email GCP gives the role's service account (`<id>@<project>.iam.gserviceaccount.com`)."""
    return f"{account_id(cluster_name, role)}@{project}.iam.gserviceaccount.com"


def bucket_name(project: str, cluster_name: str) -> str:
    """Globally unique bucket name: project IDs are unique, so prefix with one."""
    return _fit(f"{project}-{cluster_name}", "io", _BUCKET_MAX)


def resource_name(cluster_name: str, what: str) -> str:
    """Name of a project-scoped resource (VPC, subnet, firewall, VM, secret): <= 63 chars."""
    return _fit(cluster_name, what, 63)
