"""infra/components/secrets.py: generated secrets, in Secret Manager only, provider-readable only."""

from __future__ import annotations

from cluster import layout
from infra import offline as harness

SECRET = "gcp:secretmanager/secret:Secret"
VERSION = "gcp:secretmanager/secretVersion:SecretVersion"
READER = "gcp:secretmanager/secretIamMember:SecretIamMember"

MOCK_VALUES = {
    layout.SECRET_SSH_PRIVATE_KEY: harness.MOCK_SSH_PRIVATE_KEY,
    layout.SECRET_RAY_AUTH_TOKEN: harness.MOCK_RAY_AUTH_TOKEN,
    layout.SECRET_SA_KEY: harness.MOCK_SA_KEY_FILE,  # the decoded JSON key file
}


def _by_secret_id(rec):
    secrets = {r["urn"]: r for r in rec.of_type(SECRET)}
    by_id = {}
    for secret in secrets.values():
        sid = secret["inputs"]["secretId"]
        path = f"projects/ray-gcp-test-1234/secrets/{sid}"
        versions = [v for v in rec.of_type(VERSION) if v["inputs"]["secret"] == path]
        readers = [m for m in rec.of_type(READER) if m["inputs"]["secretId"] == path]
        by_id[sid] = (secret, versions, readers)
    return by_id


def test_one_secret_per_private_value(programs):
    for scenario, expected in (
        ("default", {layout.SECRET_SSH_PRIVATE_KEY, layout.SECRET_RAY_AUTH_TOKEN}),
        ("key-mode", {layout.SECRET_SSH_PRIVATE_KEY, layout.SECRET_RAY_AUTH_TOKEN,
                      layout.SECRET_SA_KEY}),
    ):
        ids = set(_by_secret_id(programs(scenario)))
        assert ids == {f"ray-gcp-{name}" for name in expected}, scenario


def test_each_secret_regional_versioned_and_readable_only_by_the_provider(each_scenario):
    rec = each_scenario
    region = rec.one("gcp:compute/subnetwork:Subnetwork")["inputs"]["region"]
    provider = rec.outputs["serviceAccounts"]["provider"]
    for sid, (secret, versions, readers) in _by_secret_id(rec).items():
        assert secret["inputs"]["replication"] == {
            "userManaged": {"replicas": [{"location": region}]}}, sid
        assert len(versions) == 1, sid
        assert [(m["inputs"]["role"], m["inputs"]["member"]) for m in readers] == [
            ("roles/secretmanager.secretAccessor", f"serviceAccount:{provider}")], sid
    # No IAM on secrets other than those readers, none at project level for secrets.
    assert len(rec.of_type(READER)) == len(rec.of_type(SECRET))
    for member in rec.of_type("gcp:projects/iAMMember:IAMMember"):
        assert "secretmanager" not in member["inputs"]["role"]


def test_secret_values_are_pulumi_secrets_with_the_generated_values(programs):
    rec = programs("key-mode")
    for sid, (_, (version,), _) in _by_secret_id(rec).items():
        data = version["inputs"]["secretData"]
        assert harness.is_secret(data), f"{sid}: secretData is not a Pulumi secret in state"
        logical = sid.removeprefix("ray-gcp-")
        assert harness.unsecret(data) == MOCK_VALUES[logical]
        assert "secretData" in version["additional_secret_outputs"]


def test_key_and_token_generation(default):
    key = default.one("tls:index/privateKey:PrivateKey")["inputs"]
    assert key["algorithm"] == "ED25519"
    token = default.one("random:index/randomPassword:RandomPassword")["inputs"]
    assert token["length"] >= 48 and token["special"] is False
