"""infra/components/identity.py: three accounts and exactly the grants documented there."""

from __future__ import annotations

import re

PROJECT_MEMBER = "gcp:projects/iAMMember:IAMMember"
SA_MEMBER = "gcp:serviceaccount/iAMMember:IAMMember"
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
SECRET_MEMBER = "gcp:secretmanager/secretIamMember:SecretIamMember"

# The whole IAM of the stack: (who, role, scope). Reviewed; change with care.
EXPECTED_GRANTS = {
    ("provider", "roles/compute.instanceAdmin.v1", "project"),
    ("provider", "roles/compute.networkViewer", "project"),
    ("provider", "roles/logging.logWriter", "project"),
    ("provider", "roles/iam.serviceAccountUser", "account:head"),
    ("provider", "roles/iam.serviceAccountViewer", "account:worker"),
    ("head", "roles/compute.instanceAdmin.v1", "project"),
    ("head", "roles/iam.serviceAccountUser", "account:worker"),
    ("head", "roles/logging.logWriter", "project"),
    ("head", "roles/monitoring.metricWriter", "project"),
    ("head", "roles/storage.objectUser", "bucket"),
    ("worker", "roles/logging.logWriter", "project"),
    ("worker", "roles/monitoring.metricWriter", "project"),
    ("worker", "roles/storage.objectUser", "bucket"),
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
    assert found, f"grant to a member that is none of our accounts: {member}"
    return found[0]


# Every resource that grants a role: its type (the part after the last ':') ends
# in one of these. Matched without case: pulumi-gcp spells both IAMMember and IamMember.
GRANT_TYPE = re.compile(r"(IAMMember|IAMBinding|IAMPolicy)$", re.IGNORECASE)


def grant_resources(rec) -> list[dict]:
    """Every registered resource whose type is an IAM member, binding or policy."""
    return [r for r in rec.resources if GRANT_TYPE.search(r["type"].rsplit(":", 1)[-1])]


def all_grants(rec) -> set[tuple[str, str, str]]:
    """Every role binding of the stack as (who, role, scope); fails on an IAM type it cannot read."""
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
        return "bucket"

    def secret_scope(inputs):
        secret = inputs["secretId"].rsplit("/", 1)[1]
        assert secret in secret_ids.values()
        return f"secret:{secret}"

    scope_of = {
        PROJECT_MEMBER: project_scope,
        SA_MEMBER: lambda inputs: "account:" + account_names[inputs["serviceAccountId"]],
        BUCKET_MEMBER: bucket_scope,
        SECRET_MEMBER: secret_scope,
    }
    resources = grant_resources(rec)
    unknown = sorted({r["type"] for r in resources} - set(scope_of))
    assert not unknown, (
        f"IAM resources of types this test does not read: {unknown}. Add each type to "
        "all_grants (and its grants to EXPECTED_GRANTS) after reviewing them.")
    grants = [
        (_who(rec, r["inputs"]["member"]), r["inputs"]["role"], scope_of[r["type"]](r["inputs"]))
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
    assert non_secret == EXPECTED_GRANTS
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
            assert scope == "bucket", (who, role, scope)


def test_no_service_account_key_unless_opted_in(programs):
    for scenario in ("default", "ssh-ranges", "spot", "us-central1"):
        assert not programs(scenario).of_type("gcp:serviceaccount/key:Key")
    (key,) = programs("key-mode").of_type("gcp:serviceaccount/key:Key")
    provider = programs("key-mode").outputs["serviceAccounts"]["provider"]
    assert key["inputs"]["serviceAccountId"].endswith(f"/serviceAccounts/{provider}")
