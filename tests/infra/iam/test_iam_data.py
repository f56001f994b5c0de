"""infra/iam/data: the pinned iam-dataset subset is complete, attributed and used as documented."""

from __future__ import annotations

import json
import re

import pytest

from infra.iam import DATA_DIR, RULES, Call, load_calls, method_map, needed, role_permissions


def test_snapshot_names_its_origin_commit_and_license():
    source = (DATA_DIR / "SOURCE.md").read_text()
    (commit,) = re.findall(r"`([0-9a-f]{40})`", source)
    assert "https://github.com/iann0036/iam-dataset" in source
    assert json.loads((DATA_DIR / "map.json").read_text())["source"] == (
        f"https://github.com/iann0036/iam-dataset/blob/{commit}/gcp/map.json"
    )
    license_text = (DATA_DIR / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "Ian Mckay" in license_text


def test_every_recorded_method_and_every_rule_is_in_the_method_map():
    recorded = {c.method for calls in load_calls().values() for c in calls}
    # The map lacks logging.entries.write (GCP's data has no entry for it); an
    # unconditional granting rule stands in for it, with the permission Google documents.
    rule_only = {r.method for r in RULES if r.grant and r.when is None} - set(method_map())
    assert rule_only == {"logging.entries.write"}
    assert recorded <= set(method_map()) | rule_only
    assert needed(Call("logging.entries.write", "project")) == {
        ("logging.logEntries.create", "project")}
    assert "logging.logEntries.create" in role_permissions("roles/logging.logWriter")
    for rule in RULES:
        assert rule.method in method_map() or rule.method in rule_only, rule
        assert rule.when is None or rule.when.startswith("$.") or "=" in rule.when, rule


def test_rules_act_only_when_their_condition_says():
    insert = "compute.instances.insert"
    bare = Call(insert, "project", ("account:worker",), ("project", "zone"),
                ("$.name", "$.serviceAccounts[].email"))
    perms = {p for p, _ in needed(bare)}
    assert "compute.subnetworks.useExternalIp" not in perms  # no accessConfigs
    assert "compute.instances.setMetadata" not in perms  # no metadata
    assert ("iam.serviceAccounts.actAs", "account:worker") in needed(bare)
    public = Call(insert, "project", (), ("project", "zone"),
                  ("$.metadata", "$.networkInterfaces[].accessConfigs"))
    perms = {p for p, _ in needed(public)}
    assert {"compute.subnetworks.useExternalIp", "compute.instances.setMetadata"} <= perms
    assert not {p for p in perms if p == "iam.serviceAccounts.actAs"}  # attaches no account


def test_an_unknown_method_or_role_says_how_to_refresh():
    with pytest.raises(KeyError, match="refresh the snapshot"):
        needed(Call("compute.instances.frobnicate", "project"))
    with pytest.raises(KeyError, match="refresh it"):
        role_permissions("roles/compute.nonexistent")
