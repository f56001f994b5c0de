"""Every permission each actor's recorded calls need is granted to its account, at the
right scope, in every scenario; and with custom roles nothing much more.

Needs come from the recorded calls (tests/infra/iam/recorder.py) through the IAM
snapshot's method map (infra/iam); grants from the Pulumi program's IAM
resources through the snapshot's predefined roles or the custom role's own
permission list (grants.py). A permission granted at the wrong scope (on the
project instead of the bucket, on another account) counts as missing.
"""

from __future__ import annotations

import pytest

from infra.iam import PROJECT, needed, needed_by
from tests.infra.conftest import GKE_SCENARIOS, SCENARIOS
from tests.infra.iam.grants import Grants

# With customRoles on, project-level permissions an account may hold beyond what its
# recorded calls need (logging and monitoring writers count).
MAX_PROJECT_EXTRA = 15
BASE_SCENARIO = {"gpu": "default"}  # extra cluster specs deployed with the default stack


def _grants(programs, scenario: str) -> Grants:
    return Grants(programs(BASE_SCENARIO.get(scenario, scenario)))


@pytest.mark.parametrize("actor", ["provider", "head", "worker"])
def test_every_needed_permission_is_granted_at_its_scope(recorded, programs, actor):
    missing = {}
    for scenario, calls in recorded["calls"][actor].items():
        grants = _grants(programs, scenario)
        lacking = needed_by(calls) - grants.of(grants.account(actor))
        if lacking:
            missing[scenario] = sorted(lacking)
    assert not missing, f"{actor} account lacks (permission, scope): {missing}"


def _project_report(programs, recorded, scenario: str, actor: str) -> tuple[set, set]:
    grants = _grants(programs, scenario)
    granted = {p for p, scope in grants.of(grants.account(actor)) if scope == PROJECT}
    needed = {p for p, scope in needed_by(recorded["calls"][actor][scenario]) if scope == PROJECT}
    return granted, needed


@pytest.mark.parametrize("actor", ["provider", "head"])
def test_custom_roles_hold_at_most_15_project_permissions_beyond_the_needs(
    recorded, programs, actor, capsys
):
    """The report CI prints: granted at project level, needed, and the difference."""
    for scenario in recorded["calls"][actor]:
        if scenario == "predefined-roles":
            continue
        granted, needed = _project_report(programs, recorded, scenario, actor)
        extra = sorted(granted - needed)
        with capsys.disabled():
            print(
                f"\n[{scenario}] {actor} account, project level: granted {len(granted)}, "
                f"needed {len(needed)}, extra {len(extra)}"
            )
            if scenario == "default":
                print(f"  needed: {', '.join(sorted(needed))}\n  extra:  {', '.join(extra)}")
        assert needed <= granted
        assert len(extra) <= MAX_PROJECT_EXTRA, (scenario, extra)


def test_predefined_roles_are_the_fallback_and_far_broader(recorded, programs, capsys):
    """customRoles=false: today's predefined roles; the report shows what that costs."""
    assert "predefined-roles" in SCENARIOS
    for actor in ("provider", "head"):
        granted, needed = _project_report(programs, recorded, "predefined-roles", actor)
        with capsys.disabled():
            print(
                f"\n[predefined-roles] {actor} account, project level: granted {len(granted)}, "
                f"needed {len(needed)}, extra {len(granted - needed)}"
            )
        assert needed <= granted
        assert len(granted - needed) > 300  # compute.instanceAdmin.v1 alone is ~530


def test_readme_states_the_measured_project_level_extras(recorded, programs):
    """infra/README.md's "today N for the provider, M for the head" is the default stack's."""
    import re

    from infra import offline as harness

    text = (harness.PROJECT_ROOT / "infra" / "README.md").read_text()
    claimed = re.search(r"today (\d+) for the provider, (\d+) for the head", " ".join(text.split()))
    assert claimed, "infra/README.md no longer states the extras"
    measured = []
    for actor in ("provider", "head"):
        granted, needed = _project_report(programs, recorded, "default", actor)
        measured.append(len(granted - needed))
    assert [int(claimed.group(1)), int(claimed.group(2))] == measured


def _logging_or_monitoring_grants(rec, grants: Grants) -> list[tuple[str, str, str]]:
    """(who, role, scope) of every logging.* / monitoring.* role the stack grants."""
    out = []
    for member, scopes in grants.roles.items():
        who = next((w for w, e in rec.outputs["serviceAccounts"].items()
                    if member == f"serviceAccount:{e}"), member)
        for scope, roles in scopes.items():
            out += [(who, role, scope) for role in roles
                    if role.startswith(("roles/logging.", "roles/monitoring."))]
    return sorted(out)


@pytest.mark.parametrize("scenario", [*sorted(SCENARIOS), *sorted(GKE_SCENARIOS)])
def test_every_logging_and_monitoring_grant_has_a_call_that_needs_it(
    recorded, programs, scenario, capsys
):
    """Each remaining logging/monitoring grant, with the call (recorded or, for Google's
    own agents, declared) whose permission it holds; a grant no call needs fails."""
    rec = programs(scenario)
    grants = Grants(rec)
    by_actor = recorded["calls"]
    rows = []
    for who, role, scope in _logging_or_monitoring_grants(rec, grants):
        calls = by_actor[who].get(scenario) or by_actor[who].get("gke", [])
        perms = grants.permissions(role)
        users = [c for c in calls if any(p in perms and s == scope for p, s in needed(c))]
        assert users, f"{scenario}: {who} holds {role} on {scope}, and no call needs it"
        for c in users:
            how = f"declared: {c.declared_by.split(':')[0]}" if c.declared_by else "recorded"
            rows.append(f"  {who:9} {role:32} {scope:8} <- {c.method} ({how})")
    with capsys.disabled():
        print(f"\n[{scenario}] logging/monitoring grants and the calls that need them:")
        print("\n".join(rows) or "  none")
    if scenario in GKE_SCENARIOS:
        assert {r.split()[1] for r in rows} == {"roles/logging.logWriter",
                                                "roles/monitoring.metricWriter"}
    else:  # the provider's boot log only; Ray nodes hold neither role
        assert {tuple(r.split()[:2]) for r in rows} == {("provider", "roles/logging.logWriter")}
