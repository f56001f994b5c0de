"""tests/infra/access.py reads every kind of grant and ACL pulumi-gcp has, not
only the kinds this stack declares today (those are read by the component tests)."""

from __future__ import annotations

import json

import pytest

from tests.infra import access


class FakeRecording:
    """The parts of tests/infra/conftest.py's Recording that access.py reads."""

    scenario = "synthetic"

    def __init__(self, *resources):
        self.outputs = {"serviceAccounts": {}, "bucket": "b"}
        self.resources = [{"type": t, "name": f"r{i}", "inputs": inputs}
                          for i, (t, inputs) in enumerate(resources)]

    def of_type(self, typ):
        return [r for r in self.resources if r["type"] == typ]


PUBLIC_DECLARATIONS = [
    ("gcp:storage/bucketAccessControl:BucketAccessControl",
     {"bucket": "b", "entity": "allUsers", "role": "READER"}),
    ("gcp:storage/defaultObjectAccessControl:DefaultObjectAccessControl",
     {"bucket": "b", "entity": "allAuthenticatedUsers", "role": "READER"}),
    ("gcp:storage/objectAccessControl:ObjectAccessControl",
     {"bucket": "b", "object": "o", "entity": "allUsers", "role": "READER"}),
    ("gcp:storage/bucketACL:BucketACL", {"bucket": "b", "roleEntities": ["READER:allUsers"]}),
    ("gcp:storage/bucketACL:BucketACL", {"bucket": "b", "predefinedAcl": "publicRead"}),
    ("gcp:storage/bucketACL:BucketACL", {"bucket": "b", "defaultAcl": "authenticatedRead"}),
    ("gcp:storage/defaultObjectACL:DefaultObjectACL",
     {"bucket": "b", "roleEntities": ["READER:allAuthenticatedUsers"]}),
    ("gcp:storage/objectACL:ObjectACL", {"bucket": "b", "object": "o",
                                         "predefinedAcl": "publicReadWrite"}),
    ("gcp:storage/bucketIAMMember:BucketIAMMember",
     {"bucket": "b", "role": "roles/storage.objectViewer", "member": "allUsers"}),
    ("gcp:storage/bucketIAMBinding:BucketIAMBinding",
     {"bucket": "b", "role": "roles/storage.objectViewer", "members": ["allAuthenticatedUsers"]}),
    ("gcp:storage/bucketIAMPolicy:BucketIAMPolicy", {"bucket": "b", "policyData": json.dumps(
        {"bindings": [{"role": "roles/storage.objectViewer", "members": ["allUsers"]}]})}),
    ("gcp:storage/managedFolderIamMember:ManagedFolderIamMember",
     {"bucket": "b", "managedFolder": "f/", "role": "roles/storage.objectViewer",
      "member": "allUsers"}),
    ("gcp:projects/iAMMember:IAMMember",
     {"project": "p", "role": "roles/viewer", "member": "allAuthenticatedUsers"}),
    ("gcp:organizations/iAMMember:IAMMember",
     {"orgId": "1", "role": "roles/viewer", "member": "allUsers"}),
]


@pytest.mark.parametrize("typ,inputs", PUBLIC_DECLARATIONS,
                         ids=[f"{t.rsplit(':', 1)[1]}-{i}" for i, (t, _) in
                              enumerate(PUBLIC_DECLARATIONS)])
def test_every_kind_of_public_grant_or_acl_is_found(typ, inputs):
    rec = FakeRecording((typ, inputs))
    assert len(access.public_grants(rec)) == 1


def test_private_ones_are_not_reported_and_every_kind_is_collected():
    rec = FakeRecording(
        ("gcp:storage/bucketIAMMember:BucketIAMMember",
         {"bucket": "b", "role": "roles/storage.objectUser", "member": "serviceAccount:a@p.iam"}),
        ("gcp:storage/bucketACL:BucketACL",
         {"bucket": "b", "roleEntities": ["OWNER:project-owners-1"], "predefinedAcl": "private"}),
        ("gcp:storage/bucket:Bucket", {"name": "b"}),
    )
    assert access.public_grants(rec) == []
    assert len(access.grant_resources(rec)) == 1
    assert len(access.acl_resources(rec)) == 1


def test_a_grant_it_cannot_read_fails():
    rec = FakeRecording(("gcp:storage/bucketIAMMember:BucketIAMMember", {"bucket": "b"}))
    with pytest.raises(KeyError):
        access.public_grants(rec)


def test_a_grant_at_a_scope_it_does_not_know_fails():
    rec = FakeRecording(("gcp:folder/iAMMember:IAMMember",
                         {"folder": "folders/1", "role": "roles/viewer", "member": "user:a@b.c"}))
    with pytest.raises(AssertionError, match="types this test does not read"):
        access.all_grants(rec)
