"""infra/names.py: resource names fit GCP's limits and stay stable."""

from __future__ import annotations

import re

import pytest

from cluster.spec import CLUSTER_NAME_MAX_LEN
from infra import names

ACCOUNT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$")
GCE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@pytest.mark.parametrize("cluster", ["a", "ray-gcp", "research-2", "x" * CLUSTER_NAME_MAX_LEN])
def test_names_fit_their_limits(cluster):
    for role in ("provider", "head", "worker"):
        assert ACCOUNT_ID.match(names.account_id(cluster, role)), (cluster, role)
    assert BUCKET.match(names.bucket_name("a-thirty-character-project-id", cluster))
    for what in ("vpc", "subnet", "router", "nat", "allow-ssh-admin", "provider", "ssh-private-key"):
        assert GCE_NAME.match(names.resource_name(cluster, what))


def test_short_names_are_readable_and_long_ones_unique_and_stable():
    assert names.account_id("ray-gcp", "provider") == "ray-gcp-provider"
    assert names.bucket_name("my-proj-123", "ray-gcp") == "my-proj-123-ray-gcp-io"
    long_a, long_b = "a" * 30 + "-one", "a" * 30 + "-two"
    # Reviewed values: a name that changed between runs or releases would make
    # `pulumi up` replace the account (and everything granted to it).
    assert names.account_id(long_a, "worker") == "aaaaaaaaaaaaaaaaaa-8b85-worker"
    assert names.account_id(long_b, "worker") == "aaaaaaaaaaaaaaaaaa-17d6-worker"
    assert names.bucket_name("a-thirty-character-project-id", "x" * 35) == (
        "a-thirty-character-project-id-xxxxxxxxxxxxxxxxxxxxxxxxx-f6cc-io")
