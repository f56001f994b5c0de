"""infra/components/provider_vm.py: private, shielded, OS Login, metadata without secrets."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import pytest

from cluster import layout
from cluster.bundle import build_bundle
from infra import offline as harness
from infra.boot import render_boot_script
from infra.components.provider_vm import METADATA_VALUE_LIMIT, provider_metadata

INSTANCE = "gcp:compute/instance:Instance"
VERSION = "gcp:secretmanager/secretVersion:SecretVersion"


def vm(rec):
    return rec.one(INSTANCE)["inputs"]


def test_private_by_default(programs):
    for scenario in ("default", "key-mode", "spot", "us-central1"):
        (nic,) = vm(programs(scenario))["networkInterfaces"]
        assert "accessConfigs" not in nic, scenario
        assert nic["subnetwork"].endswith(
            "/subnetworks/" + programs(scenario).outputs["subnetwork"])


def test_external_ip_only_when_ssh_is_allowed_from_a_public_range(programs):
    (nic,) = vm(programs("ssh-ranges"))["networkInterfaces"]
    assert nic["accessConfigs"] == [{"networkTier": "PREMIUM"}]


def test_shielded_small_zonal_and_attached_to_the_provider_account(each_scenario):
    rec = each_scenario
    inputs = vm(rec)
    assert inputs["shieldedInstanceConfig"] == {
        "enableSecureBoot": True, "enableVtpm": True, "enableIntegrityMonitoring": True}
    assert inputs["zone"] == rec.outputs["providerZone"]
    assert inputs["machineType"] in ("e2-medium", "e2-small")
    assert inputs["serviceAccount"] == {
        "email": rec.outputs["serviceAccounts"]["provider"],
        "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
    assert inputs["labels"]["ray-gcp-role"] == "provider"
    assert inputs["tags"] == ["ray-gcp-provider"]


def test_vm_and_ray_nodes_boot_the_same_pinned_image(each_scenario):
    rec = each_scenario
    assert vm(rec)["bootDisk"]["initializeParams"]["image"] == harness.MOCK_IMAGE
    assert rec.outputs["image"] == harness.MOCK_IMAGE
    assert harness.MOCK_IMAGE in rec.outputs["clusterConfig"]
    assert "family/debian-12" not in rec.outputs["clusterConfig"]


def test_metadata_keys_and_values(each_scenario):
    rec = each_scenario
    meta = vm(rec)["metadata"]
    mode = "key" if rec.scenario == "key-mode" else "metadata"
    assert set(meta) == {
        "enable-oslogin", "block-project-ssh-keys", "serial-port-enable", "startup-script",
        layout.META_CLUSTER_CONFIG, layout.META_BUNDLE, layout.META_SECRETS,
        layout.META_CREDENTIAL_MODE, layout.META_OPERATORS, layout.META_IDLE_TIMEOUT}
    assert (meta["enable-oslogin"], meta["block-project-ssh-keys"], meta["serial-port-enable"]) == (
        "TRUE", "TRUE", "FALSE")
    assert meta["startup-script"] == render_boot_script()
    assert meta[layout.META_CLUSTER_CONFIG] == rec.outputs["clusterConfig"]
    assert meta[layout.META_CREDENTIAL_MODE] == mode
    assert meta[layout.META_IDLE_TIMEOUT] == ("15" if rec.scenario == "spot" else "60")
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(meta[layout.META_BUNDLE]))) as tar:
        names = tar.getnames()
    assert {n.split("/")[0] for n in names} == {"cluster", "workloads"}
    assert "cluster/requirements-node.txt" in names
    assert base64.b64decode(meta[layout.META_BUNDLE]) == build_bundle(harness.PROJECT_ROOT)


def test_metadata_names_pinned_secret_versions_only(each_scenario):
    rec = each_scenario
    names = json.loads(vm(rec)["metadata"][layout.META_SECRETS])
    expected = {layout.SECRET_SSH_PRIVATE_KEY, layout.SECRET_RAY_AUTH_TOKEN}
    if rec.scenario == "key-mode":
        expected.add(layout.SECRET_SA_KEY)
    assert set(names) == expected
    cluster = rec.outputs["providerInstance"].removesuffix("-provider")
    for logical, version in names.items():
        # The mocked provider numbers the first version of every secret 1.
        assert version == (
            f"projects/{harness.TEST_PROJECT_NUMBER}/secrets/{cluster}-{logical}/versions/1")


def _bundle_files(meta: dict) -> dict[str, str]:
    raw = base64.b64decode(meta[layout.META_BUNDLE])
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read().decode("latin-1")
                for m in tar.getmembers() if m.isfile()}


def test_no_secret_material_in_what_a_run_holding_the_secrets_gives_the_vm(each_scenario):
    """The run generated the secrets (they are in its SecretVersions); none of
    them is in anything it gives the VM or prints: every VM input (metadata,
    each file of the decoded bundle, the startup script), the run's log and its
    invokes."""
    rec = each_scenario
    held = json.dumps([harness.unsecret(v["inputs"]["secretData"]) for v in rec.of_type(VERSION)])
    expected_held = set(harness.SECRET_NEEDLES) - (
        set() if rec.scenario == "key-mode" else {"service-account key"})
    for secret in expected_held:
        assert any(n in held for n in harness.SECRET_NEEDLES[secret]), (
            f"the run never held the {secret}: searching for it below would prove nothing")

    inputs = vm(rec)
    meta = inputs["metadata"]
    haystacks = {f"metadata {key}": str(value) for key, value in meta.items()}
    haystacks.update({f"bundle file {name}": text for name, text in _bundle_files(meta).items()})
    haystacks["every other VM input"] = json.dumps(
        harness.unsecret({k: v for k, v in inputs.items() if k != "metadata"}))
    haystacks["the run's log"] = "\n".join(rec.data["log"])
    haystacks["the run's invokes"] = json.dumps(rec.data["invokes"])
    assert "bundle file cluster/layout.py" in haystacks
    for key in meta:
        assert not harness.is_secret(meta[key]), f"metadata {key} is a secret value"
    leaks = [(secret, where) for where, text in haystacks.items()
             for secret, needles in harness.SECRET_NEEDLES.items()
             if any(needle in text for needle in needles)]
    assert leaks == []


def test_metadata_is_not_a_pulumi_secret(each_scenario):
    # A secret metadata map would mean something secret flowed into it.
    assert not harness.is_secret(vm(each_scenario)["metadata"])


def test_oversized_metadata_value_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match=layout.META_BUNDLE):
        provider_metadata(startup_script="#!/bin/sh\n", cluster_yaml="x: 1\n",
                          bundle_b64="A" * (METADATA_VALUE_LIMIT + 1),
                          secret_versions={}, credential_mode="metadata")
