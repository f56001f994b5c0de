"""What the Pulumi program grants each of our accounts, read from an offline run.

Every IAM member resource of the recording becomes (member, permission, scope)
through the IAM snapshot's predefined roles (infra/iam/data/roles) or the
custom role resource's own `permissions` input. Scopes use the recorder's
names: project, account:<who>, secret:<logical>, bucket, instance:<name>.
"""

from __future__ import annotations

from collections import defaultdict

from infra import names
from infra import offline as harness
from infra.iam import LOGS, PROJECT, role_permissions
from tests.infra.iam.recorder import SECRET_LOGICAL

PROJECT_MEMBER = "gcp:projects/iAMMember:IAMMember"
ACCOUNT_MEMBER = "gcp:serviceaccount/iAMMember:IAMMember"
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
SECRET_MEMBER = "gcp:secretmanager/secretIamMember:SecretIamMember"
INSTANCE_MEMBER = "gcp:compute/instanceIAMMember:InstanceIAMMember"
TUNNEL_MEMBER = "gcp:iap/tunnelInstanceIAMMember:TunnelInstanceIAMMember"
CUSTOM_ROLE = "gcp:projects/iAMCustomRole:IAMCustomRole"
MEMBER_TYPES = (
    PROJECT_MEMBER, ACCOUNT_MEMBER, BUCKET_MEMBER, SECRET_MEMBER, INSTANCE_MEMBER, TUNNEL_MEMBER
)


class Grants:
    """member -> scope -> roles, and role -> permissions, of one recorded program run."""

    def __init__(self, rec) -> None:
        outputs = rec.outputs
        self.project = harness.TEST_PROJECT
        self.cluster = (
            yaml_cluster_name(outputs["clusterConfig"]) if "clusterConfig" in outputs else None
        )
        self.emails = outputs["serviceAccounts"]
        self.bucket = outputs["bucket"]
        self.custom: dict[str, list[str]] = {}
        for r in rec.of_type(CUSTOM_ROLE):
            inputs = harness.unsecret(r["inputs"])
            self.custom[f"projects/{inputs['project']}/roles/{inputs['roleId']}"] = inputs[
                "permissions"
            ]
        self.roles: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for typ in MEMBER_TYPES:
            for r in rec.of_type(typ):
                inputs = harness.unsecret(r["inputs"])
                self.roles[inputs["member"]][self._scope(typ, inputs)].add(inputs["role"])

    def _scope(self, typ: str, inputs: dict) -> str:
        if typ == PROJECT_MEMBER:
            assert inputs["project"] == self.project
            return PROJECT
        if typ == ACCOUNT_MEMBER:
            email = inputs["serviceAccountId"].rsplit("/", 1)[1]
            return next(f"account:{w}" for w, e in self.emails.items() if e == email)
        if typ == BUCKET_MEMBER:
            assert inputs["bucket"] == self.bucket
            # A condition narrows it to the logs (identity.py logs_condition, checked there).
            return LOGS if inputs.get("condition") else "bucket"
        if typ == SECRET_MEMBER:
            secret_id = inputs["secretId"].rsplit("/", 1)[1]
            return next(
                f"secret:{logical}"
                for logical in SECRET_LOGICAL
                if names.resource_name(self.cluster, logical) == secret_id
            )
        return f"instance:{inputs.get('instance') or inputs.get('instanceName')}"

    def permissions(self, role: str) -> frozenset[str]:
        if role in self.custom:
            return frozenset(self.custom[role])
        return role_permissions(role)

    def of(self, member: str) -> set[tuple[str, str]]:
        """(permission, scope) pairs the member holds (a grant on the whole bucket
        holds on its logs/ part too)."""
        held = {
            (perm, scope)
            for scope, roles in self.roles.get(member, {}).items()
            for role in roles
            for perm in self.permissions(role)
        }
        return held | {(perm, LOGS) for perm, scope in held if scope == "bucket"}

    def account(self, who: str) -> str:
        return f"serviceAccount:{self.emails[who]}"


def yaml_cluster_name(text: str) -> str:
    import yaml

    return yaml.safe_load(text)["cluster_name"]
