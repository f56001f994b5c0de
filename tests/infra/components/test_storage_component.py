"""infra/components/storage.py: a private, versioned bucket in the cluster's region."""

from __future__ import annotations

from infra import offline as harness
from tests.infra import access
from tests.infra.conftest import ALL_SCENARIOS

BUCKET = "gcp:storage/bucket:Bucket"


def test_bucket_is_private_versioned_regional_and_labelled(any_scenario):
    rec = any_scenario
    bucket = rec.one(BUCKET)["inputs"]
    region = rec.one("gcp:compute/subnetwork:Subnetwork")["inputs"]["region"]
    assert bucket["location"] == region.upper()
    assert bucket["uniformBucketLevelAccess"] is True
    assert bucket["publicAccessPrevention"] == "enforced"
    assert bucket["versioning"] == {"enabled": True}
    assert bucket["forceDestroy"] is False
    cluster = ALL_SCENARIOS[rec.scenario].get("ray-gcp:clusterName", "ray-gcp")
    assert bucket["labels"]["ray-gcp-cluster"] == cluster
    assert bucket["lifecycleRules"] == [
        {"action": {"type": "Delete"}, "condition": {"daysSinceNoncurrentTime": 30}}
    ]
    assert rec.outputs["bucket"] == bucket["name"]


def test_nothing_is_public_by_any_grant_or_acl(any_scenario):
    """No IAM or ACL resource of the stack, of any type and on anything, names
    allUsers or allAuthenticatedUsers (or a canned public ACL); VM and GKE."""
    public = access.public_grants(any_scenario)
    assert not public, f"[{any_scenario.scenario}] public grants: {public}"


def test_nobody_gets_the_bucket_through_acls_and_its_members_are_ours(any_scenario):
    rec = any_scenario
    # Uniform bucket-level access: ACLs are off, so no ACL resource of any kind.
    acls = [(r["type"], r["name"]) for r in access.acl_resources(rec)]
    assert not acls, f"[{rec.scenario}] ACL resources: {acls}"
    # Every principal of every grant on the bucket is one of the stack's own
    # accounts (VM) or the Ray Pods' Kubernetes service account (GKE).
    on_bucket = [r for r in access.grant_resources(rec)
                 if harness.unsecret(r["inputs"]).get("bucket") == rec.outputs["bucket"]]
    assert on_bucket
    for r in on_bucket:
        for member in access.principals(r):
            assert access.who(rec, member) in {*rec.outputs["serviceAccounts"], *access.ksas(rec)}
