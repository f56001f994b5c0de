"""infra/components/identity.py: three accounts and exactly the grants documented there."""

from __future__ import annotations

import re

from infra.iam import role_permissions
from tests.infra.access import CUSTOM_ROLE, all_grants, ksas
from tests.infra.conftest import GKE_SCENARIOS, SCENARIOS

# The whole IAM of the stack: (who, role, scope). Reviewed; change with care.
# Grants that do not depend on customRoles:
COMMON_GRANTS = {
    ("provider", "roles/logging.logWriter", "project"),
    ("provider", "roles/iam.serviceAccountUser", "account:head"),
    ("provider", "roles/iam.serviceAccountViewer", "account:worker"),
    ("head", "roles/iam.serviceAccountUser", "account:worker"),
    ("head", "roles/logging.logWriter", "project"),
    ("head", "roles/monitoring.metricWriter", "project"),
    ("head", "roles/storage.objectUser", "bucket"),
    ("worker", "roles/logging.logWriter", "project"),
    ("worker", "roles/monitoring.metricWriter", "project"),
    ("worker", "roles/storage.objectUser", "bucket"),
}
# customRoles (the default): custom:<role> is the stack's own custom role.
EXPECTED_GRANTS = COMMON_GRANTS | {
    ("provider", "custom:launcher", "project"),
    ("head", "custom:autoscaler", "project"),
}
# customRoles=false: predefined compute roles instead.
EXPECTED_PREDEFINED_GRANTS = COMMON_GRANTS | {
    ("provider", "roles/compute.instanceAdmin.v1", "project"),
    ("provider", "roles/compute.networkViewer", "project"),
    ("head", "roles/compute.instanceAdmin.v1", "project"),
}
# platform gke: the node account and the Ray Pods' Kubernetes service account
# (its Workload Identity principal), nothing else (infra/README.md, GKE IAM).
EXPECTED_GKE_GRANTS = {
    ("gke-node", "roles/logging.logWriter", "project"),
    ("gke-node", "roles/monitoring.metricWriter", "project"),
    ("ksa:ray/ray-workloads", "roles/storage.objectUser", "bucket"),
}
SECRET_NAMES = {"ssh-private-key", "ray-auth-token", "service-account-key"}

PRIMITIVE = {"roles/owner", "roles/editor", "roles/viewer"}
TOO_BROAD = PRIMITIVE | {
    "roles/compute.admin", "roles/iam.serviceAccountAdmin", "roles/iam.serviceAccountKeyAdmin",
    "roles/iam.securityAdmin", "roles/resourcemanager.projectIamAdmin", "roles/storage.admin",
    "roles/secretmanager.admin",
}


def test_three_accounts(each_scenario):
    accounts = each_scenario.of_type("gcp:serviceaccount/account:Account")
    assert sorted(r["name"] for r in accounts) == [
        "identity-head", "identity-provider", "identity-worker"]
    for r in accounts:
        assert re.match(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", r["inputs"]["accountId"])
        assert each_scenario.parent_name(r) == "identity"


def test_the_complete_list_of_role_bindings(any_scenario):
    """Every grant of every scenario, VM and GKE, read from every resource whose
    type is an IAM member, binding or policy (tests/infra/access.py)."""
    if any_scenario.scenario in GKE_SCENARIOS:
        assert ksas(any_scenario) == {"ksa:ray/ray-workloads"}
        assert all_grants(any_scenario) == EXPECTED_GKE_GRANTS
        return
    each_scenario = any_scenario
    grants = all_grants(each_scenario)
    non_secret = {g for g in grants if not g[2].startswith("secret:")}
    ours = {g for g in non_secret if not g[0].startswith(("user:", "group:"))}
    if each_scenario.scenario == "predefined-roles":
        assert ours == EXPECTED_PREDEFINED_GRANTS
    else:
        assert ours == EXPECTED_GRANTS
    # Operators: exactly three bindings each, on the provider VM and its account only.
    vm = "instance:" + each_scenario.one("gcp:compute/instance:Instance")["inputs"]["name"]
    operators = SCENARIOS[each_scenario.scenario].get("ray-gcp:operators", [])
    assert non_secret - ours == {
        grant
        for principal in operators
        for grant in (
            (principal, "roles/iap.tunnelResourceAccessor", vm),
            (principal, "roles/compute.osLogin", vm),
            (principal, "roles/iam.serviceAccountUser", "account:provider"),
        )
    }
    secret_grants = {g for g in grants if g[2].startswith("secret:")}
    # Every secret readable by the provider's account, through secretAccessor only.
    assert {(who, role) for who, role, _ in secret_grants} == {
        ("provider", "roles/secretmanager.secretAccessor")}


def test_no_primitive_or_broad_roles_and_no_authoritative_iam(any_scenario):
    roles = {role for _, role, _ in all_grants(any_scenario)}
    assert not roles & TOO_BROAD
    for r in any_scenario.resources:
        # IAMPolicy/IAMBinding replace what others granted: never used here.
        assert not re.search(r"IAM(Policy|Binding)$|IamPolicy|IamBinding", r["type"]), r["type"]


def test_service_account_user_only_on_specific_accounts(any_scenario):
    for who, role, scope in all_grants(any_scenario):
        if role.startswith("roles/iam."):
            assert scope.startswith("account:"), (who, role, scope)
        if role.startswith("roles/storage."):
            assert scope == "bucket", (who, role, scope)


def test_no_service_account_key_unless_opted_in(programs):
    for scenario in ("default", "ssh-ranges", "spot", "us-central1"):
        assert not programs(scenario).of_type("gcp:serviceaccount/key:Key")
    (key,) = programs("key-mode").of_type("gcp:serviceaccount/key:Key")
    provider = programs("key-mode").outputs["serviceAccounts"]["provider"]
    assert key["inputs"]["serviceAccountId"].endswith(f"/serviceAccounts/{provider}")


def test_custom_roles_are_narrow_stack_unique_and_only_with_custom_roles_on(each_scenario):
    roles = each_scenario.of_type(CUSTOM_ROLE)
    if each_scenario.scenario == "predefined-roles":
        assert roles == []
        return
    assert sorted(r["name"] for r in roles) == ["identity-autoscaler-role", "identity-launcher-role"]
    (suffix,) = each_scenario.of_type("random:index/randomString:RandomString")
    old_roles = role_permissions("roles/compute.instanceAdmin.v1") | role_permissions(
        "roles/compute.networkViewer"
    )
    for r in roles:
        inputs = r["inputs"]
        role = r["name"].removeprefix("identity-").removesuffix("-role")
        cluster = each_scenario.outputs["clusterConfig"].split("cluster_name: ", 1)[1].split()[0]
        # Stack-unique: a fresh random suffix after each destroy (GCP keeps deleted IDs).
        assert inputs["roleId"] == f"rayGcp_{cluster.replace('-', '_')}_{role}_r4nd0m"
        assert re.match(r"^[a-zA-Z0-9_.]{3,64}$", inputs["roleId"])
        assert inputs["stage"] == "GA"
        perms = set(inputs["permissions"])
        # Never more than the predefined roles it replaces, never IAM or a policy write.
        assert perms <= old_roles, perms - old_roles
        assert not {p for p in perms if p.startswith("iam.") or "IamPolicy" in p}
        assert 8 <= len(perms) <= 20
        assert each_scenario.parent_name(r) == "identity"
    assert suffix["inputs"]["length"] == 6
