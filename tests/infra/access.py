"""Who the stack lets in: every grant and ACL of a recorded program run, read one way.

Collected by type name, never from a list of types, so that a new kind of
grant cannot slip past: every registered resource whose type (the part after
the last ':') ends in ``IAMMember``, ``IAMBinding`` or ``IAMPolicy`` is a
grant, and every one ending in ``AccessControl`` or ``ACL`` is an ACL, matched
without case (pulumi-gcp spells both ``IAMMember`` and ``IamMember``, and
``BucketACL`` next to ``BucketAccessControl``). A resource of such a type whose
principals or scope cannot be read fails the reading test, so an unreviewed
type fails instead of being skipped.

Used by the identity, storage and GKE tests, for the VM and the GKE platform.
"""

from __future__ import annotations

import json
import re
from typing import Any

from infra import offline as harness

GRANT_TYPE = re.compile(r"(IAMMember|IAMBinding|IAMPolicy)$", re.IGNORECASE)
ACL_TYPE = re.compile(r"(AccessControl|ACL)$", re.IGNORECASE)
# The two principals that mean "anyone" in IAM members and ACL entities.
PUBLIC_PRINCIPALS = frozenset({"allUsers", "allAuthenticatedUsers"})
# Cloud Storage's canned ACLs that include one of them.
PUBLIC_CANNED_ACLS = frozenset(
    {"canned:publicRead", "canned:publicReadWrite", "canned:authenticatedRead"})

PROJECT_MEMBER = "gcp:projects/iAMMember:IAMMember"
SA_MEMBER = "gcp:serviceaccount/iAMMember:IAMMember"
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
SECRET_MEMBER = "gcp:secretmanager/secretIamMember:SecretIamMember"
OPERATOR_TUNNEL = "gcp:iap/tunnelInstanceIAMMember:TunnelInstanceIAMMember"
OPERATOR_INSTANCE = "gcp:compute/instanceIAMMember:InstanceIAMMember"
CUSTOM_ROLE = "gcp:projects/iAMCustomRole:IAMCustomRole"
KSA = "kubernetes:core/v1:ServiceAccount"


def _kind(typ: str) -> str:
    return typ.rsplit(":", 1)[-1]


def grant_resources(rec) -> list[dict[str, Any]]:
    """Every registered resource whose type is an IAM member, binding or policy."""
    return [r for r in rec.resources if GRANT_TYPE.search(_kind(r["type"]))]


def acl_resources(rec) -> list[dict[str, Any]]:
    """Every registered resource whose type is an access control entry or list."""
    return [r for r in rec.resources if ACL_TYPE.search(_kind(r["type"]))]


def principals(resource: dict[str, Any]) -> list[str]:
    """Everyone a grant or ACL resource lets in, as written in its inputs.

    IAM: ``member``, ``members`` or the bindings of ``policyData``. ACLs:
    ``entity`` (``*AccessControl``), or the ``ROLE:entity`` pairs of
    ``roleEntities`` and the canned lists ``predefinedAcl``/``defaultAcl``
    (``*ACL``, a canned list as ``canned:<name>``). Fails on a resource it
    cannot read (a required input missing)."""
    typ = resource["type"]
    inputs = harness.unsecret(resource["inputs"])
    kind = _kind(typ).lower()
    if kind.endswith("iammember"):
        return [inputs["member"]]
    if kind.endswith("iambinding"):
        return list(inputs["members"])
    if kind.endswith("iampolicy"):
        policy = json.loads(inputs["policyData"])
        return [m for b in policy.get("bindings", []) for m in b.get("members", [])]
    if kind.endswith("accesscontrol"):
        return [inputs["entity"]]
    if kind.endswith("acl"):
        found = [entry.split(":", 1)[1] for entry in inputs.get("roleEntities") or []]
        found += [f"canned:{inputs[k]}" for k in ("predefinedAcl", "defaultAcl") if inputs.get(k)]
        return found
    raise AssertionError(f"{typ} is neither a grant nor an ACL type")


def public_grants(rec) -> list[tuple[str, str, str]]:
    """(type, name, principal) of every grant or ACL, on anything, that lets anyone in."""
    return [
        (r["type"], r["name"], who)
        for r in grant_resources(rec) + acl_resources(rec)
        for who in principals(r)
        if who in PUBLIC_PRINCIPALS or who in PUBLIC_CANNED_ACLS
    ]


def who(rec, member: str) -> str:
    """One of our accounts by its short name, ``ksa:<namespace>/<name>`` for a
    Kubernetes service account's Workload Identity principal, or an operator's
    ``user:``/``group:`` principal as given."""
    emails = rec.outputs["serviceAccounts"]
    found = [name for name, email in emails.items() if member == f"serviceAccount:{email}"]
    if found:
        return found[0]
    wi = re.fullmatch(
        rf"principal://iam\.googleapis\.com/projects/{harness.TEST_PROJECT_NUMBER}/locations/"
        rf"global/workloadIdentityPools/{re.escape(harness.TEST_PROJECT)}\.svc\.id\.goog/"
        r"subject/ns/([^/]+)/sa/([^/]+)",
        member,
    )
    if wi:
        return f"ksa:{wi[1]}/{wi[2]}"
    if member.startswith(("user:", "group:")):
        return member  # an operator (ray-gcp:operators)
    raise AssertionError(f"grant to a member that is none of our accounts: {member}")


def _role(rec, role: str) -> str:
    """custom:<role> for the stack's custom roles, the role name otherwise."""
    for r in rec.of_type(CUSTOM_ROLE):
        if role == f"projects/{r['inputs']['project']}/roles/{r['inputs']['roleId']}":
            return "custom:" + r["name"].removeprefix("identity-").removesuffix("-role")
    return role


def all_grants(rec) -> set[tuple[str, str, str]]:
    """Every role binding of the stack as (who, role, scope); fails on an IAM type it cannot read.

    `who` is one of our accounts (``who``), a Kubernetes service account, or an
    operator's principal (`user:`/`group:`, ray-gcp:operators;
    test_operators_component.py checks those in detail). Only ``*IAMMember``
    types are read: a binding or policy (authoritative) or a member at a scope
    not listed here (an organization, a folder, ...) fails until reviewed."""
    emails = rec.outputs["serviceAccounts"]
    account_names = {
        f"projects/{harness.TEST_PROJECT}/serviceAccounts/{email}": name
        for name, email in emails.items()
    }
    secret_ids = {r["urn"]: r["inputs"]["secretId"] for r in rec.of_type("gcp:secretmanager/secret:Secret")}

    def project_scope(inputs):
        assert inputs["project"] == harness.TEST_PROJECT
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
        OPERATOR_TUNNEL: lambda inputs: f"instance:{inputs['instance']}",
        OPERATOR_INSTANCE: lambda inputs: f"instance:{inputs['instanceName']}",
    }
    resources = grant_resources(rec)
    unknown = sorted({r["type"] for r in resources} - set(scope_of))
    assert not unknown, (
        f"[{rec.scenario}] IAM resources of types this test does not read: {unknown}. Add each "
        "type to tests/infra/access.py:all_grants (and its grants to the expected lists) after "
        "reviewing them.")
    grants = [
        (
            who(rec, r["inputs"]["member"]),
            _role(rec, r["inputs"]["role"]),
            scope_of[r["type"]](r["inputs"]),
        )
        for r in resources
    ]
    assert len(set(grants)) == len(grants), f"a grant is declared twice: {sorted(grants)}"
    return set(grants)


def ksas(rec) -> set[str]:
    """``ksa:<namespace>/<name>`` of each Kubernetes service account (GKE: the Ray Pods')."""
    return {
        f"ksa:{r['inputs']['metadata']['namespace']}/{r['inputs']['metadata']['name']}"
        for r in rec.of_type(KSA)
    }
