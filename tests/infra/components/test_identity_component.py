"""infra/components/identity.py: three accounts and exactly the grants documented there."""

from __future__ import annotations

import re

from infra.iam import role_permissions
from tests.infra.conftest import SCENARIOS

PROJECT_MEMBER = "gcp:projects/iAMMember:IAMMember"
SA_MEMBER = "gcp:serviceaccount/iAMMember:IAMMember"
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
SECRET_MEMBER = "gcp:secretmanager/secretIamMember:SecretIamMember"
CUSTOM_ROLE = "gcp:projects/iAMCustomRole:IAMCustomRole"
OPERATOR_TUNNEL = "gcp:iap/tunnelInstanceIAMMember:TunnelInstanceIAMMember"
OPERATOR_INSTANCE = "gcp:compute/instanceIAMMember:InstanceIAMMember"

# The whole IAM of the stack: (who, role, scope). Reviewed; change with care.
# Grants that do not depend on customRoles. No Ray node holds a logging or
# monitoring role: nothing on them writes there (their logs go to the bucket).
COMMON_GRANTS = {
    ("provider", "roles/logging.logWriter", "project"),
    ("provider", "roles/iam.serviceAccountUser", "account:head"),
    ("provider", "roles/iam.serviceAccountViewer", "account:worker"),
    # Reads the shipped logs only (an IAM condition: logs/ of the bucket).
    ("provider", "roles/storage.objectViewer", "bucket:logs/"),
    ("head", "roles/iam.serviceAccountUser", "account:worker"),
    ("head", "roles/storage.objectUser", "bucket"),
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
SECRET_NAMES = {"ssh-private-key", "ray-auth-token", "service-account-key"}

PRIMITIVE = {"roles/owner", "roles/editor", "roles/viewer"}
TOO_BROAD = PRIMITIVE | {
    "roles/compute.admin", "roles/iam.serviceAccountAdmin", "roles/iam.serviceAccountKeyAdmin",
    "roles/iam.securityAdmin", "roles/resourcemanager.projectIamAdmin", "roles/storage.admin",
    "roles/secretmanager.admin",
}


def _who(rec, member: str) -> str:
    emails = rec.outputs["serviceAccounts"]
    found = [who for who, email in emails.items() if member == f"serviceAccount:{email}"]
    if not found and member.startswith(("user:", "group:")):
        return member  # an operator (ray-gcp:operators)
    assert found, f"grant to a member that is none of our accounts: {member}"
    return found[0]


def _role(rec, role: str) -> str:
    """custom:<role> for the stack's custom roles, the role name otherwise."""
    for r in rec.of_type(CUSTOM_ROLE):
        if role == f"projects/{r['inputs']['project']}/roles/{r['inputs']['roleId']}":
            return "custom:" + r["name"].removeprefix("identity-").removesuffix("-role")
    return role


# Every resource that grants a role: its type (the part after the last ':') ends
# in one of these. Matched without case: pulumi-gcp spells both IAMMember and IamMember.
GRANT_TYPE = re.compile(r"(IAMMember|IAMBinding|IAMPolicy)$", re.IGNORECASE)


def grant_resources(rec) -> list[dict]:
    """Every registered resource whose type is an IAM member, binding or policy."""
    return [r for r in rec.resources if GRANT_TYPE.search(r["type"].rsplit(":", 1)[-1])]


def all_grants(rec) -> set[tuple[str, str, str]]:
    """Every role binding of the stack as (who, role, scope); fails on an IAM type it cannot read.

    `who` is one of our accounts, or an operator's principal (`user:`/`group:`,
    ray-gcp:operators; test_operators_component.py checks those in detail).
    """
    emails = rec.outputs["serviceAccounts"]
    account_names = {
        f"projects/ray-gcp-test-1234/serviceAccounts/{email}": who for who, email in emails.items()
    }
    secret_ids = {
        r["urn"]: r["inputs"]["secretId"] for r in rec.of_type("gcp:secretmanager/secret:Secret")
    }

    def project_scope(inputs):
        assert inputs["project"] == "ray-gcp-test-1234"
        return "project"

    def bucket_scope(inputs):
        assert inputs["bucket"] == rec.outputs["bucket"]
        if inputs.get("condition") is None:
            return "bucket"
        # The one condition we write: objects under logs/ and listings of that prefix.
        bucket = rec.outputs["bucket"]
        assert inputs["condition"]["expression"] == (
            f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/logs/") || '
            'api.getAttribute("storage.googleapis.com/objectListPrefix", "")'
            '.startsWith("logs/")'
        ), inputs["condition"]
        return "bucket:logs/"

    def secret_scope(inputs):
        secret = inputs["secretId"].rsplit("/", 1)[1]
        assert secret in secret_ids.values()
        return f"secret:{secret}"

    scope_of = {
        PROJECT_MEMBER: project_scope,
        SA_MEMBER: lambda inputs: "account:" + account_names[inputs["serviceAccountId"]],
        BUCKET_MEMBER: bucket_scope,
        SECRET_MEMBER: secret_scope,
        OPERATOR_TUNNEL: lambda inputs: f"instance:{inputs['instance']}",
        OPERATOR_INSTANCE: lambda inputs: f"instance:{inputs['instanceName']}",
    }
    resources = grant_resources(rec)
    unknown = sorted({r["type"] for r in resources} - set(scope_of))
    assert not unknown, (
        f"IAM resources of types this test does not read: {unknown}. Add each type to "
        "all_grants (and its grants to EXPECTED_GRANTS) after reviewing them.")
    grants = [
        (
            _who(rec, r["inputs"]["member"]),
            _role(rec, r["inputs"]["role"]),
            scope_of[r["type"]](r["inputs"]),
        )
        for r in resources
    ]
    assert len(set(grants)) == len(grants), f"a grant is declared twice: {sorted(grants)}"
    return set(grants)


def test_three_accounts(each_scenario):
    accounts = each_scenario.of_type("gcp:serviceaccount/account:Account")
    assert sorted(r["name"] for r in accounts) == [
        "identity-head", "identity-provider", "identity-worker"]
    for r in accounts:
        assert re.match(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", r["inputs"]["accountId"])
        assert each_scenario.parent_name(r) == "identity"


def test_the_complete_list_of_role_bindings(each_scenario):
    grants = all_grants(each_scenario)
    non_secret = {g for g in grants if not g[2].startswith("secret:")}
    ours = {g for g in non_secret if not g[0].startswith(("user:", "group:"))}
    expected = (EXPECTED_PREDEFINED_GRANTS if each_scenario.scenario == "predefined-roles"
                else EXPECTED_GRANTS)
    if SCENARIOS[each_scenario.scenario].get("ray-gcp:logShipping") is False:
        # Nothing to read: no log reader grant.
        expected = expected - {("provider", "roles/storage.objectViewer", "bucket:logs/")}
    assert ours == expected
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


def test_no_primitive_or_broad_roles_and_no_authoritative_iam(each_scenario):
    roles = {role for _, role, _ in all_grants(each_scenario)}
    assert not roles & TOO_BROAD
    for r in each_scenario.resources:
        # IAMPolicy/IAMBinding replace what others granted: never used here.
        assert not re.search(r"IAM(Policy|Binding)$|IamPolicy|IamBinding", r["type"]), r["type"]


def test_service_account_user_only_on_specific_accounts(each_scenario):
    for who, role, scope in all_grants(each_scenario):
        if role.startswith("roles/iam."):
            assert scope.startswith("account:"), (who, role, scope)
        if role.startswith("roles/storage."):
            assert scope in ("bucket", "bucket:logs/"), (who, role, scope)


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
