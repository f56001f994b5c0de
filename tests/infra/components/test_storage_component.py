"""infra/components/storage.py: a private, versioned bucket in the cluster's region."""

from __future__ import annotations

from tests.infra.conftest import SCENARIOS

BUCKET = "gcp:storage/bucket:Bucket"


def test_bucket_is_private_versioned_regional_and_labelled(each_scenario):
    rec = each_scenario
    bucket = rec.one(BUCKET)["inputs"]
    region = rec.one("gcp:compute/subnetwork:Subnetwork")["inputs"]["region"]
    assert bucket["location"] == region.upper()
    assert bucket["uniformBucketLevelAccess"] is True
    assert bucket["publicAccessPrevention"] == "enforced"
    assert bucket["versioning"] == {"enabled": True}
    assert bucket["forceDestroy"] is False
    assert bucket["labels"]["ray-gcp-cluster"] == rec.outputs["providerInstance"].removesuffix(
        "-provider")
    # Old versions after 30 days; the shipped Ray logs (logs/) after logRetentionDays,
    # live and noncurrent alike.
    retention = SCENARIOS[rec.scenario].get("ray-gcp:logRetentionDays", 30)
    assert bucket["lifecycleRules"] == [
        {"action": {"type": "Delete"}, "condition": {"daysSinceNoncurrentTime": 30}},
        {"action": {"type": "Delete"},
         "condition": {"age": retention, "matchesPrefixes": ["logs/"], "withState": "ANY"}},
    ]
    assert rec.outputs["bucket"] == bucket["name"]


def test_nobody_gets_the_bucket_through_acls_or_public_members(each_scenario):
    for member in each_scenario.of_type("gcp:storage/bucketIAMMember:BucketIAMMember"):
        assert member["inputs"]["member"].startswith("serviceAccount:")
    for forbidden in ("gcp:storage/bucketACL:BucketACL", "gcp:storage/defaultObjectACL:DefaultObjectACL",
                      "gcp:storage/bucketIAMBinding:BucketIAMBinding",
                      "gcp:storage/bucketIAMPolicy:BucketIAMPolicy"):
        assert not each_scenario.of_type(forbidden)
