"""infra/components/operators.py: each listed operator gets exactly three bindings, all on
the provider VM or its account, and nothing project-wide."""

from __future__ import annotations

import json

import pytest

from cluster import layout
from infra import names
from infra.components.operators import operator_usernames
from infra.settings import SettingsError, parse_settings

OPERATORS = ["user:alice.smith@example.com", "group:ml-team@example.com"]
TUNNEL = "gcp:iap/tunnelInstanceIAMMember:TunnelInstanceIAMMember"
INSTANCE = "gcp:compute/instanceIAMMember:InstanceIAMMember"
ACCOUNT = "gcp:serviceaccount/iAMMember:IAMMember"
PROJECT_LEVEL = ("gcp:projects/iAMMember:IAMMember", "gcp:iap/tunnelIamMember:TunnelIamMember")


def _bindings(rec, member: str) -> set[tuple[str, str, str]]:
    """(type, role, target) of every IAM member resource for this principal."""
    out = set()
    for r in rec.resources:
        inputs = r["inputs"]
        if inputs.get("member") != member:
            continue
        target = (
            inputs.get("instance")
            or inputs.get("instanceName")
            or inputs.get("serviceAccountId")
            or inputs.get("project")
        )
        out.add((r["type"], inputs["role"], target))
    return out


def test_each_operator_gets_exactly_the_three_bindings(programs):
    rec = programs("operators")
    vm = rec.one("gcp:compute/instance:Instance")["inputs"]["name"]
    provider = rec.outputs["serviceAccounts"]["provider"]
    account = f"projects/ray-gcp-test-1234/serviceAccounts/{provider}"
    for principal in OPERATORS:
        assert _bindings(rec, principal) == {
            (TUNNEL, "roles/iap.tunnelResourceAccessor", vm),
            (INSTANCE, "roles/compute.osLogin", vm),
            (ACCOUNT, "roles/iam.serviceAccountUser", account),
        }
        for r in rec.resources:
            if r["inputs"].get("member") == principal:
                assert r["type"] not in PROJECT_LEVEL
                assert rec.parent_name(r) == "operators"
                assert r["inputs"].get("zone", "asia-northeast3-a") == "asia-northeast3-a"


def test_no_operator_bindings_without_operators(default):
    members = {r["inputs"].get("member", "") for r in default.resources}
    assert not {m for m in members if m.startswith(("user:", "group:"))}
    assert not default.of_type(TUNNEL) and not default.of_type(INSTANCE)


def test_listed_users_reach_the_boot_script_by_os_login_name(programs):
    metadata = programs("operators").one("gcp:compute/instance:Instance")["inputs"]["metadata"]
    assert json.loads(metadata[layout.META_OPERATORS]) == ["alice_smith_example_com"]
    assert json.loads(programs("default").one("gcp:compute/instance:Instance")["inputs"][
        "metadata"][layout.META_OPERATORS]) == []


def test_oslogin_username_rule():
    assert names.oslogin_username("Alice.Smith@Example.com") == "alice_smith_example_com"
    assert len(names.oslogin_username("a" * 40 + "@example.com")) == 32
    assert operator_usernames(["group:g@x.io", "user:b-c@x.io"]) == ["b_c_x_io"]


@pytest.mark.parametrize(
    "value",
    [
        '["serviceAccount:robot@p.iam.gserviceaccount.com"]',
        '["alice@example.com"]',
        '["user:alice"]',
        '["user:alice@example.com", "user:ALICE@example.com"]',
        '["domain:example.com"]',
    ],
)
def test_bad_principals_fail_naming_the_setting(value):
    with pytest.raises(SettingsError) as exc:
        parse_settings({"operators": value}, "ray-gcp-test-1234")
    text = str(exc.value)
    assert "ray-gcp:operators" in text and "nothing was created" in text
    assert "user:EMAIL or group:EMAIL" in text


def test_principals_that_differ_only_in_punctuation_get_distinct_resources():
    from infra.components.operators import _slug

    assert _slug("user:a.b@x.io") != _slug("user:a-b@x.io")
    assert _slug("user:a.b@x.io").startswith("user-a-b-x-io-")
